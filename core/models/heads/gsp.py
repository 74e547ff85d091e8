"""GSP: generalized sum pooling (Gurbuz, Sener, Alatan, ICCV 2023; methods.md §6) + the ZSR loss.

Follows the official code (github.com/yetigurbuz/generalized-sum-pooling): the TF framework for the
defaults, the PyTorch port for `variant="intra_batch"`. Measured against the official PyTorch code on
the same inputs (benchmarks/fidelity/gsp.py; figures in benchmarks/results/fidelity_gsp.md and
benchmarks/fidelity/methods.md): transport plan, keep weights, pooled embedding and implicit gradients,
Lipschitz L2 normalisation, the bounded ZSR loss (also when most true-class probabilities are below 1e-16)
and GeM pooling agree to float rounding, gradients in direction exactly. The TF-only k-center and
max-pool term are checked by hand-worked tests.

Forward (TF framework, the paper's own, is the default `variant="tf"`):
    Z = Conv1x1(C -> D, no bias, Glorot)(X)                       B×D×h×w, n = h·w
    c_ki = ‖ Ω̄_k − Z̄_i ‖₂ (normalised as TF, see below; Euclidean)  B×m×h×w, m learnable prototypes Ω
    [ρ; π] = entropy-smoothed partial OT (μ, γ, T), see core/models/optimal_transport.py
    α_i = (1/n − ρ_i)/μ  (Σ α = 1),   f = Σ_i α_i Z_i,   embedding = f / ‖f‖
    attributes a_k = Σ_i π_ki / μ  (Σ a = 1)
Defaults are the TF experiment configs: μ 0.3, γ 5.0, T 100, m 64; the solver runs in float32
even under autocast, with the analytic implicit-function backward (`grad="unroll"`: autograd
through the iterations instead).

Normalisation: TF `L2Normalization` divides a vector by its norm only when the norm exceeds 1
(`lipschitz_normalize`), for the cost (prototypes and per-position embeddings) and the memory;
`normalization: l2` always divides (what this head did before).

`eval_entropy_weight` (⚠️ extension, not in the paper or either official code; default null = γ): the entropy
weight of the transport outside training (embedding, validation, maps). The entropic smoothing that lets
training reach every position also blurs what the learned prototypes select: on `shapes` the run trained at
γ 5 keeps most positions (far more than μ·n) and puts little of its keep map on the object; the same weights
at a larger γ keep a few and put much more on it, with a better test MAP@R, while training at that γ learned
far worse (`python -m benchmarks.gsp_transport`: benchmarks/results/gsp_transport.md; the training runs in
benchmarks/notes/demo_runs.md, "GSP's keep map and γ").

Prototype initialisation (TF): a memory of `memory_size` (1024) normalised GAP embeddings of Z
is filled during training; until it is full the head pools with GAP (attributes all zero,
`keep` = 1, `prototypes` = 0) exactly as the TF layer does; when it fills, the TF greedy k-center
sets the prototypes once: the first m memory rows are the initial cover, and m rows of the rest are
picked farthest-first (`greedy_k_center_tf`).

Extras of the conventional TF configs (`augment`): "max" adds W·GMP(X) to the pooled vector
(`augment_max_pool`, also during the warm-up), "gem" pools W·GeM_p((nα)⊙X) with a learnable p,
initialised 3 (`use_gemp`).
The memory only fills in training mode (the TF layer also fills it from evaluation batches once
training has started). Memory, fill count and the ready flag are buffers, so they survive
save/load and resume. `memory_size: 0` or `proto_init: random` skips the warm-up (Glorot-random
prototypes).

`variant="intra_batch"` is the PyTorch Intra-Batch port: γ 0.1, Lipschitz-L2 normalisation (divide
only when ‖x‖ > 1), a projection with bias (Kaiming fan-out init, as PT), and GMP pooling
f = W·GMP((nα)⊙X) + b. Its prototype init (k-center over the rows of a randomly initialised
classifier at the first forward) is replaced by the same memory k-center (⚠️ deviation: this code
base has no classifier layer).

ZSR loss (§6.3): learnable class embeddings Y (num_classes×D, He-normal), ridge regression
(λ 0.05) from the attributes of one half of the batch to the class embeddings, predicting the other
half (both ways), softmax over all classes of 9.5·⟨Y_c, ŷ⟩, loss −log(p_y + 1e-16) as both official
codes (bounded by 36.8; `zsr_bounded: false` for plain cross-entropy); total (1 − w)·L_dml + w·L_zsr
with w = 0.1. ⚠️AMB split: `zsr_split="interleave"` (TF: even/odd indices, default) or "halves" (PT).
L_dml is the run's `train.loss`: the shapes_gsp and real_gsp configs use multi-similarity (+ its miner), the loss
of their GAP baselines, so the two compare by pooling alone; the official TF recipe (`sample_runs.sh`,
`--loss=zsr/xbm/original_contrastive`) wraps contrastive loss (margin 0.5: `train.loss=contrastive` here) in a
cross-batch memory (XBM, not implemented here) inside ZSR (⚠️ deviation).

Maps: `keep` B×1×h×w = α·n (1 = the uniform weight of average pooling, 0 = ignored, up to 1/μ =
fully transported), `prototypes` B×m×h×w = π·n (map k sums to n·μ·a_k over positions); extras
`attributes` B×m (sums to 1; zeros during the warm-up).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from core.models.class_index import ClassIndex
from core.models.heads.base import Head, HeadOutput
from core.models.optimal_transport import partial_transport
from core.registry import register_head, register_map

register_map("keep", "GSP pooling weight per position (α·h·w): 1 = average pooling's weight, 0 = ignored "
                     "as nuisance (left as residual mass by the partial transport)")
register_map("prototypes", "GSP transport plan to each learnable prototype (π·h·w): which positions feed "
                           "which prototype ('semantic entity'); map k sums to h·w·μ·attribute_k")
register_map("attributes", "GSP attribute histogram: the share of the transported mass each prototype received "
                           "(sums to 1; all zero while the prototypes warm up)")

VARIANTS = {"tf": dict(entropy_weight=5.0, normalization="lipschitz", pooling="average", bias=False),
            "intra_batch": dict(entropy_weight=0.1, normalization="lipschitz", pooling="max", bias=True)}


def lipschitz_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / max(‖x‖, 1): only vectors longer than 1 are scaled down (the PT port's normalisation)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1.0)


def greedy_k_center_tf(memory: torch.Tensor, k: int) -> torch.Tensor:
    """The TF layer's k-center (`initialize_support_kernel` + `proxy_utils.greedyKCenter`): the first k
    memory rows are the initial cover, and k rows of the rest are picked one by one, each the point
    farthest (squared L2) from everything covered so far; the initial rows themselves are not returned."""
    initial, pool = memory[:k], memory[k:]
    dist = torch.cdist(pool, initial).square().amin(1)
    chosen = []
    for _ in range(k):
        idx = int(dist.argmax())
        chosen.append(idx)
        dist = torch.minimum(dist, (pool - pool[idx]).square().sum(-1))
    return pool[chosen]


def greedy_k_center(points: torch.Tensor, k: int) -> torch.Tensor:
    """k rows of `points` (P×D) by farthest-point selection, starting from the first row (the PyTorch
    port's `init_protos`)."""
    chosen = [0]
    dist = (points - points[0]).square().sum(-1)
    for _ in range(k - 1):
        idx = int(dist.argmax())
        chosen.append(idx)
        dist = torch.minimum(dist, (points - points[idx]).square().sum(-1))
    return points[chosen]


class ZeroShotRegression(nn.Module):
    """ZSR: predict class embeddings from one half's attributes by ridge regression on the other."""

    def __init__(self, num_classes: int, dim: int, ridge: float = 0.05, scale: float = 9.5, split: str = "interleave",
                 bounded: bool = True):
        super().__init__()
        self.bounded = bounded
        if split not in ("interleave", "halves"):
            raise ValueError(f"zsr_split must be 'interleave' or 'halves', got {split!r}")
        self.ridge, self.scale, self.split = ridge, scale, split
        self.class_embeddings = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.kaiming_normal_(self.class_embeddings, mode="fan_out")  # Keras he_normal: std √(2/#classes)
        self.class_index = ClassIndex(num_classes)

    def _predict(self, x_fit, y_fit, x_new):
        gram = x_fit @ x_fit.T + self.ridge * torch.eye(len(x_fit), device=x_fit.device, dtype=x_fit.dtype)
        weights = x_fit.T @ torch.linalg.solve(gram, y_fit)           # m×D: Xᵀ (XXᵀ + λI)⁻¹ Y
        return x_new @ weights

    def forward(self, attributes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b = attributes.size(0)
        if b < 2:
            return attributes.new_zeros(())
        rows = self.class_index(labels)
        x, y = attributes.float(), self.class_embeddings[rows].float()
        if self.split == "interleave":
            one, two = torch.arange(0, b, 2), torch.arange(1, b, 2)
        else:
            one, two = torch.arange(b // 2), torch.arange(b // 2, b)
        one, two = one.to(x.device), two.to(x.device)
        pred = torch.cat([self._predict(x[two], y[two], x[one]), self._predict(x[one], y[one], x[two])])
        logits = self.scale * pred @ self.class_embeddings.float().T  # B×C, plain dot products
        target = torch.cat([rows[one], rows[two]])
        if not self.bounded:
            return F.cross_entropy(logits, target)
        # official (TF and PT `attribute_loss`): −log(p_y + 1e-16), at most 36.8 per sample, and no gradient
        # from samples whose true class is hopeless (p_y ≪ 1e-16), where plain cross-entropy keeps pushing
        p_true = logits.softmax(1).gather(1, target[:, None])[:, 0]
        return -(p_true + 1e-16).log().mean()


@register_head("gsp")
class GSPHead(Head):
    def __init__(self, in_channels: int, embed_dim: int, num_classes: int | None = None,
                 num_prototypes: int = 64, transport_ratio: float = 0.3, entropy_weight: float | None = None,
                 iterations: int = 100, variant: str = "tf", memory_size: int = 1024, proto_init: str = "memory",
                 grad: str = "analytic", zsr_weight: float = 0.1, zsr_ridge: float = 0.05, zsr_scale: float = 9.5,
                 zsr_split: str = "interleave", zsr_bounded: bool = True, normalization: str | None = None, augment: str | None = None,
                 gem_p: float = 3.0, eval_entropy_weight: float | None = None):
        super().__init__(in_channels, embed_dim, num_classes)
        if variant not in VARIANTS:
            raise ValueError(f"gsp variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if proto_init not in ("memory", "random"):
            raise ValueError(f"gsp proto_init must be 'memory' or 'random', got {proto_init!r}")
        if not embed_dim:
            raise ValueError("gsp needs embed_dim > 0 (the 1×1 projection defines the pooled features)")
        if not 0.0 < transport_ratio <= 1.0:
            raise ValueError(f"gsp transport_ratio (μ) must be in (0, 1], got {transport_ratio}")
        spec = VARIANTS[variant]
        normalization = normalization or spec["normalization"]
        if normalization not in ("lipschitz", "l2"):
            raise ValueError(f"gsp normalization must be 'lipschitz' (TF L2Normalization: divide only when the norm "
                             f"exceeds 1) or 'l2' (always divide), got {normalization!r}")
        if augment not in (None, "max", "gem"):
            raise ValueError(f"gsp augment must be null, 'max' (TF augment_max_pool) or 'gem' (TF use_gemp), got {augment!r}")
        self.variant, self.out_dim = variant, embed_dim
        self.mu, self.iterations, self.grad = float(transport_ratio), int(iterations), grad
        self.gamma = float(spec["entropy_weight"] if entropy_weight is None else entropy_weight)
        # ⚠️ extension (not in the paper or its code): a sharper plan outside training; None = the training γ
        self.eval_gamma = self.gamma if eval_entropy_weight is None else float(eval_entropy_weight)
        if self.gamma <= 0 or self.eval_gamma <= 0:
            raise ValueError(f"gsp entropy weights (γ) must be > 0, got {self.gamma} and {self.eval_gamma}")
        self.normalization = normalization
        self.normalize = F.normalize if normalization == "l2" else lipschitz_normalize
        self.augment = augment
        if augment == "gem":  # TF `use_gemp`: learnable power p, initialised 3
            self.gem_p = nn.Parameter(torch.full((), float(gem_p)))
        self.max_pool = spec["pooling"] == "max"
        self.proj = nn.Conv2d(in_channels, embed_dim, 1, bias=spec["bias"])
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, embed_dim))
        if variant == "tf":
            nn.init.xavier_uniform_(self.proj.weight)
            nn.init.xavier_uniform_(self.prototypes)
        else:
            nn.init.kaiming_normal_(self.proj.weight, mode="fan_out")
            nn.init.zeros_(self.proj.bias)
            nn.init.kaiming_normal_(self.prototypes, mode="fan_out")
        use_memory = proto_init == "memory" and memory_size > num_prototypes
        self.register_buffer("memory", torch.zeros(memory_size if use_memory else 0, embed_dim))
        self.register_buffer("memory_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("ready", torch.tensor(0 if use_memory else 1, dtype=torch.long))
        self.zsr_weight = float(zsr_weight) if num_classes else 0.0
        self.zsr = (ZeroShotRegression(num_classes, embed_dim, zsr_ridge, zsr_scale, zsr_split, zsr_bounded)
                    if self.zsr_weight > 0 else None)

    # ---- prototypes ------------------------------------------------------------------------------
    @torch.no_grad()
    def _remember(self, pooled: torch.Tensor) -> None:
        """Store normalised GAP embeddings; when the memory is full, k-center the prototypes once."""
        emb = self.normalize(pooled.detach().float(), dim=-1)
        size, start = len(self.memory), int(self.memory_filled)
        take = min(len(emb), size)
        start = min(start, size - take)       # the last batch overwrites the tail, as in TF
        self.memory[start:start + take] = emb[:take].to(self.memory.dtype)
        self.memory_filled += take
        if int(self.memory_filled) >= size:
            k_center = greedy_k_center_tf if self.variant == "tf" else greedy_k_center
            self.prototypes.data.copy_(k_center(self.memory.float(), len(self.prototypes)))
            self.ready.fill_(1)

    # ---- forward ---------------------------------------------------------------------------------
    def _pool(self, features: torch.Tensor, z: torch.Tensor, keep: torch.Tensor, warm_up: bool = False) -> torch.Tensor:
        """Pooled features B×D from the per-position weights keep = n·α (B×1×h×w)."""
        if self.max_pool:   # PT: W·GMP((nα)⊙X) + b
            gmp = (keep.to(features.dtype) * features).amax((2, 3), keepdim=True)
            pooled = F.conv2d(gmp, self.proj.weight, self.proj.bias).flatten(1)
        elif self.augment == "gem" and not warm_up:  # TF use_gemp: W·GeM_p((nα)⊙X), clipped at 1e-6
            p = self.gem_p.to(features.dtype)
            gem = (keep.to(features.dtype) * features).clamp_min(1e-6).pow(p).mean((2, 3), keepdim=True).pow(1 / p)
            pooled = F.conv2d(gem, self.proj.weight, self.proj.bias).flatten(1)
        else:
            pooled = (keep.to(z.dtype) * z).mean((2, 3))
        if self.augment == "max":  # TF augment_max_pool: + W·GMP(X), in warm-up too
            pooled = pooled + F.conv2d(features.amax((2, 3), keepdim=True), self.proj.weight, self.proj.bias).flatten(1)
        return pooled

    def transport(self, z: torch.Tensor) -> torch.Tensor:
        """Plan [ρ; π] B×(1+m)×h×w for per-position embeddings z (B×D×h×w), in float32."""
        b, d, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            feats = self.normalize(z.float().flatten(2).transpose(1, 2), dim=-1)     # B×N×D
            protos = self.normalize(self.prototypes.float(), dim=-1)                  # m×D
            sq = feats.square().sum(-1, keepdim=True) + protos.square().sum(-1) - 2 * feats @ protos.T
            cost = sq.clamp_min(1e-12).sqrt().transpose(1, 2).reshape(b, -1, h, w)   # B×m×h×w
            gamma = self.gamma if self.training else self.eval_gamma
            return partial_transport(cost, self.mu, gamma, self.iterations, self.grad)

    def input_projection(self):
        return self.proj

    def forward(self, features: torch.Tensor) -> HeadOutput:          # B×C×h×w
        b, _, h, w = features.shape
        n, m = h * w, len(self.prototypes)
        z = self.proj(features)                                        # B×D×h×w
        if not bool(self.ready):                                       # warm-up: GAP, zero attributes
            if self.training:
                self._remember(z.mean((2, 3)))
            keep = torch.ones(b, 1, h, w, device=z.device, dtype=torch.float32)
            pooled = self._pool(features, z, keep, warm_up=True)
            maps = {"keep": keep, "prototypes": z.new_zeros(b, m, h, w, dtype=torch.float32)}
            attributes = z.new_zeros(b, m, dtype=torch.float32)
        else:
            plan = self.transport(z)
            rho, pi = plan[:, :1], plan[:, 1:]                         # B×1×h×w, B×m×h×w
            keep = (1.0 - n * rho) / self.mu                           # n·α, official form
            pooled = self._pool(features, z, keep)
            attributes = pi.sum((2, 3)) / self.mu                      # B×m
            maps = {"keep": keep, "prototypes": pi * n}
        return HeadOutput(F.normalize(pooled.float(), dim=-1), maps, {"attributes": attributes})

    def with_transport(self, mu: float | None = None, gamma: float | None = None) -> "GSPHead":
        """A copy of this head with another transport ratio μ and/or entropy weight γ (in and outside training
        alike; for teaching and sweeps): the cached model is shared, so knobs are turned on a copy, never on the
        head itself."""
        head = copy.deepcopy(self)
        if mu is not None:
            if not 0 < mu <= 1:
                raise ValueError(f"transport ratio μ must be in (0, 1], got {mu}")
            head.mu = float(mu)
        if gamma is not None:
            if gamma <= 0:
                raise ValueError(f"entropy weight γ must be > 0, got {gamma}")
            head.gamma = head.eval_gamma = float(gamma)
        return head

    # ---- training ----------------------------------------------------------------------------------
    def on_train_start(self, ctx) -> None:
        if self.zsr is not None and int((self.zsr.class_index.labels >= 0).sum()) == 0:
            self.zsr.class_index.fit(ctx.train_labels)

    def loss(self, out: HeadOutput, labels: torch.Tensor, criterion) -> dict[str, torch.Tensor]:
        dml = criterion(out.embedding, labels)
        if self.zsr is None:
            return {"dml": dml}
        w = self.zsr_weight
        return {"dml": (1.0 - w) * dml, "zsr": w * self.zsr(out.extras["attributes"], labels)}
