"""DSL: attention-based dynamic subspace learners (Adiga Vasudeva, Dolz, Lombaert; MIDL/JBHI 2022).

Forward (methods.md §2.1, official `lib/model.py`):
    A  = σ(conv3×3(ReLU(conv3×3(ReLU(conv3×3(F))))))    B×1×h×w, channels C → C/8 → C/32 → 1
    g  = GAP(F ⊙ A)                                      B×C      (`pooled`; its L2 norm drives k-means)
    e  = Linear(Dropout₀.₀₁(g))                          B×D      (Xavier-normal rows)
    e[:, S_k] ← L2norm(e[:, S_k]) for each learner k;  embedding = e / √K

Dividing by √K (the paper returns e with ‖e‖² = K) gives the unit-norm embedding the rest of
MetricLens expects; rankings are unchanged and each learner contributes cos_k / K to the cosine.

Training (§2.2, official `train.py`): divide and conquer plus dynamic learner addition.
  * every `recluster_every` epochs (and right after a learner was added) k-means (faiss, niter 100,
    nredo 5) on L2norm(g) of the whole train set (test-time transform), K = #learners; cluster ids
    kept stable by a minimum-cost assignment to the previous clustering; a class with one sample
    inside a cluster is dropped from it;
  * one class-balanced batch stream per cluster, interleaved round-robin (shorter streams cycle, as
    the official `merge`); a batch of cluster c trains only learner S_c (`loss` on L2norm(e[:, S_c]));
  * the loss (`loss: dsl`, default) is DSL's own (`lib/loss/margin_loss.py`, `sampler.py`;
    `core.losses.dsl_margin_loss`): every anchor-positive pair of the batch, each with one of the
    anchor's num_neg nearest negatives at distance ≥ 0.5 (num_neg = ⌊mean positives per anchor⌋),
    margin loss α 0.2 with a fixed β 1.2 (the official optimiser never receives β), divided by the
    number of triplets with an active term (the official count adds two boolean tensors). Measured
    against the official `MarginLoss` on the same input (benchmarks/fidelity/dsl.py; real shapes
    batches, balanced and unbalanced, each learner's slice and the whole vector): the same loss to
    float32 rounding and the same gradient direction, where the all-triplet loss used before pointed
    elsewhere (benchmarks/fidelity/methods.md). `loss: criterion` trains with `train.loss` instead.
    Forward, Taylor ranking and growth rule had matched before; the split differs on purpose (below);
  * Taylor importance a·∂L/∂a of every output neuron, summed per epoch through a tensor hook
    (detached running sums, not the per-batch tensors the original keeps);
  * after an epoch whose validation metric (`val_<growth_metric>`, from the *train-class*
    validation part, never the test classes) has not improved for `patience` epochs, with
    `explore` set by the last improvement: the last learner S_K splits if |S_K| > `min_split_size`
    and ≥ `min_candidates` of its neurons have normalised importance > `threshold`. The important
    neurons move (weights, biases and their Adam moments unchanged) to the front of S_K and stay
    learner K; the remaining slots are re-initialised and become learner K+1, and take nominal Adam
    steps from then on (their moments zeroed and their own step count, `dsl_adam.FreshRows`). Learners
    therefore stay contiguous ranges, so `groups` is a list of slices. ⚠️ Two deviations from the
    official split, both on purpose: (1) it moves exactly the important neurons (all are read before any
    slot is written), where the official `split_neurons` copies row by row in the order of importance,
    so a row it has already overwritten can be copied again: some neurons are duplicated and others
    lost; (2) the Adam moments move with their neurons, where the official code keeps its optimiser
    and so leaves the moments by slot: a moved neuron continues with the moments of the slot it lands
    in, and the re-initialised rows with stale ones (and their bias corrections with the running step
    count; `dsl_adam`);
  * from `finetune_epoch` on: the trainer's own sampler and the loss on the whole L2-normalised e.

A split decided at the end of epoch e is applied at the start of epoch e+1, so the weights the
trainer saves at epoch e are the ones it evaluated. Every split is written to
RUN_DIR/dsl_events.json (atomically; also kept in `extra_state`) for the dashboard to replay.
The head is this file; the growth policy (Taylor importance, the rule, the split) is `dsl_growth.py`,
the clustering and per-cluster batch schedule `dsl_clusters.py`, per-row Adam steps `dsl_adam.py`.

`per_learner_attention: true` (NOT in the paper or the official code): one attention map per
learner, from a shared trunk and a final conv with `max_learners` output channels, so no parameter
ever changes shape; a new learner starts from its parent's map.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.losses import dsl_margin_loss
from core.models.heads.base import Head, HeadOutput
from core.models.heads.dsl_adam import FreshRows
from core.models.heads.dsl_clusters import ClusterSchedule
from core.models.heads.dsl_growth import LearnerGrowth, taylor_candidates  # noqa: F401  (taylor_candidates: public here too)
from core.registry import register_head, register_map
from core.run_dir import DSL_CLUSTERS, DSL_EVENTS

if TYPE_CHECKING:
    from core.train_context import TrainContext

EVENTS_FILE, CLUSTERS_FILE = DSL_EVENTS, DSL_CLUSTERS   # learners/splits/epoch log for the dashboard; last clustering for resume

register_map("dsl_attention", "DSL spatial attention (sigmoid, in (0,1)) that weights the features before average "
                              "pooling; shared by all learners (with per-learner attention: their mean)")
register_map("dsl_learner_attention", "DSL per-learner spatial attention, one map per subspace learner "
                                      "(extension, not in the paper)")


class SpatialAttention(nn.Module):
    """Three 3×3 convs C → C/8 → C/32 → `maps` with ReLU between and a sigmoid (official `AttentionLayer`)."""

    def __init__(self, channels: int, maps: int = 1):
        super().__init__()
        mid, low = max(channels // 8, 1), max(channels // 32, 1)
        self.layers = nn.Sequential(nn.Conv2d(channels, mid, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(mid, low, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(low, maps, 3, padding=1))

    @property
    def last(self) -> nn.Conv2d:
        return self.layers[-1]

    def forward(self, features):                        # B×C×h×w -> B×maps×h×w in (0, 1)
        return torch.sigmoid(self.layers(features))


@register_head("dsl")
class DSLHead(LearnerGrowth, ClusterSchedule, Head):
    """The DSL head: attention, pooling, the per-learner embedding and loss; growth (`LearnerGrowth`,
    dsl_growth.py) and the per-cluster batch schedule (`ClusterSchedule`, dsl_clusters.py) are mixins."""

    # each learner normalises its own slice of the projection; uncentred, the leading direction is the mean
    # every image shares, so the start and first epochs fell far below the centred start
    uncentred_start = False

    def __init__(self, in_channels: int, embed_dim: int, num_classes=None, *,
                 learners: int = 1,               # initial learners (equal contiguous splits, as `init_splitted`)
                 dynamic: bool = True,            # add learners by splitting (False: fixed-K divide and conquer)
                 recluster_every: int = 2,        # `mod_epoch`
                 recluster_on_growth: bool = True,  # re-cluster right after a split (official: next due epoch)
                 patience: int = 10,              # epochs without improvement of the growth metric
                 threshold: float = 0.5,          # normalised Taylor importance of a kept neuron
                 min_split_size: int = 10,        # split only if |S_K| > this
                 min_candidates: int = 5,         # ... and at least this many neurons are important
                 max_learners: int | None = None,  # cap on K (required with per_learner_attention; default 8)
                 finetune_epoch: int | None = None,  # None: 5/6 of train.epochs (official 250 of 300)
                 growth_metric: str = "nmi",      # validation metric `val_<name>` that drives growth
                 dropout: float = 0.01,
                 per_learner_attention: bool = False,  # extension, not in the paper
                 loss: str = "dsl",               # dsl: DSL's sampler + margin loss; criterion: the trainer's
                 margin: float = 0.2, margin_beta: float = 1.2, neg_cutoff: float = 0.5,
                 kmeans_niter: int = 100, kmeans_nredo: int = 5):
        super().__init__(in_channels, embed_dim, num_classes)
        if embed_dim <= 0:
            raise ValueError("dsl needs model.embed_dim > 0 (its output neurons are split into learners)")
        if not 1 <= learners <= embed_dim:
            raise ValueError(f"dsl: learners must be in 1..embed_dim ({embed_dim}), got {learners}")
        self.out_dim = embed_dim
        self.dynamic, self.recluster_every, self.recluster_on_growth = dynamic, max(1, int(recluster_every)), recluster_on_growth
        self.patience, self.threshold = int(patience), float(threshold)
        self.min_split_size, self.min_candidates = int(min_split_size), int(min_candidates)
        self.per_learner_attention = per_learner_attention
        if per_learner_attention and max_learners is None:
            max_learners = 8
        self.max_learners = max_learners
        if max_learners is not None and learners > max_learners:
            raise ValueError(f"dsl: learners ({learners}) exceeds max_learners ({max_learners})")
        self.finetune_epoch_cfg, self.finetune_epoch = finetune_epoch, finetune_epoch
        self.growth_metric = growth_metric
        if loss not in ("dsl", "criterion"):
            raise ValueError(f"dsl: loss must be 'dsl' (DSL's sampler and margin loss) or 'criterion' (the "
                             f"trainer's train.loss), got {loss!r}")
        self.loss_name, self.margin, self.margin_beta, self.neg_cutoff = loss, margin, margin_beta, neg_cutoff
        self.fresh = FreshRows()               # nominal Adam steps for re-initialised rows
        self.kmeans_niter, self.kmeans_nredo = kmeans_niter, kmeans_nredo

        self.attention = SpatialAttention(in_channels, max_learners if per_learner_attention else 1)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_channels, embed_dim)
        size = math.ceil(embed_dim / learners)
        self.learners: list[tuple[int, int]] = [(c * size, min((c + 1) * size, embed_dim))
                                                for c in range(learners) if c * size < embed_dim]
        with torch.no_grad():  # Xavier-normal per initial learner, fresh bias (official `init_splitted`)
            for start, stop in self.learners:
                self._reinit_rows(start, stop, None)

        # growth state (JSON, see extra_state)
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.explore = True
        self.pending: dict | None = None       # split decided after an epoch, applied before the next
        self.events: list[dict] = []
        self.epoch_log: list[dict] = []
        # per-epoch training state (not saved with the weights)
        self.assign: np.ndarray | None = None   # cluster id of each train item (−1: left out)
        self.assign_epoch: int | None = None
        self._assign_k = 0
        self._tag = None
        self._epoch: int | None = None
        self._warned_no_val = False
        self.register_buffer("taylor_sum", torch.zeros(embed_dim, dtype=torch.float64), persistent=False)
        self.taylor_count = 0

    # ---- forward ----------------------------------------------------------------------------------
    @property
    def groups(self) -> list[slice]:
        return [slice(a, b) for a, b in self.learners]

    def attention_maps(self, features) -> torch.Tensor:
        """B×K×h×w (per-learner) or B×1×h×w (shared) attention in (0, 1)."""
        maps = self.attention(features)
        return maps[:, : len(self.learners)] if self.per_learner_attention else maps

    def input_projection(self):
        return self.proj

    def projection_input(self, features):
        g = self.pooled(features)                          # its attention scales the features: centre on that
        return g.mean(1) if g.dim() == 3 else g

    def pooled(self, features, maps=None) -> torch.Tensor:
        """GAP of the attended features: B×C (shared) or B×K×C (per learner)."""
        maps = self.attention_maps(features) if maps is None else maps
        g = torch.einsum("bchw,bkhw->bkc", features, maps) / (features.shape[2] * features.shape[3])
        return g if self.per_learner_attention else g[:, 0]

    def penultimate(self, features) -> torch.Tensor:
        """L2norm of the pooled features (what k-means clusters); per-learner: of their mean."""
        g = self.pooled(features)
        return F.normalize(g.mean(1) if g.dim() == 3 else g, dim=-1)

    def _subspace_normalise(self, e: torch.Tensor, dim: int = 1) -> torch.Tensor:
        parts = [F.normalize(e.narrow(dim, a, b - a), dim=dim) for a, b in self.learners]
        return torch.cat(parts, dim) / math.sqrt(len(self.learners))

    def forward(self, features):                          # B×C×h×w
        maps = self.attention_maps(features)               # B×(1|K)×h×w
        g = self.pooled(features, maps)                    # B×C or B×K×C
        if self.per_learner_attention:                     # learner k sees its own pooled features
            g = self.dropout(g)
            e = torch.cat([F.linear(g[:, k], self.proj.weight[a:b], self.proj.bias[a:b])
                           for k, (a, b) in enumerate(self.learners)], 1)
        else:
            e = self.proj(self.dropout(g))                 # B×D
        emb = self._subspace_normalise(e)
        if self.training and emb.requires_grad and self._collect_taylor():
            emb.register_hook(self._taylor_hook(emb.detach()))
        out_maps = {"dsl_attention": maps.mean(1, keepdim=True) if self.per_learner_attention else maps}
        if self.per_learner_attention:
            out_maps["dsl_learner_attention"] = maps
        return HeadOutput(emb, out_maps)

    def position_embeddings(self, features) -> torch.Tensor:
        """B×D×h×w: each position's share of the embedding, W·(A_p F_p) + b, normalised per learner
        (GAP is linear, so the embedding's pre-normalisation vector is the mean of these)."""
        maps = self.attention_maps(features)
        b, c, h, w = features.shape
        rows = []
        for k, (a, z) in enumerate(self.learners):
            attended = features * maps[:, k if self.per_learner_attention else 0, None]   # B×C×h×w
            rows.append(torch.einsum("bchw,dc->bdhw", attended, self.proj.weight[a:z])
                        + self.proj.bias[a:z, None, None])
        return self._subspace_normalise(torch.cat(rows, 1), dim=1)

    # ---- loss -------------------------------------------------------------------------------------
    def in_finetune(self, epoch: int | None = None) -> bool:
        epoch = self._epoch if epoch is None else epoch
        return self.finetune_epoch is not None and epoch is not None and epoch >= self.finetune_epoch

    def loss(self, out: HeadOutput, labels, criterion) -> dict[str, torch.Tensor]:
        e = out.embedding
        if self._tag is None or self.in_finetune():  # whole embedding, one L2 norm (fine-tuning, or K = 1)
            z = F.normalize(e, dim=-1)
        else:
            a, b = self.learners[int(self._tag)]
            z = F.normalize(e[:, a:b], dim=-1)
        if self.loss_name == "dsl":                  # official `MarginLoss(E, T)` with its `Sampler`
            return {"dml": dsl_margin_loss(z.float(), labels, self.margin_beta, self.margin, self.neg_cutoff)}
        return {"dml": criterion(z, labels)}

    def on_batch_start(self, ctx: TrainContext | None, tag) -> None:
        self._tag = tag

    # ---- trainer hooks ----------------------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        if self.finetune_epoch is None:
            self.finetune_epoch = self.finetune_epoch_cfg if self.finetune_epoch_cfg is not None else int(round(ctx.epochs * 5 / 6))
        self.fresh.attach(ctx.optimizer, self._row_params())
        if self.loss_name == "criterion" and ctx.loss is not None and any(hasattr(ctx.loss, n) for n in ("proxies", "W")):
            raise ValueError("dsl trains each learner on a slice of the embedding; use a pair-based loss "
                             "(margin, multi_similarity, triplet, contrastive), not a proxy/classifier loss")
        if ctx.distributed and self.dynamic:
            raise NotImplementedError("dsl learner growth under torchrun is not supported yet "
                                      "(the growth metric lives on rank 0 only); train on one process")
        self.resume_clusters(ctx)

    def on_epoch_start(self, ctx: TrainContext | None, epoch: int) -> None:
        self._epoch = epoch
        self._tag = None
        if self.pending is not None:
            self.apply_split(self.pending, ctx, epoch)
        self.reset_taylor()

    def on_epoch_end(self, ctx: TrainContext, epoch: int, metrics: dict) -> None:
        self.record_epoch(epoch, metrics)
        self.write_events(ctx)

    # ---- persistence ------------------------------------------------------------------------------
    def events_payload(self) -> dict:
        return {"learners": [list(range(a, b)) for a, b in self.learners], "groups": [[a, b] for a, b in self.learners],
                "events": self.events, "epochs": self.epoch_log, "growth_metric": self.growth_metric,
                "finetune_epoch": self.finetune_epoch, "per_learner_attention": self.per_learner_attention}

    def write_events(self, ctx: TrainContext | None) -> None:
        """The growth record (and the clustering, for resume) into the run directory, for the dashboard."""
        if ctx is None:
            return
        ctx.write_artifact(EVENTS_FILE, self.events_payload())
        if self.assign is not None:
            ctx.write_artifact(CLUSTERS_FILE, self.assign)

    def extra_state(self) -> dict:
        return {"learners": [[a, b] for a, b in self.learners], "best_value": self.best_value,
                "best_epoch": self.best_epoch, "explore": self.explore, "pending": self.pending,
                "finetune_epoch": self.finetune_epoch, "events": self.events, "epoch_log": self.epoch_log,
                "fresh_rows": self.fresh.rows}

    def load_extra_state(self, state: dict) -> None:
        if not state:
            return
        learners = [(int(a), int(b)) for a, b in state.get("learners", [[0, self.out_dim]])]
        flat = [i for a, b in learners for i in range(a, b)]
        if flat != list(range(self.out_dim)):
            raise ValueError(f"dsl: saved learners {learners} do not partition the {self.out_dim} embedding dims")
        if self.max_learners is not None and len(learners) > self.max_learners:
            raise ValueError(f"dsl: {len(learners)} saved learners exceed max_learners={self.max_learners}")
        self.learners = learners
        self.best_value, self.best_epoch = state.get("best_value"), state.get("best_epoch")
        self.explore, self.pending = bool(state.get("explore", True)), state.get("pending")
        if state.get("finetune_epoch") is not None:
            self.finetune_epoch = int(state["finetune_epoch"])
        self.events, self.epoch_log = list(state.get("events", [])), list(state.get("epoch_log", []))
        self.fresh.rows = [dict(r) for r in state.get("fresh_rows", [])]
