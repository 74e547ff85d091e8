"""`Embedder`: backbone stages (+ inserted blocks) -> head. `forward` embeds, `explain` shows why."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from core.config import ModelConfig
from core.mode import evaluating
from core.models import backbones as _backbones  # noqa: F401  (registers backbones)
from core.models import blocks as _blocks  # noqa: F401  (registers blocks)
from core.models import heads as _heads  # noqa: F401  (registers heads)
from core.models.backbones import Backbone, batchnorm_layers, freeze_batchnorm
from core.models.cross_attention import build_cia
from core.models.heads.base import Head, HeadOutput
from core.registry import BACKBONES, BLOCKS, HEADS


@dataclass
class EmbeddingAndMaps:
    """What `Embedder.explain` returns for a batch, as torch tensors: the embeddings and every named map of the
    head and the blocks. The explainers of `core.explain` turn it into an `Explanation` (numpy, per image)."""
    embedding: torch.Tensor                                      # B×D
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> B×K×h×w
    groups: list[slice] = field(default_factory=list)            # embedding dims of each group/subspace
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # non-spatial outputs (e.g. attributes)


class Embedder(nn.Module):
    def __init__(self, backbone: Backbone, head: Head, feature_stage: str,
                 blocks: dict[str, list[nn.Module]] | None = None, frozen_bn: bool = False,
                 freeze_backbone: bool = False):
        super().__init__()
        if feature_stage not in backbone.stage_names:
            raise ValueError(f"unknown stage {feature_stage!r}; stages: {', '.join(backbone.stage_names)}")
        self.backbone, self.head, self.feature_stage = backbone, head, feature_stage
        self.stage_order = backbone.stage_names[: backbone.stage_names.index(feature_stage) + 1]
        self.blocks = nn.ModuleDict({stage: nn.ModuleList(mods) for stage, mods in (blocks or {}).items()})
        for stage in self.blocks:
            if stage not in self.stage_order:
                raise ValueError(f"block placed after stage {stage!r}, which is not before the feature stage "
                                 f"{feature_stage!r} (stages used: {', '.join(self.stage_order)})")
        self.frozen_bn, self.freeze_backbone = frozen_bn, freeze_backbone
        # training-only cross-image attention branch (CIA); never called by forward()/explain()
        self.cia: nn.Module | None = None
        if frozen_bn:
            freeze_batchnorm(backbone)
        if freeze_backbone:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:  # a frozen backbone is a fixed function, as at test time (BN, drop-connect)
            self.backbone.eval()
        elif self.frozen_bn:  # frozen BN stays in eval mode through .train()
            for bn in batchnorm_layers(self.backbone):
                bn.eval()
        return self

    def forward_features(self, x: torch.Tensor, return_maps: bool = False, after: str | None = None):
        """Pixels in [0, 1], B×3×H×W -> features B×C×h×w at the feature stage.

        With `return_maps`, (features, maps): the maps every block returns (blocks take `return_maps` and
        then give (output, {name: B×K×h×w})). A name two blocks share gets "@stage" on the later one.
        With `after` (a stage name), x is that stage's output instead of pixels (e.g. cached features of a
        frozen backbone): the blocks placed after it and the later stages run."""
        if after is None:
            x = self.backbone.normalize(x)
        first = 0 if after is None else self.stage_order.index(after)
        maps: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.stage_order[first:]):
            if after is None or i > 0:
                x = self.backbone.stages[stage](x)
            for block in self.blocks[stage] if stage in self.blocks else ():
                if not return_maps:
                    x = block(x)
                    continue
                x, block_maps = block(x, return_maps=True)
                maps.update({(f"{k}@{stage}" if k in maps else k): v for k, v in block_maps.items()})
        return (x, maps) if return_maps else x

    def forward_head(self, features: torch.Tensor) -> HeadOutput:
        return self.head(features)

    def forward(self, x: torch.Tensor, with_features: bool = False, after: str | None = None):
        """Embedding B×D; with `with_features`, (HeadOutput, features) for training losses. `after`: see
        `forward_features`."""
        features = self.forward_features(x, after=after)
        out = self.forward_head(features)
        return (out, features) if with_features else out.embedding

    @torch.no_grad()
    def explain(self, x: torch.Tensor) -> EmbeddingAndMaps:
        """Embedding plus every named map of the head and the blocks (computed in eval mode)."""
        with evaluating(self):
            features, block_maps = self.forward_features(x, return_maps=True)  # returned, never stored
            out = self.forward_head(features)
            maps = {**out.maps, **block_maps}
            return EmbeddingAndMaps(out.embedding, maps, self.head.groups, dict(out.extras))

    def block_modules(self) -> list[nn.Module]:
        return [block for mods in self.blocks.values() for block in mods]

    @property
    def feature_channels(self) -> int:
        return self.backbone.channels[self.feature_stage]


def build_model(cfg: ModelConfig, num_classes: int | None = None) -> Embedder:
    """Model from its config. `num_classes`: train classes (for heads/losses with per-class state)."""
    if cfg.user_model is not None:  # e.g. such a run's config.json given to `python -m core train`
        raise ValueError("model.user_model is a researcher's own network (python -m core import-model): MetricLens "
                         "explains it (core.checkpoint.load_run) but does not build or train it from a config")
    backbone = BACKBONES.get(cfg.backbone)(pretrained=cfg.pretrained)
    stage = cfg.stage or backbone.stage_names[-1]
    if stage not in backbone.channels:
        raise ValueError(f"model.stage {stage!r} is not a stage of {cfg.backbone}; "
                         f"choose one of {', '.join(backbone.stage_names)}")
    blocks: dict[str, list[nn.Module]] = {}
    for spec in cfg.blocks:
        if spec.after not in backbone.channels:
            raise ValueError(f"block {spec.name!r}: stage {spec.after!r} is not a stage of {cfg.backbone}; "
                             f"choose one of {', '.join(backbone.stage_names)}")
        block = BLOCKS.build(spec.name, backbone.channels[spec.after], name=f"{spec.name}_{spec.after}",
                             config_key="model.blocks[].args", **spec.args)
        blocks.setdefault(spec.after, []).append(block)
    head = HEADS.build(cfg.head, backbone.channels[stage], cfg.embed_dim, num_classes=num_classes,
                       config_key="model.head_args", **cfg.head_args)
    model = Embedder(backbone, head, stage, blocks, frozen_bn=cfg.frozen_bn, freeze_backbone=cfg.freeze_backbone)
    if cfg.cia is not None:
        model.cia = build_cia(cfg.cia, embed_dim=head.out_dim, feature_channels=backbone.channels[stage])
    return model
