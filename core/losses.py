"""DML criteria from pytorch-metric-learning, composed as loss + optional miner.

Method-specific terms (diversity, ZSR, conditional CIA similarity) live with their heads and
branches and call into a `DMLCriterion` for the pair-based part.
"""
from __future__ import annotations

import torch
from pytorch_metric_learning import distances, losses, miners
from torch import nn

from core.config import TrainConfig

# Published defaults per loss; config `train.loss_args` overrides any of them.
LOSS_DEFAULTS = {
    # Wu et al. 2017 as used by DGML/DSL: α = 0.2, β = 1.2, ν = 0
    "margin": lambda n, d: losses.MarginLoss(margin=0.2, nu=0.0, beta=1.2),
    # Wang et al. 2019: α = 2, β = 50, λ = 0.5
    "multi_similarity": lambda n, d: losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5),
    "triplet": lambda n, d: losses.TripletMarginLoss(margin=0.1),
    # GSP's "original contrastive": cosine, positives pulled to 1, negatives pushed below 0.5
    "contrastive": lambda n, d: losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5,
                                                       distance=distances.CosineSimilarity()),
    "proxy_anchor": lambda n, d: losses.ProxyAnchorLoss(num_classes=n, embedding_size=d, margin=0.1, alpha=32),
}
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


def _configured(factory, args: dict, *factory_args):
    obj = factory(*factory_args)
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
    if name in ("margin", "proxy_anchor") and args:
        # these take constructor-only options (learn_beta, num_classes): rebuild with the merged kwargs
        base = {"margin": dict(margin=0.2, nu=0.0, beta=1.2),
                "proxy_anchor": dict(num_classes=num_classes, embedding_size=embed_dim, margin=0.1, alpha=32)}[name]
        cls = losses.MarginLoss if name == "margin" else losses.ProxyAnchorLoss
        return cls(**{**base, **args})
    return _configured(LOSS_DEFAULTS[name], args, num_classes, embed_dim)


def build_criterion(cfg: TrainConfig, num_classes: int, embed_dim: int) -> DMLCriterion:
    loss = build_loss(cfg.loss, cfg.loss_args, num_classes, embed_dim)
    miner = None
    if cfg.miner:
        if cfg.miner not in MINERS:
            raise ValueError(f"unknown miner {cfg.miner!r}; available: {', '.join(sorted(MINERS))}")
        miner = _configured(lambda: MINERS[cfg.miner](), cfg.miner_args)
    return DMLCriterion(loss, miner)
