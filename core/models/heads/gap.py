"""Baseline: global average (optionally + max) pooling -> linear -> L2 norm."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from core.models.heads.base import Head, HeadOutput
from core.registry import register_head


@register_head("gap")
class GAPHead(Head):
    def __init__(self, in_channels: int, embed_dim: int, num_classes=None, add_max: bool = False):
        super().__init__(in_channels, embed_dim, num_classes)
        self.add_max = add_max
        # embed_dim 0: keep the pooled features as they are (frozen-backbone baselines)
        self.proj = nn.Linear(in_channels, embed_dim) if embed_dim else nn.Identity()
        self.out_dim = embed_dim or in_channels

    def input_projection(self):
        return self.proj if isinstance(self.proj, nn.Linear) else None

    def projection_input(self, features):
        return features.mean((2, 3)) + (features.amax((2, 3)) if self.add_max else 0)

    def forward(self, features):                       # B×C×h×w
        return HeadOutput(F.normalize(self.proj(self.projection_input(features)), dim=-1))
