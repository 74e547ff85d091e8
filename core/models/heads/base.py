"""The head interface: features B×C×h×w -> `HeadOutput` (embedding, named maps, loss extras)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class HeadOutput:
    embedding: torch.Tensor                                      # B×D, normalised as the method retrieves
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> B×K×h×w (see registry.MAP_DESCRIPTIONS)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # non-spatial tensors (e.g. GSP attributes)


class Head(nn.Module):
    """Base class of pooling heads.

    Subclasses set `out_dim`, implement `forward`, and may override:
      - `groups`: which embedding dims form each group/subspace (similarity splits into per-group terms);
      - `loss`: the head's training objective given the DML criterion (default: criterion on the embedding);
      - training hooks `on_train_start / on_epoch_start / on_epoch_end` (e.g. DSL's learner growth);
      - batch schedule `epoch_batches` + `on_batch_start`: the head chooses the epoch's batches and
        gets each batch's tag before its forward pass (e.g. DSL's per-cluster batches);
      - `extra_state / load_extra_state`: JSON state saved next to the weights (e.g. DSL's learners);
      - `param_groups`: optimiser groups with their own `lr_scale` (× the head lr) / `weight_decay`
        (e.g. DGML's β at 5× the lr); parameters not listed stay in the trainer's head group.

    The hook contract: every hook receives a `core.train_context.TrainContext` (`ctx`), never the Trainer.
    It carries the train labels (global class ids, train-set order), seed, epochs, batch size and
    m_per_class, device, the epoch being run, the optimiser (e.g. to move or reset Adam moments of
    re-initialised rows), the trainer's loss (to refuse kinds the head cannot use), `embed_train_set(pool)`
    (every train item, test-time transform, eval mode) and `write_artifact(name, obj)` / `read_artifact(name)`
    (atomic files in the run directory, rank 0 only; a head never writes files itself). Order per run:
    `on_train_start(ctx)`; per epoch `on_epoch_start(ctx, epoch)`, `epoch_batches(ctx, epoch)`, then per
    batch `on_batch_start(ctx, tag)` inside `Trainer.step`, and `on_epoch_end(ctx, epoch, val_metrics)`
    after validation (metrics empty on epochs without one). Hooks run on every rank; they may be called
    with `ctx=None` by tests that drive a head alone, where nothing needs the context.
    """

    # `projection_init: uncentred_pca` suits a head whose embedding is normalised as a whole; a head that
    # normalises slices of its projection on their own (DSL's learners) keeps the centred start instead
    uncentred_start = True

    out_dim: int

    def __init__(self, in_channels: int, embed_dim: int, num_classes: int | None = None):
        super().__init__()
        self.in_channels, self.embed_dim, self.num_classes = in_channels, embed_dim, num_classes

    @property
    def groups(self) -> list[slice]:
        return [slice(0, self.out_dim)]

    def forward(self, features: torch.Tensor) -> HeadOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, out: HeadOutput, labels: torch.Tensor, criterion) -> dict[str, torch.Tensor]:
        return {"dml": criterion(out.embedding, labels)}

    # ---- training hooks (no-ops by default); ctx: core.train_context.TrainContext ----
    def on_train_start(self, ctx) -> None: ...
    def on_epoch_start(self, ctx, epoch: int) -> None: ...
    def on_epoch_end(self, ctx, epoch: int, metrics: dict) -> None: ...

    # ---- batch schedule (default: the trainer's class-balanced sampler, untagged batches) ----
    def epoch_batches(self, ctx, epoch: int) -> list[tuple[list[int], Any]] | None:
        """The epoch's batches as `(train-set indices, tag)` pairs, or None for the trainer's default
        sampler. Called after `on_epoch_start`; the trainer passes each tag to `on_batch_start`."""
        return None

    def on_batch_start(self, ctx, tag: Any) -> None: ...

    def param_groups(self) -> list[dict]:
        """[{"params": [...], "lr_scale": float (default 1), "weight_decay": float | None (trainer's)}]."""
        return []

    def input_projection(self) -> nn.Linear | nn.Conv2d | None:
        """The new layer that maps backbone channels into the embedding space (a Linear on pooled features or
        a 1×1 Conv2d per position), which `model.projection_init: pca` starts from the principal directions of
        the train features; None: the head has none (e.g. GAP with embed_dim 0)."""
        return None

    def projection_input(self, features: torch.Tensor) -> torch.Tensor:
        """B×C: what `input_projection` sees, pooled per image (for attention pooling: at uniform attention,
        i.e. the average), whose principal directions and mean start the projection."""
        return features.mean((2, 3))

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None: ...


@torch.no_grad()
def pca_init_(layer: nn.Linear | nn.Conv2d, pooled: np.ndarray, centre: bool = True) -> int:
    """Start `layer` (Linear C→D, or 1×1 Conv2d C→D) as the orthonormal projection of the features onto the D
    leading principal directions of `pooled` (N×C, the backbone's average-pooled train features), centred by
    its bias where it has one. With a pretrained backbone a random projection starts below the frozen network
    it projects; this start keeps the directions in which the train images differ most, so the run's
    starting point (a best-epoch candidate) scores about like the frozen network. Rows beyond the data's
    rank (fewer train images than D) keep their random init. Returns the number of rows set.

    `centre=False` takes the leading directions of the uncentred features (their mean among them) and leaves
    the bias at zero: the start's cosine similarities are then those of the frozen network restricted to D
    dimensions. The frozen network's own cosine is uncentred, and centring changes which neighbour is nearest
    (the frozen-backbone recipe's R@1 start; see BENCHMARKS.md, real data on cached features)."""
    x = np.asarray(pooled, dtype=np.float64)
    w = layer.weight.view(layer.weight.shape[0], -1)        # D×C (a view: the 1×1 conv is written in place)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"projection takes {w.shape[1]} channels, the pooled features have {x.shape[1]}")
    mean = x.mean(0) if centre else np.zeros(x.shape[1])
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(w.shape[0], vt.shape[0])
    w[:k] = torch.from_numpy(vt[:k]).to(w)
    if layer.bias is not None:
        layer.bias[:k] = -(w[:k] @ torch.from_numpy(mean).to(w))
    return k
