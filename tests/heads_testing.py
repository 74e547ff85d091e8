"""Shared helpers for the head/block tests: a fixed real `shapes` batch, a short overfitting run through
`Trainer.step` (the trainer's own step), and a save/load round trip through a run directory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core import checkpoint as ckpt
from core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from core.data import build_datasets
from core.losses import build_criterion
from core.models.embedder import build_model
from core.train import Trainer, TrainingStep


def shapes_batch(n_classes: int = 4, per_class: int = 4, seed: int = 0, size: int = 32):
    """(images B×3×size×size in [0, 1], labels, splits): the first `n_classes` train classes, no augmentation.

    Real 64 px shapes images (the cached default set), downsampled to `size` to keep the CPU tests fast.
    Labels are the data set's global class ids (not contiguous), as the trainer hands them to heads."""
    splits = build_datasets(DataConfig(max_per_class=per_class, augment=False, val_classes=0), seed=seed)
    ds, labels = splits.train, splits.train.labels
    idx = [i for c in np.unique(labels)[:n_classes] for i in np.flatnonzero(labels == c)[:per_class]]
    x = torch.stack([ds[i][0] for i in idx])
    if size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    return x, torch.as_tensor(labels[idx]), splits


def build(model_cfg: ModelConfig, num_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(model_cfg, num_classes=num_classes)
    criterion = build_criterion(TrainConfig(loss="multi_similarity", miner=None), num_classes, model.head.out_dim)
    return model, criterion


def loss_terms(model, criterion, x, y) -> dict[str, torch.Tensor]:
    """The trainer's own composition (`core.train.TrainingStep`): head terms + block terms + CIA branch."""
    return TrainingStep(model, criterion)(x, y)


def trainer_for(model_cfg: ModelConfig, splits, run_dir: Path, lr: float = 1e-3, **train) -> Trainer:
    """A real `Trainer` on `splits` (CPU, multi_similarity without a miner) whose head has heard
    `on_train_start`, ready for `Trainer.step`. Nothing is written until `fit`."""
    cfg = RunConfig(model=model_cfg, train=TrainConfig(device="cpu", loss="multi_similarity", miner=None, lr=lr,
                                                       **train))
    trainer = Trainer(cfg, run_dir, splits=splits)
    trainer.model.head.on_train_start(trainer.context)
    return trainer


def overfit(trainer: Trainer, x, y, steps: int = 12) -> list[float]:
    """`Trainer.step` on one fixed batch; returns the loss of every step."""
    torch.manual_seed(0)
    return [trainer.step((x, y))["loss"] for _ in range(steps)]


def assert_falling(history: list[float], window: int = 3) -> None:
    first, last = np.mean(history[:window]), np.mean(history[-window:])
    assert last < 0.9 * first, f"loss did not fall: first {first:.4f}, last {last:.4f} ({history})"


def round_trip(model, model_cfg: ModelConfig, run_dir: Path, num_classes: int):
    """Save as a run directory and load back through core.checkpoint.load_run (no pickles)."""
    RunConfig(model=model_cfg).save(Path(run_dir) / ckpt.CONFIG)
    ckpt.save_weights(Path(run_dir), model, num_classes, epoch=0)
    loaded, _ = ckpt.load_run(run_dir)
    return loaded
