"""Which weights train, at which learning rate, and when: the optimiser's groups, the lr schedule, the warm-up.

Groups: the backbone's trainable weights at `train.backbone_lr`, every other trainable weight (head, projection,
blocks, CIA branch, loss parameters) at `train.lr`, and a head's own groups (`Head.param_groups`, e.g. DGML's β
at 5× the lr). The schedule scales every group's base lr by a factor of the epoch alone, so a resumed run
continues the same curve. The warm-up (`train.warmup_epochs` W) freezes exactly the backbone weights the config
trains for epochs 0..W-1, with the backbone's BatchNorm layers in eval mode.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from core.config import RunConfig, TrainConfig

# train.lr_schedule: the factor on every group's lr at epoch e of E. Cosine decays to 0 over the run (the last
# epochs take small steps, so the best validation epoch is not picked from a noisy lr-1e-3 plateau).
LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda epoch, epochs: 1.0,
    "cosine": lambda epoch, epochs: 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1))),
}
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
PROJECTION_INITS = ("random", "pca", "uncentred_pca")  # core.models.heads.base.pca_init_


def backbone_lr(t: TrainConfig) -> float:
    return t.lr if t.backbone_lr is None else t.backbone_lr  # 0 means 0, not "same as lr"


def settings_problem(cfg: RunConfig) -> str | None:
    """Why these values cannot train (checked before anything is built on them), or None."""
    t = cfg.train
    for key, value in (("train.lr", t.lr), ("train.backbone_lr", t.backbone_lr)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            return f"{key}={value} is not a learning rate; use a positive number such as 3e-5"
    if cfg.model.projection_init not in PROJECTION_INITS:
        return f"model.projection_init={cfg.model.projection_init!r}; use {', '.join(PROJECTION_INITS)}"
    if t.warmup_epochs < 0:
        return f"train.warmup_epochs={t.warmup_epochs} must be 0 or more"
    if t.lr_schedule not in LR_SCHEDULES:
        return f"train.lr_schedule={t.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}"
    return None


def param_groups(model, criterion, t: TrainConfig) -> list[dict]:
    """The optimiser's groups (empty ones left out): backbone, the rest of the new layers, the head's own."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in backbone}
    own = [{"params": [p for p in g["params"] if p.requires_grad], "lr": t.lr * g.get("lr_scale", 1.0),
            **({} if g.get("weight_decay") is None else {"weight_decay": g["weight_decay"]})}
           for g in model.head.param_groups()]  # e.g. DGML's β at its own lr
    grouped = backbone_ids | {id(p) for g in own for p in g["params"]}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in grouped]
    rest += [p for p in criterion.parameters() if p.requires_grad]  # proxies, learnable β
    return [g for g in ({"params": backbone, "lr": backbone_lr(t)}, {"params": rest, "lr": t.lr}, *own)
            if g["params"]]


def build_optimizer(groups: list[dict], t: TrainConfig) -> torch.optim.Optimizer | None:
    """Adam/AdamW over `groups`; None when nothing trains (evaluate-only runs, `train.epochs=0`)."""
    cls = OPTIMIZERS.get(t.optimizer)
    if cls is None:
        raise ValueError(f"unknown optimizer {t.optimizer!r}; use {' or '.join(OPTIMIZERS)}")
    if not groups:  # e.g. a frozen backbone with a projection-free head
        return None
    return cls(groups, lr=t.lr, weight_decay=t.weight_decay)


def set_epoch_lr(optimizer: torch.optim.Optimizer | None, t: TrainConfig, epoch: int) -> float:
    """Every group's lr for this epoch: its base lr times the schedule's factor. Returns the factor."""
    factor = LR_SCHEDULES[t.lr_schedule](epoch, t.epochs)
    if optimizer is not None:
        for g in optimizer.param_groups:
            # the group's own lr, kept beside it on the first call (in the optimiser's state, so a resumed
            # run has it; a resume file from before the schedule had a constant lr, i.e. its own)
            g["lr"] = g.setdefault("base_lr", g["lr"]) * factor
    return factor


def nothing_to_learn(optimizer: torch.optim.Optimizer | None, t: TrainConfig) -> str | None:
    """Why training could not change anything (every trainable group has lr 0), or None."""
    if optimizer is None or any(g["lr"] > 0 for g in optimizer.param_groups):
        return None
    return (f"train.lr={t.lr:g}" + (f" and train.backbone_lr={t.backbone_lr:g}" if t.backbone_lr is not None else "")
            + ": no weight can change, so no epoch was run; the starting weights are kept and scored. "
            "Set a positive learning rate (e.g. train.lr=3e-5) to train")


class Warmup:
    """`train.warmup_epochs`: the backbone weights the config trains (frozen BN affine and a frozen backbone
    excluded) are frozen for the first epochs, then train again exactly as configured."""

    def __init__(self, model, criterion, cfg: RunConfig):
        self.model, self.criterion, self.cfg = model, criterion, cfg
        self.backbone_trainable = [p for p in model.backbone.parameters() if p.requires_grad]
        self.epochs = cfg.train.warmup_epochs  # set to 0 when there is no new layer to warm up

    def new_layer_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters outside the backbone: head (incl. projection), blocks, CIA, loss."""
        backbone = {id(p) for p in self.model.backbone.parameters()}
        params = [p for p in self.model.parameters() if id(p) not in backbone]
        return [p for p in params + list(self.criterion.parameters()) if p.requires_grad]

    def skipped(self) -> str | None:
        """Why the configured warm-up does nothing (then it is switched off), or None."""
        t = self.cfg.train
        if self.epochs and self.backbone_trainable and not self.new_layer_parameters():
            self.epochs = 0
            return (f"train.warmup_epochs={t.warmup_epochs} ignored: no new layer to warm up (no projection, head or "
                    "block weights); the backbone trains from epoch 0")
        if t.warmup_epochs and not self.backbone_trainable:
            return f"train.warmup_epochs={t.warmup_epochs} has no effect: the backbone is frozen for the whole run"
        return None

    def active(self, epoch: int) -> bool:
        return epoch < self.epochs and bool(self.backbone_trainable)

    def apply(self, on: bool, training_step: torch.nn.Module) -> None:
        """Freeze (on) or train again (off) exactly the backbone parameters the config trains; while on,
        the backbone's BatchNorm layers stay in eval mode (running statistics frozen too)."""
        for p in self.backbone_trainable:
            p.requires_grad_(not on)
        self.model.frozen_bn = on or self.cfg.model.frozen_bn  # Embedder.train() keeps BN in eval
        training_step.train(training_step.training)

    def describe(self, on: bool) -> str:
        n_backbone = sum(p.numel() for p in self.backbone_trainable)
        n_new = sum(p.numel() for p in self.new_layer_parameters())
        t = self.cfg.train
        bn = "eval (frozen)" if (self.cfg.model.frozen_bn or on) else "train mode"
        if on:
            return (f"warm-up: backbone frozen ({n_backbone:,} weights, BatchNorm {bn}); training only the new "
                    f"layers ({n_new:,} weights: head/projection, blocks, CIA, loss) at lr {t.lr:g}")
        return (f"backbone unfrozen: {n_backbone:,} weights at lr {backbone_lr(t):g}, BatchNorm {bn}; new layers "
                f"({n_new:,} weights) at lr {t.lr:g}")
