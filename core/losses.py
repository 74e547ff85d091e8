"""DML criteria from pytorch-metric-learning, composed as loss + optional miner.

Method-specific terms (diversity, ZSR, conditional CIA similarity) live with their heads and
branches and call into a `DMLCriterion` for the pair-based part.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper
from torch import nn

from core.config import TrainConfig

# Published defaults per loss, the one place they are written: (class, keyword arguments for num_classes n
# and embedding size d). Config `train.loss_args` overrides any of them.
LOSS_DEFAULTS = {
    # Wu et al. 2017 as used by DGML/DSL: α = 0.2, β = 1.2, ν = 0
    "margin": (losses.MarginLoss, lambda n, d: dict(margin=0.2, nu=0.0, beta=1.2)),
    # Wang et al. 2019: α = 2, β = 50, λ = 0.5
    "multi_similarity": (losses.MultiSimilarityLoss, lambda n, d: dict(alpha=2.0, beta=50.0, base=0.5)),
    "triplet": (losses.TripletMarginLoss, lambda n, d: dict(margin=0.1)),
    # GSP's "original contrastive": cosine, positives pulled to 1, negatives pushed below 0.5
    "contrastive": (losses.ContrastiveLoss, lambda n, d: dict(pos_margin=1.0, neg_margin=0.5,
                                                             distance=distances.CosineSimilarity())),
    "proxy_anchor": (losses.ProxyAnchorLoss, lambda n, d: dict(num_classes=n, embedding_size=d, margin=0.1, alpha=32)),
}
# these take constructor-only options (learn_beta, num_classes): built with the merged keyword arguments
_BUILT_WITH_OPTIONS = ("margin", "proxy_anchor")
MINERS = {
    "multi_similarity": lambda: miners.MultiSimilarityMiner(epsilon=0.1),
    "triplet": lambda: miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard"),
    "distance_weighted": lambda: miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4),
}


class DMLCriterion(nn.Module):
    """`criterion(embeddings, labels)`: mine (optional), then the pair/proxy loss."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None):
        super().__init__()
        self.loss, self.miner = loss, miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple=None) -> torch.Tensor:
        if indices_tuple is None and self.miner is not None:
            indices_tuple = self.miner(embeddings, labels)
        return self.loss(embeddings, labels, indices_tuple)


def _configured(factory, args: dict):
    obj = factory()
    for key, value in args.items():
        if not hasattr(obj, key):
            raise ValueError(f"{type(obj).__name__} has no option {key!r}")
        current = getattr(obj, key)
        if isinstance(current, torch.nn.Parameter):  # e.g. a learnable β: overwrite its value
            with torch.no_grad():
                current.fill_(float(value))
        else:
            setattr(obj, key, value)
    return obj


def build_loss(name: str, args: dict, num_classes: int, embed_dim: int) -> nn.Module:
    if name not in LOSS_DEFAULTS:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(sorted(LOSS_DEFAULTS))}")
    cls, defaults = LOSS_DEFAULTS[name]
    kwargs = defaults(num_classes, embed_dim)
    if name in _BUILT_WITH_OPTIONS and args:
        return cls(**{**kwargs, **args})
    return _configured(lambda: cls(**kwargs), args)


def build_criterion(cfg: TrainConfig, num_classes: int, embed_dim: int) -> DMLCriterion:
    loss = build_loss(cfg.loss, cfg.loss_args, num_classes, embed_dim)
    miner = None
    if cfg.miner:
        if cfg.miner not in MINERS:
            raise ValueError(f"unknown miner {cfg.miner!r}; available: {', '.join(sorted(MINERS))}")
        miner = _configured(MINERS[cfg.miner], cfg.miner_args)
    return DMLCriterion(loss, miner)


def cia_criterion(criterion: DMLCriterion, loss: str | None = None, loss_args: dict | None = None,
                  miner: str | None = "same", embed_dim: int = 0) -> DMLCriterion:
    """The criterion the CIA branch scores its similarity matrix with (`model.cia.loss`, `loss_args`,
    `miner`): `loss: null` reuses the trainer's loss, `miner: same` its miner, `miner: null` mines nothing.
    Under torchrun the trainer's objects gather embeddings across ranks, but S only covers the rank's own
    batch (its pairs are cross-attended locally), so the local loss/miner is used and DDP averages the
    gradients."""
    chosen_loss = build_loss(loss, dict(loss_args or {}), 0, embed_dim) if loss else criterion.loss
    if isinstance(chosen_loss, DistributedLossWrapper):
        chosen_loss = chosen_loss.loss
    if miner == "same":
        chosen_miner = criterion.miner
        if isinstance(chosen_miner, DistributedMinerWrapper):
            chosen_miner = chosen_miner.miner
    elif miner:
        if miner not in MINERS:
            raise ValueError(f"unknown model.cia.miner {miner!r}; available: same, null, {', '.join(sorted(MINERS))}")
        chosen_miner = MINERS[miner]()
    else:
        chosen_miner = None
    return DMLCriterion(chosen_loss, chosen_miner)


# ---- method-specific margin losses (Wu et al. 2017) with their authors' samplers ------------------
# Both official codes normalise the summed hinge terms the same way: by
# `torch.sum((pos_loss > 0) + (neg_loss > 0))`. Adding two boolean tensors is a logical OR, so the
# divisor is the number of *triplets* with at least one active term, not the number of active terms
# (pytorch-metric-learning's MarginLoss counts terms, and so differs from the official loss:
# benchmarks/fidelity/methods.md). We follow the official code.

def _distances(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((x[a] - x[b]).pow(2).sum(1) + 1e-8).sqrt()               # official: sqrt(‖·‖² + 1e-8)


def margin_triplet_loss(x: torch.Tensor, triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                        beta: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Σ relu(d_ap − β + α) + relu(β − d_an + α) over triplets / #triplets with an active term.
    beta: a scalar or one value per triplet (the anchor's class β)."""
    a, p, n = triplets
    if len(a) == 0:
        return x.sum() * 0
    pos = F.relu(_distances(x, a, p) - beta + margin)
    neg = F.relu(beta - _distances(x, a, n) + margin)
    active = ((pos > 0) | (neg > 0)).sum()
    total = (pos + neg).sum()
    return total / active if int(active) > 0 else total


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _pdist(x: torch.Tensor) -> torch.Tensor:
    sq = x @ x.t()
    norm = sq.diag()[:, None]
    return (norm + norm.t() - 2 * sq).clamp_min(0)


def distance_weighted_triplets(x: torch.Tensor, labels: torch.Tensor, cutoff: float = 0.5,
                               generator: torch.Generator | None = None):
    """DGML's distance-weighted sampler (`batchminer/distance.py`, after Wu et al.): one triplet per
    anchor, a random positive (the anchor itself if it has none) and a negative drawn ∝ the inverse
    density of distances between points on the unit sphere of dim d, distances clipped below at `cutoff`."""
    probs = distance_weighted_probs(x, labels, cutoff)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    pos = torch.where(pos.any(1, keepdim=True), pos, same)            # alone in the batch: itself
    anchors = torch.arange(len(x), device=x.device)
    positives = torch.multinomial(pos.float(), 1, generator=generator)[:, 0]
    negatives = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return anchors, positives, negatives


@torch.no_grad()
def distance_weighted_probs(x: torch.Tensor, labels: torch.Tensor, cutoff: float = 0.5) -> torch.Tensor:
    """B×B sampling probabilities of the negatives (rows sum to 1, 0 on the anchor's class)."""
    d = x.shape[1]
    dist = _pdist(_at_least_float32(x.detach())).sqrt().clamp_min(cutoff)
    log_q = (2.0 - d) * dist.log() - (d - 3) / 2 * torch.log(1.0 - 0.25 * dist.pow(2))
    same = labels[:, None] == labels[None, :]
    log_q = log_q.masked_fill(same, 0.0)                              # as the official code: 0 before the max
    q = torch.exp(log_q - log_q.max(1, keepdim=True).values).masked_fill(same, 0.0)
    return q / q.sum(1, keepdim=True)


def dsl_triplets(x: torch.Tensor, labels: torch.Tensor, cutoff: float = 0.5):
    """DSL's sampler (`lib/loss/sampler.py`): every anchor-positive pair, each with one of the anchor's
    `num_neg` nearest negatives beyond `cutoff`, num_neg = ⌊mean positives per anchor⌋. Positives and
    negatives pair up in index order, as many as the shorter list (the official truncation)."""
    with torch.no_grad():
        dist = _pdist(_at_least_float32(x.detach())).clamp_min(1e-4).sqrt()   # official pdist(eps=1e-4)
        eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
        pos = (labels[:, None] == labels[None, :]) & ~eye
        num_neg = int(pos.sum()) // len(x)
        if num_neg == 0:
            empty = torch.zeros(0, dtype=torch.long, device=x.device)
            return empty, empty, empty
        # positives and too-close points are pushed to the end, as the official `+ infinity` (they are
        # picked only when a row has fewer than num_neg valid negatives, as there)
        masked = dist + 1e6 * (pos | (dist < cutoff)).float()
        k = min(num_neg, len(x))
        neg = torch.zeros_like(pos)
        neg.scatter_(1, masked.topk(k, dim=1, largest=False).indices, True)
        a, p, n = [], [], []
        for i in range(len(x)):
            pi, ni = pos[i].nonzero()[:, 0], neg[i].nonzero()[:, 0]        # index order, as `nonzero`
            t = min(len(pi), num_neg, len(ni))
            a.append(torch.full((t,), i, device=x.device)), p.append(pi[:t]), n.append(ni[:t])
        return torch.cat(a), torch.cat(p), torch.cat(n)


def dsl_margin_loss(x: torch.Tensor, labels: torch.Tensor, beta: float = 1.2, margin: float = 0.2,
                    cutoff: float = 0.5) -> torch.Tensor:
    """DSL's `MarginLoss(E, T)`: its sampler, fixed β, the official normalisation."""
    return margin_triplet_loss(x, dsl_triplets(x, labels, cutoff), beta, margin)
