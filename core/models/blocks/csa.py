"""Compressed self-attention (CSA, Chen et al., AAAI 2020), rebuilt after the first author's code.

Follows `czyczyyzc/Compressed_Self-Attention` at eaafd9d (2021-01-02), `PCB_CSA/reid/models/reSAnet.py`:
class `SelfAttn2` (the block) and `ResNet` (its placement and deep-supervision side branches). Written
from reading that code, none copied (their last revision, b163238, unchanged at HEAD). Measured against it by
`benchmarks/fidelity/csa.py` (copied weights, identical inputs, main block and side branch, at the shipped
run's grid and at theirs, in float64 and float32): outputs, base maps, adaptive weights and gradients are the
official computation to float rounding (benchmarks/results/fidelity_csa.md).

The block, for X: B×C×h×w (N = h·w positions), G groups of M base vectors each:

    q   = unit(Conv1x1_q(X))                 B×C/4×N, one query conv shared by all groups, L2 over channels
    w   = unit(bases)                        (G·M)×C/4, learned base vectors (orthogonal init)
    L   = 14 · wᵀq                           B×G×M×N, one cosine × scale logit matrix
    A   = softmax over positions (L)         base attention maps: where base vector m of group g looks
    W   = softmax over bases (L)             adaptive weights: how position n mixes its group's M outputs
    O_g = V_g Aᵀ_g                           V = Conv1x1_v(X), C -> C, split into G groups of C/G channels
    Y_g = O_g W_g                            so Y_g[:, n] = Σ_j (Σ_m W[m, n] A[m, j]) V_g[:, j]
    Z   = X + γ · Conv1x1_out(Y)             γ a scalar, 0 at init: the block starts as the identity.

A and W come from the same logits (tied): a position looks where the bases it resembles look. Cost
O(N·M·C) instead of O(N²·C). Deep supervision (`deep_supervision`, on by default as in their network)
adds a *separate* CSA side branch on the block's input, without residual or γ (their `SelfAttn2(C)` with
gamma=None, i.e. Conv1x1_out(Y) alone), followed by GAP -> Linear(C -> `ds_dim`, no bias) -> L2 and the
run's DML criterion, weighted by `ds_weight`. Its gradient reaches the backbone below from the first step.
`main_path: false` keeps only the side branch (their layer2/layer3 branches, which have no main block).

Remaining differences from the official code (all measured or by construction):
- their network is a PCB ResNet-50 for person re-ID trained with softmax cross-entropy (6 part classifiers
  + a global one + 3 side-branch classifiers, summed with weight 1 each); ours plugs into any backbone
  before any head and trains every branch with the run's DML loss (pair-based losses: the side embedding
  has `ds_dim` dimensions, so proxy losses sized for the head do not fit);
- their side branches end in a 1×1 conv (C -> 256, no bias) and a linear classifier; ours in a linear map
  to `ds_dim` and L2 normalisation (the DML embedding);
- their optimiser (SGD 0.1, ×0.1 for backbone and attention parameters) is not ours: the run's train config
  applies to the block like to any head parameter;
- their main block sits inside ResNet-50 layer1 (between blocks 1 and 2 in one version, after layer1 in
  the last) with side branches after layers 1–3; here placement is the config's (`after: stage`).

Maps, returned by `forward(x, return_maps=True)` (nothing is stored on the module):
`csa_base` B×(G·M)×h×w (each sums to 1 over positions) and `csa_weights` B×(G·M)×h×w (at every position
the M weights of a group sum to 1). `attention_at(maps, row, col)` gives the attention that one position
effectively uses, Σ_m W[m, n]·A[m], per group (B×G×h×w).

`nonlocal`: the full N×N self-attention, as their `SelfAttn` (the paper's "+SA" baseline), a class of
`reSAnet.py` in their earlier revision 31f17fb only (the last revision keeps `SelfAttn2` alone):
query/key convs C -> C/8, value C -> C, unscaled dot-product softmax, γ residual.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.explain import Explanation, learned_maps, register_explainer
from core.registry import MAP_DESCRIPTIONS, register_block, register_map

register_map("csa_base", "CSA base attention maps: where each of the M base vectors of each channel group "
                         "attends (G·M maps, each a distribution over positions)")
register_map("csa_weights", "CSA adaptive weights: how strongly each position's output draws on each base map "
                            "(G·M maps; at every position the M weights of a group sum to 1)")
register_map("nonlocal_received", "Full self-attention: the attention each position receives, averaged over all "
                                  "query positions (one map, a distribution over positions)")


class CompressedAttention(nn.Module):
    """The CSA operation without residual: Conv1x1_out(Y) and the maps (their `SelfAttn2`, gamma=None)."""

    def __init__(self, channels: int, groups: int, num_bases: int, scale: float):
        super().__init__()
        if channels % 4 or channels % groups:
            raise ValueError(f"csa: channels {channels} must be divisible by 4 (query width C/4) and by groups {groups}")
        self.groups, self.num_bases, self.scale = groups, num_bases, scale
        self.query = nn.Conv2d(channels, channels // 4, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.bases = nn.Parameter(torch.empty(groups * num_bases, channels // 4))
        nn.init.orthogonal_(self.bases)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        g, m = self.groups, self.num_bases
        q = F.normalize(self.query(x).flatten(2), dim=1)                       # B×C'×N
        bases = F.normalize(self.bases, dim=1).view(g, m, -1)                  # G×M×C'
        logits = torch.einsum("gmc,bcn->bgmn", bases, q) * self.scale          # B×G×M×N
        base_maps, weights = logits.softmax(-1), logits.softmax(2)             # over positions | over bases
        v = self.value(x).view(b, g, c // g, h * w)                            # B×G×(C/G)×N
        elementary = torch.einsum("bgcn,bgmn->bgcm", v, base_maps)             # O: B×G×(C/G)×M
        y = torch.einsum("bgcm,bgmn->bgcn", elementary, weights)               # Y: B×G×(C/G)×N
        return self.out(y.reshape(b, c, h, w)), base_maps, weights


@register_block("csa")
class CompressedSelfAttention2d(nn.Module):
    def __init__(self, channels: int, name: str = "csa", groups: int = 2, num_bases: int = 32, scale: float = 14.0,
                 deep_supervision: bool = True, ds_dim: int = 64, ds_weight: float = 1.0, main_path: bool = True):
        super().__init__()
        if not (main_path or deep_supervision):
            raise ValueError(f"{name}: main_path=false needs deep_supervision=true (the block would do nothing)")
        self.name = name
        self.attention = CompressedAttention(channels, groups, num_bases, scale) if main_path else None
        self.gamma = nn.Parameter(torch.zeros(1)) if main_path else None
        self.side = CompressedAttention(channels, groups, num_bases, scale) if deep_supervision else None
        self.side_embed = nn.Linear(channels, ds_dim, bias=False) if deep_supervision else None
        self.ds_weight = ds_weight
        # the side embedding of the last *training* forward, consumed by `loss` in the same step (the trainer's
        # contract: forward, then block.loss). Never set in eval mode, so explanations cannot see it.
        self._ds_embedding: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        """Z (B×C×h×w); with `return_maps`, (Z, {"csa_base", "csa_weights"}) as described in the module doc."""
        if self.side is not None and self.training:
            side = self.side(x)[0]
            self._ds_embedding = F.normalize(self.side_embed(side.mean((2, 3))), dim=-1)
        if self.attention is None:
            return (x, {}) if return_maps else x
        out, base_maps, weights = self.attention(x)
        z = x + self.gamma * out
        if not return_maps:
            return z
        b, _, h, w = x.shape
        return z, {"csa_base": base_maps.reshape(b, -1, h, w), "csa_weights": weights.reshape(b, -1, h, w)}

    def loss(self, labels: torch.Tensor, criterion) -> dict[str, torch.Tensor]:
        """Deep supervision: the run's criterion on the side branch's embedding (last training forward)."""
        emb, self._ds_embedding = self._ds_embedding, None
        if emb is None:
            return {}
        return {f"{self.name}_deep_supervision": self.ds_weight * criterion(emb, labels)}


def attention_at(maps: dict[str, torch.Tensor], row: int, col: int,
                 image_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """The attention position (row, col) effectively uses, Σ_m W[m, n]·A[m], per group: B×G×h×w (sums to 1).

    `maps` as returned by the block (or `Embedder.explain`); (row, col) on the feature grid, or image
    pixels when `image_hw` (H, W) is given. G is read off the weights: a group's M weights sum to 1."""
    base, weights = maps["csa_base"], maps["csa_weights"]
    b, gm, h, w = base.shape
    if image_hw is not None:                                                   # image pixel -> feature cell
        row, col = int(row * h / image_hw[0]), int(col * w / image_hw[1])
    if not (0 <= row < h and 0 <= col < w):
        raise IndexError(f"position ({row}, {col}) outside the {h}×{w} feature grid")
    groups = int(round(float(weights[0, :, row, col].sum())))
    mix = weights[:, :, row, col].reshape(b, groups, gm // groups)             # B×G×M
    return torch.einsum("bgm,bgmhw->bghw", mix, base.reshape(b, groups, gm // groups, h, w))


register_map("csa_position", "CSA per-position attention: what the chosen position effectively attends to, "
                             "Σ_m W[m, n]·A[m] (one map per channel group, each a distribution over positions)")


def _has_csa(model) -> bool:
    return any(isinstance(b, CompressedSelfAttention2d) and b.attention is not None for b in model.block_modules())


@register_explainer("csa_position", kind="position", title="CSA per-position attention", supports=_has_csa)
def position_attention(model, query: torch.Tensor, reference=None, *, row: int, col: int) -> Explanation:
    """What one position of the query (row, col in image pixels) attends to through each CSA block."""
    maps = {name: torch.from_numpy(m)[None] for name, m in learned_maps(model, query).maps.items()}
    out = {}
    for name in maps:
        if name.split("@")[0] == "csa_base":   # a second CSA block's maps carry "@stage"
            own = {"csa_base": maps[name], "csa_weights": maps[name.replace("csa_base", "csa_weights")]}
            out[name.replace("csa_base", "csa_position")] = attention_at(own, row, col, query.shape[-2:])[0].numpy()
    return Explanation(out, descriptions={n: MAP_DESCRIPTIONS["csa_position"] for n in out},
                       notes={"row": row, "col": col})


@register_block("nonlocal")
class NonLocal2d(nn.Module):
    """Full N×N self-attention, as `SelfAttn` of their revision 31f17fb (the "+SA" baseline CSA compresses)."""

    def __init__(self, channels: int, name: str = "nonlocal"):
        super().__init__()
        if channels < 8:
            raise ValueError(f"{name}: needs at least 8 channels (query width C/8), got {channels}")
        self.name = name
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, return_maps: bool = False):
        b, c, h, w = x.shape
        q, k, v = self.query(x).flatten(2), self.key(x).flatten(2), self.value(x).flatten(2)   # B×c×N
        attn = torch.einsum("bci,bcj->bij", q, k).softmax(-1)                   # B×N×N, row i: where i looks
        z = x + self.gamma * torch.einsum("bcj,bij->bci", v, attn).reshape(b, c, h, w)
        if not return_maps:
            return z
        return z, {"nonlocal_received": attn.mean(1).reshape(b, 1, h, w)}
