"""A run's model and its test items as the dashboard shows them, for code outside the dashboard (the
faithfulness scores, the re-ranking, benchmarks): the stored embeddings, labels and items.json, and each
item's model input (3×H×W in [0, 1], built from the run's data set exactly as the dashboard builds it).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from core import io
from core.run_dir import ARTIFACTS, EMBEDDINGS, ITEMS, LABELS, CheckpointError


class RunItems:
    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu"):
        from core.checkpoint import load_run

        self.path = Path(run_dir)
        self.model, self.config = load_run(self.path, device)
        art = self.path / ARTIFACTS
        missing = [n for n in (EMBEDDINGS, LABELS, ITEMS) if not (art / n).exists()]
        if missing:
            raise CheckpointError(f"{art} lacks {', '.join(missing)}: the run has not finished (its artifacts are "
                                  f"written with metrics.json), or was copied without them")
        self.embeddings = np.load(art / EMBEDDINGS).astype(np.float32)
        self.labels = np.load(art / LABELS)
        self.items = io.read_json(art / ITEMS)

    def __len__(self) -> int:
        return len(self.items)

    @cached_property
    def splits(self):
        from core.data import build_datasets
        return build_datasets(self.config.data, seed=self.config.train.seed)

    def _dataset(self, item: int):
        meta = self.items[int(item)]
        return getattr(self.splits, meta.get("split", "test")), int(meta["index"])

    @cached_property
    def _image_of(self):
        from core.artifacts import item_images
        return item_images(self.path)

    def image(self, item: int) -> torch.Tensor:
        """Item `item` of the artifacts as the model sees it: 3×H×W float in [0, 1] (core.artifacts.item_images,
        the one reader of a run's item images)."""
        return torch.as_tensor(self._image_of(int(item)))

    def annotation(self, item: int) -> dict:
        """The data set's annotation of an item (shapes: its target mask, distractors, attributes)."""
        dataset, index = self._dataset(item)
        return dataset.annotation(index)

    def neighbours(self, item: int, k: int = 1) -> np.ndarray:
        """The k most similar other items by the stored embeddings, best first (ties: lower id first)."""
        sims = self.embeddings @ self.embeddings[int(item)]
        sims[int(item)] = -np.inf
        return np.argsort(-sims, kind="stable")[:k]

    def nearest_true_match(self, item: int, besides: int | None = None) -> int | None:
        """The most similar other item of the same class (other than `besides`), or None when there is none."""
        same = (self.labels == self.labels[int(item)]) & (np.arange(len(self.labels)) != int(item))
        if besides is not None:
            same[int(besides)] = False
        ids = np.flatnonzero(same)
        return int(ids[np.argmax(self.embeddings[ids] @ self.embeddings[int(item)])]) if len(ids) else None
