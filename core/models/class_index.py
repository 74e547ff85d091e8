"""Dataset labels -> rows of per-class parameters (learnable margin β, ZSR class embeddings).

Data sets hand out *global* class ids that are not contiguous inside the train split (shapes uses
shape·8 + colour; folder data sets lose the validation classes), while per-class parameters have
exactly `num_classes` rows. `ClassIndex` keeps the label of every row in a buffer, so the mapping
is saved with the weights and is the same after a reload or a resume.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ClassIndex(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.register_buffer("labels", torch.full((self.num_classes,), -1, dtype=torch.long))

    @torch.no_grad()
    def fit(self, labels) -> None:
        """Rows = the sorted unique train labels (called from a head's `on_train_start`)."""
        classes = np.unique(np.asarray(labels))
        if len(classes) > self.num_classes:
            raise ValueError(f"{len(classes)} train classes but the head was built for {self.num_classes}")
        self.labels.fill_(-1)
        self.labels[: len(classes)] = torch.as_tensor(classes, dtype=torch.long, device=self.labels.device)

    @torch.no_grad()
    def _register(self, unknown: torch.Tensor) -> None:
        free = (self.labels < 0).nonzero().flatten()
        if len(unknown) > len(free):
            raise ValueError(f"more than {self.num_classes} distinct training labels reached a head built for "
                             f"{self.num_classes} classes; build it with the number of train classes")
        self.labels[free[: len(unknown)]] = unknown

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Row index of each label (labels never seen before take the next free rows)."""
        labels = labels.to(self.labels.device).long()
        match = labels[:, None] == self.labels[None, :]            # B×C
        found = match.any(1)
        if not bool(found.all()):
            self._register(torch.unique(labels[~found]))
            match = labels[:, None] == self.labels[None, :]
        return match.float().argmax(1)
