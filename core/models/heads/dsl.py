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
    batches, balanced and unbalanced, each learner's slice and the whole vector): |Δ loss| ≤ 4.8e-8,
    gradient cosine 1.000000 (the all-triplet loss used before: 0.36–0.64). `loss: criterion` trains
    with `train.loss` instead. Forward, Taylor ranking, split and growth rule had matched before;
  * Taylor importance a·∂L/∂a of every output neuron, summed per epoch through a tensor hook
    (detached running sums, not the per-batch tensors the original keeps);
  * after an epoch whose validation metric (`val_<growth_metric>`, from the *train-class*
    validation part, never the test classes) has not improved for `patience` epochs, with
    `explore` set by the last improvement: the last learner S_K splits if |S_K| > `min_split_size`
    and ≥ `min_candidates` of its neurons have normalised importance > `threshold`. The important
    neurons move (weights, biases and optimiser moments unchanged) to the front of S_K and stay
    learner K; the remaining slots are re-initialised and become learner K+1, and take nominal Adam
    steps from then on (their moments zeroed and their own step count, `dsl_adam.FreshRows`; the
    official code keeps the stale moments of those rows). Learners therefore
    stay contiguous ranges, so `groups` is a list of slices;
  * from `finetune_epoch` on: the trainer's own sampler and the loss on the whole L2-normalised e.

A split decided at the end of epoch e is applied at the start of epoch e+1, so the weights the
trainer saves at epoch e are the ones it evaluated. Every split is written to
RUN_DIR/dsl_events.json (atomically; also kept in `extra_state`) for the dashboard to replay.
The clustering and per-cluster batching are plain functions in `dsl_clusters.py`.

`per_learner_attention: true` (NOT in the paper or the official code): one attention map per
learner, from a shared trunk and a final conv with `max_learners` output channels, so no parameter
ever changes shape; a new learner starts from its parent's map.
"""
from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.io import atomic_save_npy, write_json
from core.losses import dsl_margin_loss
from core.models.heads.base import Head, HeadOutput
from core.models.heads.dsl_adam import FreshRows
from core.models.heads.dsl_clusters import kmeans_clusters, round_robin_cluster_batches
from core.registry import register_head, register_map
from core.run_dir import DSL_CLUSTERS, DSL_EVENTS

log = logging.getLogger(__name__)

EVENTS_FILE, CLUSTERS_FILE = DSL_EVENTS, DSL_CLUSTERS

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


def taylor_candidates(score_sum: torch.Tensor, learner: slice, threshold: float) -> tuple[list[int], list[float]]:
    """Neurons of `learner` whose normalised Taylor importance exceeds `threshold`, most important first.

    v = |s| / ‖s‖₂, then min–max scaled to [0, 1] (official `FilterLearner.normalize_ranks`)."""
    s = score_sum[learner].double().abs()
    v = s / torch.sqrt((s * s).sum() + 1e-8)
    spread = v.max() - v.min()
    if not torch.isfinite(spread) or spread <= 0:
        return [], []
    v = (v - v.min()) / spread
    order = torch.argsort(v, descending=True, stable=True)
    keep = [int(i) for i in order if v[i] > threshold]
    return [learner.start + i for i in keep], [round(float(v[i]), 4) for i in keep]


@register_head("dsl")
class DSLHead(Head):
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

    def on_batch_start(self, trainer, tag) -> None:
        self._tag = tag

    # ---- Taylor importance ------------------------------------------------------------------------
    def _collect_taylor(self) -> bool:
        return self.dynamic and not self.in_finetune()

    def _taylor_hook(self, activation: torch.Tensor):
        def hook(grad):
            with torch.no_grad():
                self.taylor_sum += (activation.double() * grad.double()).sum(0)
                self.taylor_count += activation.shape[0]
        return hook

    def reset_taylor(self) -> None:
        self.taylor_sum.zero_()
        self.taylor_count = 0

    # ---- trainer hooks ----------------------------------------------------------------------------
    def on_train_start(self, trainer) -> None:
        epochs = trainer.cfg.train.epochs
        if self.finetune_epoch is None:
            self.finetune_epoch = self.finetune_epoch_cfg if self.finetune_epoch_cfg is not None else int(round(epochs * 5 / 6))
        self.fresh.attach(getattr(trainer, "optimizer", None), self._row_params())
        loss = getattr(trainer.criterion, "loss", None)
        if self.loss_name == "criterion" and loss is not None and any(hasattr(loss, n) for n in ("proxies", "W")):
            raise ValueError("dsl trains each learner on a slice of the embedding; use a pair-based loss "
                             "(margin, multi_similarity, triplet, contrastive), not a proxy/classifier loss")
        if getattr(trainer, "distributed", False) and self.dynamic:
            raise NotImplementedError("dsl learner growth under torchrun is not supported yet "
                                      "(the growth metric lives on rank 0 only); train on one process")
        path = trainer.run_dir / CLUSTERS_FILE
        if self.assign is None and path.exists() and len(self.learners) > 1:  # resume: previous clustering
            saved = np.load(path)
            if len(saved) == len(trainer.splits.train):
                self.assign, self.assign_epoch = saved.astype(np.int64), -1
                self._assign_k = int(self.assign.max()) + 1

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self._epoch = epoch
        self._tag = None
        if self.pending is not None:
            self.apply_split(self.pending, trainer, epoch)
        self.reset_taylor()

    def epoch_batches(self, trainer, epoch: int):
        if self.in_finetune(epoch) or len(self.learners) == 1:
            return None  # the trainer's class-balanced sampler over all data; loss on the whole vector
        k = len(self.learners)
        stale = self.assign is None or int(self.assign.max()) + 1 > k
        grew = self.recluster_on_growth and self.assign is not None and self.assign_k != k
        due = epoch > 0 and epoch % self.recluster_every == 0 and self.assign_epoch != epoch
        if stale or grew or due:
            self.recluster(trainer, epoch)
        batches = self.cluster_batches(trainer, epoch)
        if not batches:  # no cluster holds two classes: train the whole embedding this epoch
            log.warning("dsl: epoch %d has no cluster with two classes; using the default sampler", epoch)
            return None
        return batches

    @property
    def assign_k(self) -> int:
        return self._assign_k if self.assign is not None else 0

    def recluster(self, trainer, epoch: int) -> None:
        k = len(self.learners)
        self.assign = kmeans_clusters(self._train_penultimate(trainer), k, np.asarray(trainer.splits.train.labels),
                                      previous=self.assign, niter=self.kmeans_niter, nredo=self.kmeans_nredo,
                                      seed=int(trainer.cfg.train.seed) * 1000 + epoch + 1)
        self.assign_epoch, self._assign_k = epoch, k
        sizes = np.bincount(self.assign[self.assign >= 0], minlength=k).tolist()
        log.info("dsl: epoch %d re-clustered the train set into %d clusters of sizes %s", epoch, k, sizes)

    def _train_penultimate(self, trainer) -> np.ndarray:
        """L2norm(GAP(F⊙A)) of every train item, test-time transform (official `init` loader)."""
        from torch.utils.data import DataLoader

        from core.data import build_transform

        data = copy.copy(trainer.splits.train)
        if hasattr(data, "transform"):
            data.transform = build_transform(trainer.cfg.data, train=False)
        model = trainer.model
        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.no_grad():
                for x, _, _ in DataLoader(data, batch_size=128, shuffle=False, num_workers=trainer.cfg.train.num_workers):
                    out.append(self.penultimate(model.forward_features(x.to(trainer.device))).float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(out).numpy()

    def cluster_batches(self, trainer, epoch: int) -> list[tuple[list[int], int]]:
        t = trainer.cfg.train
        return round_robin_cluster_batches(self.assign, np.asarray(trainer.splits.train.labels), len(self.learners),
                                           t.batch_size, t.m_per_class, seed=(t.seed * 100_003 + epoch * 101) % 2**32)

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        value = metrics.get(f"val_{self.growth_metric}")
        if value is None and metrics and not self._warned_no_val:
            log.warning("dsl: no val_%s in the validation metrics (keys: %s); learners grow only on the "
                        "validation part of the train classes (data.val_classes > 0), never on test classes",
                        self.growth_metric, ", ".join(sorted(metrics)))
            self._warned_no_val = True
        if value is not None and (self.best_value is None or value > self.best_value):
            self.best_value, self.best_epoch, self.explore = float(value), epoch, True
        decision = self.decide_growth(epoch)
        if decision.get("split"):
            self.pending = {"decided_epoch": epoch, "metric": self.growth_metric,
                            "value": None if value is None else float(value), "best_value": self.best_value,
                            "best_epoch": self.best_epoch, "keep": decision["keep"], "scores": decision["scores"]}
            self.explore = False
        self.epoch_log.append({"epoch": epoch, "learners": [b - a for a, b in self.learners],
                               self.growth_metric: None if value is None else round(float(value), 5),
                               "best_epoch": self.best_epoch, "phase": "finetune" if self.in_finetune(epoch) else
                               ("divide_and_conquer" if len(self.learners) > 1 else "single"),
                               "growth": decision.get("reason", "")})
        self.write_events(trainer)

    # ---- growth -----------------------------------------------------------------------------------
    def growth_blocked(self, epoch: int) -> str | None:
        """Why no learner may be added after `epoch` (None: the rule allows one; §2.2 step 4)."""
        if not self.dynamic:
            return "dynamic growth off"
        if self.pending is not None:
            return "a split is already pending"
        if epoch <= 0:
            return "epoch 0"
        if self.finetune_epoch is not None and epoch >= self.finetune_epoch:
            return "fine-tuning phase"
        if self.best_epoch is None:
            return f"no val_{self.growth_metric} yet"
        if epoch < self.best_epoch + self.patience:
            return f"patience ({epoch - self.best_epoch}/{self.patience} epochs without improvement)"
        if not self.explore:
            return "already split since the last improvement"
        if self.max_learners is not None and len(self.learners) >= self.max_learners:
            return f"max_learners ({self.max_learners}) reached"
        return None

    def decide_growth(self, epoch: int) -> dict:
        blocked = self.growth_blocked(epoch)
        if blocked:
            return {"split": False, "reason": blocked}
        a, b = self.learners[-1]
        if b - a <= self.min_split_size:
            return {"split": False, "reason": f"last learner has {b - a} neurons (needs > {self.min_split_size})"}
        if self.taylor_count == 0:
            return {"split": False, "reason": "no Taylor statistics this epoch"}
        keep, scores = taylor_candidates(self.taylor_sum, slice(a, b), self.threshold)
        if len(keep) < self.min_candidates:
            return {"split": False, "reason": f"{len(keep)} important neurons (needs ≥ {self.min_candidates})"}
        if len(keep) >= b - a:
            return {"split": False, "reason": "every neuron is important; nothing left for a new learner"}
        return {"split": True, "reason": f"split: keep {len(keep)} of {b - a}", "keep": keep, "scores": scores}

    def _reinit_rows(self, start: int, stop: int, generator: torch.Generator | None) -> None:
        """Xavier-normal weights (gain 1) and a fresh nn.Linear-style bias for rows start:stop."""
        fan_in, n = self.proj.in_features, stop - start
        std = math.sqrt(2.0 / (fan_in + n))
        bound = 1 / math.sqrt(fan_in)
        w = self.proj.weight
        self.proj.weight.data[start:stop] = torch.randn(n, fan_in, generator=generator, dtype=w.dtype).to(w.device) * std
        self.proj.bias.data[start:stop] = (torch.rand(n, generator=generator, dtype=w.dtype).to(w.device) * 2 - 1) * bound

    @torch.no_grad()
    def apply_split(self, pending: dict, trainer=None, epoch: int | None = None) -> dict:
        """Split the last learner: the `keep` neurons move to its front (weights unchanged), the rest
        of its slots are re-initialised as a new learner. Returns the growth event."""
        a, b = self.learners[-1]
        keep = [int(i) for i in pending["keep"]]
        if not keep or any(not a <= i < b for i in keep) or len(set(keep)) != len(keep) or len(keep) >= b - a:
            raise ValueError(f"dsl: invalid split of learner {(a, b)} keeping {keep}")
        before = [list(range(s, e)) for s, e in self.learners]
        cut = a + len(keep)
        source = torch.tensor(keep, device=self.proj.weight.device)
        params = [self.proj.weight, self.proj.bias]
        moved = {p: p.data[source].clone() for p in params}  # clone first: slots and sources overlap
        for p in params:
            p.data[a:cut] = moved[p]
        seed = int(trainer.cfg.train.seed) if trainer is not None else 0
        gen = torch.Generator().manual_seed(seed * 100_003 + 7919 * (len(self.learners) + 1) + (epoch or 0))
        self._reinit_rows(cut, b, gen)
        if trainer is not None and getattr(trainer, "optimizer", None) is not None:
            for p in params:  # Adam moments follow their neurons
                for key, st in trainer.optimizer.state.get(p, {}).items():
                    if torch.is_tensor(st) and st.shape == p.shape:
                        st[a:cut] = st[source.to(st.device)].clone()
            self.fresh.attach(trainer.optimizer, self._row_params())
            for name in ("proj.weight", "proj.bias"):  # the re-initialised rows start as under a fresh Adam
                self.fresh.reset(name, cut, b)
        k = len(self.learners)
        if self.per_learner_attention:  # the new learner starts from its parent's attention map
            last = self.attention.last
            last.weight.data[k] = last.weight.data[k - 1]
            last.bias.data[k] = last.bias.data[k - 1]
        self.learners = self.learners[:-1] + [(a, cut), (cut, b)]
        self.pending = None
        event = {**pending, "applied_epoch": epoch, "learners_before": before,
                 "learners_after": [list(range(s, e)) for s, e in self.learners],
                 "moved": {str(a + i): src for i, src in enumerate(keep)}, "reinitialised": list(range(cut, b))}
        self.events.append(event)
        log.info("dsl: learner %d split after epoch %s: kept %d neurons, new learner of %d (K=%d)",
                 k - 1, pending.get("decided_epoch"), len(keep), b - cut, len(self.learners))
        return event

    def _row_params(self) -> dict[str, nn.Parameter]:
        return {"proj.weight": self.proj.weight, "proj.bias": self.proj.bias}

    # ---- persistence ------------------------------------------------------------------------------
    def events_payload(self) -> dict:
        return {"learners": [list(range(a, b)) for a, b in self.learners], "groups": [[a, b] for a, b in self.learners],
                "events": self.events, "epochs": self.epoch_log, "growth_metric": self.growth_metric,
                "finetune_epoch": self.finetune_epoch, "per_learner_attention": self.per_learner_attention}

    def write_events(self, trainer) -> None:
        if trainer is None or getattr(trainer, "rank", 0) != 0 or not hasattr(trainer, "run_dir"):
            return
        write_json(trainer.run_dir / EVENTS_FILE, self.events_payload())
        if self.assign is not None:
            atomic_save_npy(trainer.run_dir / CLUSTERS_FILE, self.assign)

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
