"""Compressed self-attention (CSA, Chen et al., AAAI 2020) and full non-local self-attention.

No official code exists; this is the reconstruction of methods.md §3.1 (🧠/⚠️ there). Per channel
group g (G groups of c = C/G channels, c' = c/reduction), with M ≪ N = h·w base vectors:

    S_g  B×M×N  assignment of positions to base vectors (rows sum to 1 over positions)
    b_g = X_g S_gᵀ                         base vectors (weighted means), c×M
    A_g = softmax_N(θ(b_g)ᵀ φ(X_g) / √c')  base attention maps, M×N
    O_g = v(X_g) A_gᵀ                      elementary outputs, c'×M
    W_g  M×N adaptive weights: softmax_M(φ(b_g)ᵀ θ(X_g) / √c')  (weights="sim", default)
                               or S_g renormalised over M          (weights="assign")
    Y_g = O_g W_g                          so Y_g[:, i] = Σ_j Â[i, j] v(x_j), Â = W_gᵀ A_g (never built)
    Z = X + BN(Conv1x1(concat_g Y_g)),     BN γ = 0 at init: the block starts as the identity.

θ, φ, v are grouped 1×1 convolutions (with bias, as in non-local blocks); θ(b) = θ(X)Sᵀ exactly
because the rows of S sum to 1. Cost O(N·M·C) instead of O(N²·C).

⚠️AMB choices (constructor args / config keys, methods.md §3.5):
- `base="assign"` (default, recommended): S = softmax_N(W_s X_g), a learned bias-free grouped
  1×1 conv C -> G·M; `"pool"`: adaptive average pooling to an r×(M/r) grid (CSALR-style);
  `"kmeans"`: per-image hard k-means on X_g (`kmeans_iters` Lloyd steps from the pool grid,
  no gradient through the assignment); `"identity"`: S = I (needs M = N), which makes CSA with
  `weights="assign"` exactly full self-attention (the `nonlocal` block) — a test, and a reference;
- `weights="sim"` (default) or `"assign"`;
- defaults G 4, M 8 (`TODO(verify-PDF)` in the brief), reduction 2 (non-local's c/2), scaling
  1/√c' in both softmaxes (the `nonlocal` block uses the same scaling, so the two compare exactly);
- deep supervision (`deep_supervision: true`): GAP -> BN -> Linear(C -> `ds_dim`) -> L2 on the block
  output, trained with the run's DML criterion, weighted by `ds_weight` (pair-based losses only:
  proxy losses are sized for the head's embedding).

Training note: with the zero-initialised gate the attention weights (θ, φ, v, assignment) only get
gradient once BN γ has grown, and at initialisation all base maps are near-uniform. After the short
3-epoch shapes runs of benchmarks/heads_accuracy the gate is still small (|γ| ≈ 0.004) and the base
maps of a group differ by < 1 %, so per-pixel maps barely depend on the query yet; budget longer
training (or a larger lr) before reading CSA maps.

Maps (eval mode only, in `last_maps`): `csa_base` B×(G·M)×h×w (each map sums to 1 over positions)
and `csa_weights` B×(G·M)×h×w (for each position and group, the M weights sum to 1). Keys carry
`map_suffix` (e.g. "@stage3") when a model holds several CSA blocks; look descriptions up by the
part before "@". After `Embedder.explain(x)`, `block.reconstructed_map(row, col)` gives the
attention map of query position (row, col) per group, B×G×h×w (sums to 1 over positions); the
`nonlocal` block offers the same method with its exact N×N attention, for side-by-side views.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.registry import register_block, register_map

register_map("csa_base", "CSA base attention maps: where each of the M base vectors of each channel group "
                         "attends (G·M maps, each a distribution over positions)")
register_map("csa_weights", "CSA adaptive weights: how strongly each position's output draws on each base map "
                            "(G·M maps; at every position the M weights of a group sum to 1)")

_MAX_KEPT_ATTENTION = 2 ** 25  # elements of the N×N attention a `nonlocal` block keeps for inspection


class _GroupedAttention(nn.Module):
    """Shared parts of CSA and non-local: grouped θ/φ/v projections, zero-init residual, deep supervision."""

    def __init__(self, channels: int, name: str = "", groups: int = 4, reduction: int = 2,
                 deep_supervision: bool = False, ds_dim: int = 64, ds_weight: float = 1.0, map_suffix: str = ""):
        super().__init__()
        if channels % groups:
            raise ValueError(f"{name or type(self).__name__}: channels {channels} not divisible by groups {groups}")
        self.name, self.channels, self.groups, self.map_suffix = name, channels, groups, map_suffix
        self.inner = max(1, channels // groups // reduction)               # c'
        width = groups * self.inner
        self.theta = nn.Conv2d(channels, width, 1, groups=groups)
        self.phi = nn.Conv2d(channels, width, 1, groups=groups)
        self.value = nn.Conv2d(channels, width, 1, groups=groups)
        self.out = nn.Conv2d(width, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)                                   # Z = X at initialisation
        self.ds_weight = ds_weight
        self.ds_head = (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(channels),
                                      nn.Linear(channels, ds_dim)) if deep_supervision else None)
        self._ds_embedding: torch.Tensor | None = None
        self.last_maps: dict[str, torch.Tensor] = {}

    def _split(self, t: torch.Tensor) -> torch.Tensor:                  # B×(G·c)×h×w -> B×G×c×N
        return t.reshape(t.size(0), self.groups, -1, t.size(2) * t.size(3))

    def attend(self, x: torch.Tensor) -> torch.Tensor:                  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # B×C×h×w
        b, _, h, w = x.shape
        y = self.attend(x)                                               # B×G×c'×N
        z = x + self.bn(self.out(y.reshape(b, -1, h, w)))
        if self.ds_head is not None and self.training:
            self._ds_embedding = F.normalize(self.ds_head(z), dim=-1)
        return z

    def loss(self, labels: torch.Tensor, criterion) -> dict[str, torch.Tensor]:
        """Deep supervision: the run's criterion on this block's auxiliary embedding (last forward)."""
        emb, self._ds_embedding = self._ds_embedding, None
        if emb is None:
            return {}
        return {f"{self.name or 'block'}_deep_supervision": self.ds_weight * criterion(emb, labels)}

    @staticmethod
    def _grid_index(row: int, col: int, hw: tuple[int, int], image_hw: tuple[int, int] | None) -> int:
        h, w = hw
        if image_hw is not None:                                         # image pixel -> feature cell
            row, col = int(row * h / image_hw[0]), int(col * w / image_hw[1])
        if not (0 <= row < h and 0 <= col < w):
            raise IndexError(f"query position ({row}, {col}) outside the {h}×{w} feature grid")
        return row * w + col


@register_block("csa")
class CompressedSelfAttention2d(_GroupedAttention):
    def __init__(self, channels: int, name: str = "csa", groups: int = 4, num_bases: int = 8, reduction: int = 2,
                 base: str = "assign", weights: str = "sim", kmeans_iters: int = 3, **kwargs):
        super().__init__(channels, name=name, groups=groups, reduction=reduction, **kwargs)
        if base not in ("assign", "pool", "kmeans", "identity"):
            raise ValueError(f"csa base must be assign, pool, kmeans or identity, got {base!r}")
        if weights not in ("sim", "assign"):
            raise ValueError(f"csa weights must be sim or assign, got {weights!r}")
        self.num_bases, self.base, self.weights, self.kmeans_iters = num_bases, base, weights, kmeans_iters
        self.assign = nn.Conv2d(channels, groups * num_bases, 1, groups=groups, bias=False) if base == "assign" else None
        self._pool_cache: dict[tuple, torch.Tensor] = {}
        self._last: tuple[torch.Tensor, torch.Tensor, tuple[int, int]] | None = None

    # ---- S: positions -> base vectors ---------------------------------------------------------
    def _pool_assignment(self, h: int, w: int, device, dtype) -> torch.Tensor:
        """M×N averaging weights of adaptive average pooling to an r×(M/r) grid (r the largest divisor ≤ √M)."""
        key = (h, w, device, dtype)
        if key not in self._pool_cache:
            m = self.num_bases
            r = max(d for d in range(1, int(math.isqrt(m)) + 1) if m % d == 0)
            basis = torch.eye(h * w, device=device, dtype=dtype).view(h * w, 1, h, w)
            self._pool_cache[key] = F.adaptive_avg_pool2d(basis, (r, m // r)).view(h * w, m).T.contiguous()
        return self._pool_cache[key]

    def assignment(self, x: torch.Tensor) -> torch.Tensor:
        """S: B×G×M×N, each row a distribution over positions."""
        b, c, h, w = x.shape
        n, g, m = h * w, self.groups, self.num_bases
        if self.base == "assign":
            return self._split(self.assign(x)).softmax(-1)
        if self.base == "identity":
            if m != n:
                raise ValueError(f"csa base='identity' needs num_bases == h·w ({n}), got {m}")
            return torch.eye(n, device=x.device, dtype=x.dtype).expand(b, g, n, n)
        pool = self._pool_assignment(h, w, x.device, x.dtype).expand(b, g, m, n)
        if self.base == "pool":
            return pool
        with torch.no_grad():                                            # kmeans: hard Lloyd steps per image
            feats = self._split(x).detach()                              # B×G×c×N
            hard = pool
            for _ in range(self.kmeans_iters):
                centers = torch.einsum("bgcn,bgmn->bgcm", feats, hard)
                dist = (centers.square().sum(2)[..., None] - 2 * torch.einsum("bgcm,bgcn->bgmn", centers, feats))
                onehot = F.one_hot(dist.argmin(2), m).transpose(-1, -2).to(x.dtype)   # B×G×M×N
                size = onehot.sum(-1, keepdim=True)
                hard = torch.where(size > 0, onehot / size.clamp_min(1), pool)       # empty cluster: keep its cell
            return hard

    # ---- attention --------------------------------------------------------------------------
    def attend(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self._split(self.theta(x)), self._split(self.phi(x)), self._split(self.value(x))  # B×G×c'×N
        s = self.assignment(x).to(q.dtype)                                # B×G×M×N
        scale = 1.0 / math.sqrt(self.inner)
        q_base = torch.einsum("bgcn,bgmn->bgcm", q, s)                    # θ(b) = θ(X)Sᵀ
        attn = (torch.einsum("bgcm,bgcn->bgmn", q_base, k) * scale).softmax(-1)   # A: B×G×M×N
        elementary = torch.einsum("bgcn,bgmn->bgcm", v, attn)             # O: B×G×c'×M
        if self.weights == "sim":
            k_base = torch.einsum("bgcn,bgmn->bgcm", k, s)                # φ(b)
            mix = (torch.einsum("bgcm,bgcn->bgmn", k_base, q) * scale).softmax(2)   # W: B×G×M×N
        else:
            mix = s / s.sum(2, keepdim=True).clamp_min(1e-12)
        if not self.training:
            gm = self.groups * attn.size(2)
            self._last = (attn.detach(), mix.detach(), (h, w))
            self.last_maps = {f"csa_base{self.map_suffix}": attn.detach().reshape(b, gm, h, w),
                              f"csa_weights{self.map_suffix}": mix.detach().reshape(b, gm, h, w)}
        return torch.einsum("bgcm,bgmn->bgcn", elementary, mix)           # Y: B×G×c'×N

    def reconstructed_map(self, row: int, col: int, image_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Attention of query position (row, col) from the last eval forward: Σ_m W[m, i]·A[m], B×G×h×w.

        (row, col) are feature-grid coordinates, or image pixels when `image_hw` (H, W) is given."""
        if self._last is None:
            raise RuntimeError(f"{self.name}: no maps yet; run the model in eval mode (Embedder.explain) first")
        attn, mix, (h, w) = self._last
        i = self._grid_index(row, col, (h, w), image_hw)
        return torch.einsum("bgm,bgmn->bgn", mix[..., i], attn).reshape(attn.size(0), self.groups, h, w)


@register_block("nonlocal")
class NonLocal2d(_GroupedAttention):
    """Full N×N self-attention with the same grouping, projections, scaling and residual as CSA."""

    def __init__(self, channels: int, name: str = "nonlocal", groups: int = 1, reduction: int = 2, **kwargs):
        super().__init__(channels, name=name, groups=groups, reduction=reduction, **kwargs)
        self._last: tuple[torch.Tensor, tuple[int, int]] | None = None

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self._split(self.theta(x)), self._split(self.phi(x)), self._split(self.value(x))
        attn = (torch.einsum("bgci,bgcj->bgij", q, k) / math.sqrt(self.inner)).softmax(-1)  # B×G×N×N
        if not self.training:
            self._last = (attn.detach(), (h, w)) if attn.numel() <= _MAX_KEPT_ATTENTION else None
        return torch.einsum("bgij,bgcj->bgci", attn, v)

    def reconstructed_map(self, row: int, col: int, image_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Exact attention row of query position (row, col) from the last eval forward, B×G×h×w."""
        if self._last is None:
            raise RuntimeError(f"{self.name}: no attention kept; run a (small) eval forward first")
        attn, (h, w) = self._last
        i = self._grid_index(row, col, (h, w), image_hw)
        return attn[:, :, i].reshape(attn.size(0), self.groups, h, w)
