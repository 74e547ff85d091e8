"""Training on cached features of a frozen backbone: where the model is cut, the cache, and what runs from the cut.

With `model.freeze_backbone` the backbone gives the same features in every epoch, so (`train.feature_cache:
auto`) the trainer computes them once per data set (`core.data.features`: float16 files on disk, memory-mapped)
and trains the head, projection, blocks and loss on them; validation, the test embeddings and the frozen
network's reference scores come from the same files. The cut is the feature stage, or the stage before the
first block placed inside the backbone (CSA after stage5: stage5's output is cached, and the block and the later
stages run in every step, which costs about as much as the rest of the backbone's forward and backward).
`frozen_backbone_overrides` is the recipe that keeps every step cheap: the backbone frozen and every block moved
onto the feature stage's output, so all heads on one folder share one cache.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging

import torch
import torch.nn.functional as F
from torch import nn

from core.backbone_weights import weights_digest
from core.config import RunConfig
from core.data import build_transform
from core.data.features import FeatureSpec, cached_feature_splits

log = logging.getLogger("core.train")  # the trainer's one log

FEATURE_CACHE = ("auto", "never")


def uses_feature_cache(cfg: RunConfig, splits) -> bool:
    """`train.feature_cache`: auto (whenever the backbone is frozen and the images are files) | never."""
    if cfg.train.feature_cache not in FEATURE_CACHE:
        raise ValueError(f"train.feature_cache={cfg.train.feature_cache!r}; use {' or '.join(FEATURE_CACHE)}")
    if cfg.train.cached_views < 1:
        raise ValueError(f"train.cached_views={cfg.train.cached_views} must be 1 or more")
    return (cfg.train.feature_cache == "auto" and cfg.model.freeze_backbone
            and hasattr(splits.train, "paths"))


def cut_stage(model) -> str:
    """The stage whose output is cached: the one before the first block inside the backbone, else the feature stage."""
    return next((stage for stage in model.stage_order if stage in model.blocks and len(model.blocks[stage])),
                model.feature_stage)


def frozen_backbone_overrides(cfg: RunConfig, move_blocks: bool = True) -> list[str]:
    """The frozen-backbone recipe for `cfg` (`python -m core train --frozen-backbone`, the Train page's CPU
    default): the backbone frozen, every block moved onto the last stage's output, where the heads pool, and a
    PCA start of the projection taken uncentred, so that the start ranks neighbours as the frozen network it is
    scored against does. `move_blocks=False` keeps blocks where the config puts them (the stage before is
    cached and the later frozen stages run in every step: slower steps, but a block on fewer channels, so a
    run small enough to ship)."""
    out = ["model.freeze_backbone=true"]
    import core.models.heads  # noqa: F401  (registers every head)
    from core.registry import HEADS

    if cfg.model.projection_init == "pca" and HEADS.get(cfg.model.head).uncentred_start:
        out.append("model.projection_init=uncentred_pca")
    if cfg.model.blocks and move_blocks:
        from core.models.embedder import build_model

        last = cfg.model.stage or build_model(dataclasses.replace(cfg.model, blocks=[], pretrained=False)).feature_stage
        moved = [{**dataclasses.asdict(b), "after": last} for b in cfg.model.blocks]
        if any(b.after != last for b in cfg.model.blocks):
            out.append("model.blocks=" + json.dumps(moved))
    return out


class FromCut(nn.Module):
    """The model from the cut on: items are cached features of stage `cut` instead of pixels."""

    def __init__(self, model, cut: str):
        super().__init__()
        self.model, self.cut = model, cut

    def forward(self, x: torch.Tensor, with_features: bool = False):
        return self.model(x, with_features=with_features, after=self.cut)


class FrozenNetwork(nn.Module):
    """The frozen network itself, the reference a trained head must beat: the backbone alone (no block) from the
    cut to the feature stage, global average pooling, L2 normalisation (configs/real_frozen.yaml's embedding)."""

    def __init__(self, model, cut: str):
        super().__init__()
        self.backbone, self.cut = model.backbone, cut
        order = model.stage_order
        self.rest = order[order.index(cut) + 1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.rest:
            x = self.backbone.stages[stage](x)
        return F.normalize(x.float().mean((2, 3)), dim=-1)


def cache(cfg: RunConfig, model, splits, device: torch.device, progress=None):
    """(splits as cached features, the cut, what was done per view): the backbone's features up to the cut,
    computed once (in eval mode) or read back. A run that trains nothing (the frozen reference) only reads a
    cache that exists (else (None, cut, {}): it embeds its test images directly, which costs less than caching
    every image)."""
    cut = cut_stage(model)
    spec = FeatureSpec(backbone=cfg.model.backbone, weights=weights_digest(model.backbone), layer=cut,
                       image_size=cfg.data.image_size, resize=cfg.data.resize)
    # a copy of the stages up to the cut, in eval mode and channels-last (faster on a CPU, e.g. for
    # EfficientNet-Lite0's depthwise convolutions); the model itself is left as it is
    stages = [model.backbone.stages[s] for s in model.stage_order[: model.stage_order.index(cut) + 1]]
    encoder = copy.deepcopy(nn.Sequential(*stages)).to(device, memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def encode(x: torch.Tensor) -> torch.Tensor:
        x = model.backbone.normalize(x.to(device)).contiguous(memory_format=torch.channels_last)
        return encoder(x).contiguous()

    cached, done = cached_feature_splits(splits, spec, cfg.train.cached_views, encode,
                                         build_transform(cfg.data, train=False), cfg.train.num_workers, progress,
                                         compute=cfg.train.epochs > 0)
    return cached, cut, done


def describe(cfg: RunConfig, info: dict) -> None:
    """Say in the log what the run trains on, and whether it augments."""
    t = cfg.train
    log.info("frozen backbone: training on its %s features, cached on disk (%s; %.0f s)", info["layer"],
             ", ".join(f"view {v + 1}: {how}" for v, how in info["files"].items()), info["seconds"])
    if t.cached_views > 1:
        log.info("augmentation: each epoch sees every train image in one of its %d cached views (the image, its "
                 "mirror%s)", t.cached_views, ", random crops" if t.cached_views > 2 else "")
    elif cfg.data.augment and t.epochs > 0:
        log.info("augmentation is off: every epoch sees the cached features of each train image as tested "
                 "(train.cached_views=2 adds its mirror image)")
