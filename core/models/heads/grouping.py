"""DGML attentive grouping (Xu et al., arXiv 2011.08877): k learnable queries pool k group embeddings.

Faithful to the official `LearnQ_fen` (methods.md §5.1): bias-free 1×1 key (C -> C/reduction) and
value (C -> embed_dim // k) projections, one learnable query per group, softmax over positions with
no √d scaling, per-group L2 norm, groups concatenated (k·(embed_dim // k) dims: 512 -> 510 as in
the paper's code). Queries are initialised like the k bias-free `Conv2d(c_k, 1, 1)` layers they
replace (kaiming-uniform, a = √5). The pooling is a softmax-weighted sum over positions, so the
head is invariant to any permutation of the spatial positions.

Loss (§5.3): the DML criterion on the concatenated embedding, or with `per_group_margin: true`
the faithful per-group margin loss (α 0.2, ν 0, β initialised 1.2 and learnable per (group, class),
pytorch-metric-learning `MarginLoss(learn_beta=True)`, one per group, averaged over groups; the
trainer's miner, e.g. distance-weighted, mines each group). Plus the diversity term over pairs of
groups of the same image, 1/(k-1)·Σ_{g<h} mean_b softplus(β1·C·(cos(z_g, z_h) − β2)) with β1 2,
C 25, β2 0.5, i.e. softplus(50·(cos − 0.5)), weighted by `diversity_weight` (λ_div).

Choices (⚠️AMB in methods.md §5.6, and what this code base needs):
- embedding dim: k·(embed_dim // k), faithful (63 for embed_dim 64 and k 3);
- the returned embedding is the concatenation of the per-group unit vectors divided by √k, so it
  has unit norm (the `Embedder` contract) and ranks exactly like the paper's √k-norm vector; the
  per-group slices (`groups`) make the cosine split into per-group terms that sum to it;
- λ_div: the paper's CUB value 0.02 is the default, and on shapes it is far from too small to matter.
  At initialisation every query attends almost uniformly over the shared values, so the k groups
  start nearly identical (cos ≈ 1, diversity term ≈ 37, i.e. 0.75 after weighting, as large as the
  DML loss); the term falls to ~0 once the groups separate. Measured on shapes (benchmarks/results/
  grouping_diversity_*.md and that day's 3-epoch heads_accuracy run; 3 epochs, 20 images per class,
  3 seeds, on an early protocol that also capped the test classes at 20 images), mean cosine
  between the groups of a test image / R@1: λ 0 -> 0.83 / 0.486 ± 0.032, λ 0.005 -> 0.18 /
  0.456 ± 0.047, λ 0.02 -> 0.04 / 0.440 ± 0.068. So 0.02 makes the groups diverse (without it they
  stay near copies of one another); R@1 drifts down slightly as λ grows, within one standard
  deviation at this short budget, so no λ was found that improves R@1 and the paper's value stays;
- per-parameter-group learning rates / weight decays of the paper (query wd 0.001 vs 0.003) are
  not reproduced: the trainer has one head group; β shares the head learning rate.

Maps: `group_attention` B×k×h×w, each map a distribution over positions (sums to 1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from torch import nn

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
                 reduction: int = 8, diversity_weight: float = 0.02, per_group_margin: bool = False,
                 margin: float = 0.2, margin_beta: float = 1.2, margin_nu: float = 0.0,
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
        if per_group_margin:
            if not num_classes:
                raise ValueError("grouping: per_group_margin needs num_classes (the number of train classes)")
            # head submodules, so their β are in the optimiser and in the saved weights
            self.margin_losses = nn.ModuleList(
                pml_losses.MarginLoss(margin=margin, nu=margin_nu, beta=margin_beta, learn_beta=True,
                                      num_classes=num_classes) for _ in range(num_groups))
            self.class_index = ClassIndex(num_classes)

    @property
    def groups(self) -> list[slice]:
        return [slice(g * self.group_dim, (g + 1) * self.group_dim) for g in range(self.k)]

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

    def on_train_start(self, trainer) -> None:
        if self.per_group_margin and hasattr(trainer, "splits") and int((self.class_index.labels >= 0).sum()) == 0:
            self.class_index.fit(trainer.splits.train.labels)

    def loss(self, out: HeadOutput, labels: torch.Tensor, criterion) -> dict[str, torch.Tensor]:
        z = out.extras["group_embeddings"]                             # B×k×d, unit groups
        terms: dict[str, torch.Tensor] = {}
        if self.per_group_margin:
            rows = self.class_index(labels)
            miner = getattr(criterion, "miner", None)
            per_group = []
            for g, margin_loss in enumerate(self.margin_losses):
                emb = z[:, g].float()
                mined = miner(emb, rows) if miner is not None else None
                per_group.append(margin_loss(emb, rows, mined))
            terms["dml"] = torch.stack(per_group).mean()
        else:
            terms["dml"] = criterion(out.embedding, labels)
        if self.diversity_weight:
            terms["diversity"] = self.diversity_weight * diversity_loss(z, **self.diversity_args)
        return terms
