"""`TrainContext`: everything a head's training hooks may see and do, and nothing else (never the Trainer).

The trainer builds one per run (`Trainer.context`) and keeps `epoch` current; heads read the train
labels, seed and schedule from it, reach the optimiser through it, embed the train set with it and
write their replay files through it. Tests build one directly: every field but the labels has a
default, and without a `run_dir` nothing is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from core import io


@dataclass
class TrainContext:
    train_labels: np.ndarray                    # global class id of every train item, in train-set order
    seed: int = 0                               # train.seed
    epochs: int = 0                             # train.epochs (the whole schedule, also when resuming)
    batch_size: int = 32                        # train.batch_size
    m_per_class: int = 4                        # train.m_per_class
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    optimizer: torch.optim.Optimizer | None = None  # the trainer's optimiser (None: evaluate-only runs)
    loss: torch.nn.Module | None = None         # the trainer's pytorch-metric-learning loss (to refuse kinds)
    run_dir: Path | None = None                 # where write_artifact writes (None: nowhere)
    rank: int = 0                               # only rank 0 writes
    distributed: bool = False                   # under torchrun
    epoch: int | None = None                    # the epoch being run (kept current by the trainer)
    # (features -> B×D) -> N×D over the train set; supplied by the trainer (see `embed_train_set`)
    embed_fn: Callable[[Callable[[torch.Tensor], torch.Tensor] | None], np.ndarray] | None = field(
        default=None, repr=False)

    def __post_init__(self):
        self.train_labels = np.asarray(self.train_labels)
        self.run_dir = None if self.run_dir is None else Path(self.run_dir)

    def embed_train_set(self, pool: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
        """N×D float32 for every train item in order, with the test-time transform, in eval mode, without
        gradients: `pool(features B×C×h×w) -> B×D` (default: the model's embedding)."""
        if self.embed_fn is None:
            raise RuntimeError("this TrainContext has no train set to embed (build it with embed_fn, as the Trainer does)")
        return self.embed_fn(pool)

    def write_artifact(self, name: str, obj: Any) -> Path | None:
        """Write `obj` to RUN_DIR/name atomically (a reader never sees half a file): an array as .npy,
        anything else as JSON. Only rank 0 writes; without a run directory nothing is written (None)."""
        if self.run_dir is None or self.rank != 0:
            return None
        path = self.run_dir / name
        if isinstance(obj, np.ndarray):
            io.atomic_save_npy(path, obj)
        else:
            io.write_json(path, obj)
        return path

    def read_artifact(self, name: str) -> Any | None:
        """What `write_artifact(name, ...)` wrote in this run directory before (e.g. on resume), or None."""
        path = None if self.run_dir is None else self.run_dir / name
        if path is None or not path.exists():
            return None
        return io.read_npy(path) if path.suffix == ".npy" else io.read_json(path)
