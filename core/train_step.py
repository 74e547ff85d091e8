"""The forward of one training step: the model and every loss term together, the module DDP wraps."""
from __future__ import annotations

import torch

from core.losses import DMLCriterion, cia_criterion
from core.models.embedder import Embedder


class TrainingStep(torch.nn.Module):
    """The forward of one training step, model and loss terms together. DistributedDataParallel wraps this,
    not the bare model, so that it sees every parameter a step uses, also those used only after the
    embedding: head losses (GSP's ZSR class embeddings, per-group margins), CSA's deep supervision, the
    CIA branch and learnable loss parameters (proxies)."""

    def __init__(self, model: Embedder, criterion: DMLCriterion, after: str | None = None):
        super().__init__()
        self.model, self.criterion, self.after = model, criterion, after  # after: inputs are that stage's features
        cia = model.cia
        # the CIA branch gets its criterion injected (its own loss/miner if configured, else this one). It is
        # kept out of the module tree: the branch scores with copies of it, so no parameter of it is used here
        # (DDP would refuse unused parameters)
        object.__setattr__(self, "cia_criterion", None if cia is None else cia_criterion(
            criterion, cia.loss_name, cia.loss_args, cia.miner_name, cia.embed_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out, features = self.model(x, with_features=True, after=self.after)
        terms = self.model.head.loss(out, y, self.criterion)
        for block in self.model.block_modules():  # e.g. CSA deep-supervision heads
            if hasattr(block, "loss"):
                terms.update(block.loss(y, self.criterion))
        if self.model.cia is not None:  # training-only cross-image attention branch
            terms.update(self.model.cia.loss(out, features, y, self.cia_criterion))
        return terms
