"""The model-randomisation sanity check (Adebayo et al., NeurIPS 2018): copies of a model with its top layers
re-initialised, and the rank correlation of a map with the same map drawn from such a copy.

The levels are cumulative, from the top: the head (and the CIA branch, which compares pooled embeddings),
then also the top backbone stage with the blocks placed after it. A map that still looks the same once the
weights it should explain are random (Spearman ρ near 1) shows the image, not the model.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

LEVELS = ("head", "head+top_stage")


def _reinitialise(module: nn.Module) -> None:
    """Fresh weights: each layer's own `reset_parameters`; any other parameter (e.g. learned queries or
    prototypes) drawn anew from a normal with its own mean and spread."""
    covered = set()
    for sub in module.modules():
        if callable(getattr(sub, "reset_parameters", None)):
            sub.reset_parameters()
            covered |= {id(p) for p in sub.parameters()}
    with torch.no_grad():
        for p in module.parameters():
            if id(p) not in covered and p.numel() > 1:
                p.normal_(float(p.mean()), float(p.std()))


def randomised_models(model, seed: int = 0) -> dict[str, nn.Module]:
    """Copies of a MetricLens model with its head, then also its top backbone stage, re-initialised; {} for a
    model without `head` and `backbone.stages` (e.g. an imported one)."""
    if not (hasattr(model, "head") and hasattr(getattr(model, "backbone", None), "stages")):
        return {}
    with torch.random.fork_rng(devices=[]):        # the caller's random state is left as it was
        torch.manual_seed(seed)
        head = copy.deepcopy(model)
        _reinitialise(head.head)
        if getattr(head, "cia", None) is not None:     # CIA's branch compares pooled embeddings: part of the head
            _reinitialise(head.cia)
        top = copy.deepcopy(head)
        stage = top.stage_order[-1]
        _reinitialise(top.backbone.stages[stage])
        for block in top.blocks[stage] if stage in top.blocks else ():
            _reinitialise(block)
    return dict(zip(LEVELS, (head.eval(), top.eval())))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps over their cells (NaN when either is constant)."""
    from scipy.stats import spearmanr
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)
