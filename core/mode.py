"""`evaluating(model)`: eval mode for a block of code, the previous mode restored even on an error."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(model: nn.Module):
    """`with evaluating(model):` runs in eval mode (dropout off, BatchNorm statistics frozen) and gives
    the model back in the mode it had, so a caller mid-training keeps training."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
