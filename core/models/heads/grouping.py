"""DGML attentive grouping (Xu et al., arXiv 2011.08877): k learnable queries pool k group embeddings.

Faithful to the official `LearnQ_fen` (methods.md §5.1): bias-free 1×1 key (C -> C/reduction) and
value (C -> embed_dim // k) projections, one learnable query per group, softmax over positions with
no √d scaling, per-group L2 norm, groups concatenated (k·(embed_dim // k) dims: 512 -> 510 as in
the paper's code). Queries are initialised like the k bias-free `Conv2d(c_k, 1, 1)` layers they
replace (kaiming-uniform, a = √5). The pooling is a softmax-weighted sum over positions, so the
head is invariant to any permutation of the spatial positions.

Loss (§5.3), as DGML trains it (official `criteria/margin.py`, `batchminer/distance.py`; default
`per_group_margin: true`): per group g, one triplet per anchor from the distance-weighted sampler on
that group's unit embedding (random positive; negative ∝ inverse density of sphere distances,
clipped below at 0.5), margin loss α 0.2 with the anchor's class β of that group (β: k × n_classes,
initialised 1.2, learnt), normalised as the official code (`core.losses.margin_triplet_loss`: by the
number of triplets with an active term, since the official count adds two boolean tensors), averaged
over groups. Measured against the official code on the same input (benchmarks/fidelity/grouping.py,
9 group-batches, both its sampler's triplets and all triplets): sampler probabilities, loss values
and gradients (embeddings, β) identical in float64 (benchmarks/fidelity/methods.md).
`per_group_margin: false`: the trainer's DML criterion on the concatenated embedding instead (the
option MetricLens used before; `train.loss`/`train.miner` apply only then).
Official parameter groups (`outline.set_lr`, `criteria.select`; `param_groups`): β at
`beta_lr_scale` × the head lr (CUB 5e-5 / 1e-5 = 5) without weight decay, key/value weight decay
0.003, query 0.001. β's lr matters (β moves the hinge); the decays are kept for fidelity but are
negligible under the trainer's default AdamW (decoupled: a factor 1 − lr·wd per step).
Plus the diversity term over pairs of
groups of the same image, 1/(k-1)·Σ_{g<h} mean_b softplus(β1·C·(cos(z_g, z_h) − β2)) with β1 2,
C 25, β2 0.5, i.e. softplus(50·(cos − 0.5)), weighted by `diversity_weight` (λ_div).

Not reproduced: the per-group sampler draws from torch's RNG (the official from numpy's), so the
triplets differ between runs of the two codes though their distribution is the same; under torchrun
the per-group loss sees the local batch only.

Choices (⚠️AMB in methods.md §5.6, and what this code base needs):
- embedding dim: k·(embed_dim // k), faithful (63 for embed_dim 64 and k 3);
- the returned embedding is the concatenation of the per-group unit vectors divided by √k, so it
  has unit norm (the `Embedder` contract) and ranks exactly like the paper's √k-norm vector; the
  per-group slices (`groups`) make the cosine split into per-group terms that sum to it;
- λ_div: the paper's CUB value 0.02 is the default, and on shapes it is far from too small to matter.
  At initialisation every query attends almost uniformly over the shared values, so the k groups
  start nearly identical and the weighted term is as large as the DML loss; it falls to ~0 once the
  groups separate. Without it the groups stay near copies of one another; R@1 moved within the seed
  noise over the values tried, so no λ was found that improves R@1 and the paper's value stays
  (figures: benchmarks/notes/method_choices.md);

Maps: `group_attention` B×k×h×w, each map a distribution over positions (sums to 1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.losses import distance_weighted_triplets, margin_triplet_loss
from core.models.class_index import ClassIndex
from core.models.heads.base import Head, HeadOutput
from core.registry import register_head, register_map

register_map("group_attention", "DGML attentive grouping: where each learnable group query looks "
                                "(one map per group, a distribution over positions; ×h·w so 1 = uniform)")


def diversity_loss(groups: torch.Tensor, scale: float = 25.0, beta1: float = 2.0, beta2: float = 0.5) -> torch.Tensor:
    """Binomial-deviance diversity over pairs of groups of the same image. groups: B×k×d."""
    k = groups.size(1)
    if k < 2:
        return groups.new_zeros(())
    z = F.normalize(groups.float(), dim=-1)
    cos = torch.einsum("bgd,bhd->bgh", z, z)                        # B×k×k
    g, h = torch.triu_indices(k, k, offset=1, device=z.device)
    return F.softplus(beta1 * scale * (cos[:, g, h] - beta2)).mean(0).sum() / (k - 1)


@register_head("grouping")
class GroupingHead(Head):
    def __init__(self, in_channels: int, embed_dim: int, num_classes: int | None = None, num_groups: int = 3,
                 reduction: int = 8, diversity_weight: float = 0.02, per_group_margin: bool = True,
                 margin: float = 0.2, margin_beta: float = 1.2, miner_cutoff: float = 0.5,
                 beta_lr_scale: float = 5.0, key_value_decay: float | None = 0.003, query_decay: float | None = 0.001,
                 diversity_scale: float = 25.0, diversity_beta1: float = 2.0, diversity_beta2: float = 0.5):
        super().__init__(in_channels, embed_dim, num_classes)
        if embed_dim < num_groups:
            raise ValueError(f"grouping: embed_dim {embed_dim} is smaller than num_groups {num_groups}")
        self.k, self.group_dim = num_groups, embed_dim // num_groups
        self.out_dim = self.k * self.group_dim
        key_dim = max(1, in_channels // reduction)
        self.key = nn.Conv2d(in_channels, key_dim, 1, bias=False)
        self.value = nn.Conv2d(in_channels, self.group_dim, 1, bias=False)
        self.queries = nn.Parameter(torch.empty(num_groups, key_dim))   # == k bias-free Conv2d(c_k, 1, 1)
        nn.init.kaiming_uniform_(self.queries, a=math.sqrt(5))
        self.diversity_weight = diversity_weight
        self.diversity_args = dict(scale=diversity_scale, beta1=diversity_beta1, beta2=diversity_beta2)
        self.per_group_margin = per_group_margin
        self.margin, self.miner_cutoff = float(margin), float(miner_cutoff)
        self.beta_lr_scale, self.key_value_decay, self.query_decay = beta_lr_scale, key_value_decay, query_decay
        self.margin_beta = None          # built without train classes: embeds, cannot train per group
        if per_group_margin and num_classes:
            # official `Margin`: β of shape k × n_classes, initialised 1.2, learnt (its own lr)
            self.margin_beta = nn.Parameter(torch.full((num_groups, num_classes), float(margin_beta)))
            self.class_index = ClassIndex(num_classes)

    @property
    def groups(self) -> list[slice]:
        return [slice(g * self.group_dim, (g + 1) * self.group_dim) for g in range(self.k)]

    def param_groups(self) -> list[dict]:
        """The official optimiser groups (`outline.set_lr`, `criteria.select`): key/value and query weight
        decays, β at `beta_lr_scale` × the head lr (CUB: 5e-5 vs 1e-5) without weight decay."""
        groups = [{"params": [self.key.weight, self.value.weight], "weight_decay": self.key_value_decay},
                  {"params": [self.queries], "weight_decay": self.query_decay}]
        if self.margin_beta is not None:
            groups.append({"params": [self.margin_beta], "lr_scale": self.beta_lr_scale, "weight_decay": 0.0})
        return groups

    def input_projection(self):
        return self.value                # shared by the groups: at near-uniform attention each group is value(GAP)

    def pool(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-group unit embeddings B×k×d, attention B×k×N)."""
        keys = self.key(features).flatten(2)                           # B×c_k×N
        values = self.value(features).flatten(2)                       # B×d×N
        attn = torch.einsum("kc,bcn->bkn", self.queries.to(keys.dtype), keys).softmax(-1)  # B×k×N
        z = torch.einsum("bkn,bdn->bkd", attn, values)                 # B×k×d
        return F.normalize(z, dim=-1), attn

    def forward(self, features: torch.Tensor) -> HeadOutput:          # B×C×h×w
        b, _, h, w = features.shape
        z, attn = self.pool(features)
        embedding = z.flatten(1) / math.sqrt(self.k)                   # unit norm, ranks like cat(z)
        return HeadOutput(embedding, {"group_attention": attn.view(b, self.k, h, w)}, {"group_embeddings": z})

    def on_train_start(self, ctx) -> None:
        if self.margin_beta is not None and int((self.class_index.labels >= 0).sum()) == 0:
            self.class_index.fit(ctx.train_labels)

    def group_margin_loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """DGML's `Margin.forward`: per group, distance-weighted triplets mined on that group, margin loss
        with the anchors' class β of that group; the mean over groups. z: B×k×d unit groups."""
        if self.margin_beta is None:
            raise ValueError("grouping: the per-group margin loss needs the head built with num_classes (the "
                             "number of train classes, one β per class); the trainer passes it")
        rows = self.class_index(labels)
        per_group = []
        for g in range(self.k):
            emb = z[:, g].float()
            triplets = distance_weighted_triplets(emb, rows, self.miner_cutoff)
            per_group.append(margin_triplet_loss(emb, triplets, self.margin_beta[g, rows[triplets[0]]], self.margin))
        return torch.stack(per_group).mean()

    def loss(self, out: HeadOutput, labels: torch.Tensor, criterion) -> dict[str, torch.Tensor]:
        z = out.extras["group_embeddings"]                             # B×k×d, unit groups
        terms: dict[str, torch.Tensor] = {}
        if self.per_group_margin:
            terms["dml"] = self.group_margin_loss(z, labels)
        else:
            terms["dml"] = criterion(out.embedding, labels)
        if self.diversity_weight:
            terms["diversity"] = self.diversity_weight * diversity_loss(z, **self.diversity_args)
        return terms
