"""CIA: cross-image attention for conditional embeddings (Kotovenko, Ma, Milbich, Ommer; CVPR 2023).

A training-only branch (methods.md §4). The model's own embedding e (any head) is what retrieval
uses; this branch only adds a loss, so test-time cost and embeddings are exactly those of the
model without it (`Embedder.forward/explain` never call it).

For every ordered pair (i, j) of a batch, with T_i = image i's feature tokens (N = h·w, C channels):
    layer 1:  e¹_{i|j} = e_j          + CA(q = e_j,          K, V = W_k T_i, W_v T_i)
    layer l:  eˡ_{i|j} = eˡ⁻¹_{j|i}   + CA(q = eˡ⁻¹_{j|i},   K, V = W_kˡ T_i, W_vˡ T_i)   (alternating)
    S_ij      = cos(eᴸ_{i|j}, eᴸ_{j|i})      (symmetric: true; else cos(eᴸ_{i|j}, e_j))
CA is multi-head attention with pre-LayerNorm on the query and the tokens and a residual to the
query, followed by a pre-LN MLP with a residual (`mlp_ratio: 0` drops it). No dropout (faithful mode).
The loss is the DML criterion evaluated on S instead of e·eᵀ: the trainer's pytorch-metric-learning
loss (and miner) is copied with its distance swapped for one that returns S (similarity losses)
or √(2 − 2S) (distance losses), so MultiSimilarity etc. run unchanged. `loss()` returns
{"cia": weight · L_cond(S)}.

⚠️AMB (no official code; §4.5): L = 2, 8 heads, pre-LN, residual to the query, alternating
conditioning, S from the last layer, both directions. All are config keys of `model.cia`.
Fidelity: the authors' code is not public, so nothing was measured against it; the tests pin the
design (residual, λ scaling only the CIA term, alternation, symmetric S, unchanged test-time embedding).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from torch import nn

DEFAULTS = {"layers": 2, "heads": 8, "weight": 1.0, "mlp_ratio": 2.0, "symmetric": True,
            "loss": None, "loss_args": {}, "miner": "same"}


class PrecomputedSimilarity(CosineSimilarity):
    """A cosine 'distance' whose matrix is set beforehand (`matrix`, B×B): PML losses run on it unchanged."""

    def __init__(self):
        super().__init__()
        self.matrix: torch.Tensor | None = None

    def compute_mat(self, query_emb, ref_emb):
        if self.matrix is None or self.matrix.shape != (query_emb.shape[0], ref_emb.shape[0]):
            raise RuntimeError("PrecomputedSimilarity: set .matrix to the B×B similarity before calling the loss")
        return self.matrix.clone()  # a fresh tensor, as a real distance returns: miners edit theirs in place


class PrecomputedDistance(LpDistance):
    """Euclidean distance between unit vectors from a precomputed cosine matrix: √(2 − 2S)."""

    def __init__(self):
        super().__init__(p=2, power=1, normalize_embeddings=True)
        self.matrix: torch.Tensor | None = None

    def compute_mat(self, query_emb, ref_emb):
        if self.matrix is None or self.matrix.shape != (query_emb.shape[0], ref_emb.shape[0]):
            raise RuntimeError("PrecomputedDistance: set .matrix to the B×B similarity before calling the loss")
        return torch.sqrt((2 - 2 * self.matrix).clamp_min(1e-12))


def _swap_distance(module: nn.Module) -> nn.Module:
    """Deep copy of a PML loss/miner whose distance reads the precomputed matrix."""
    if not hasattr(module, "distance"):
        raise ValueError(f"CIA needs a pair-based pytorch-metric-learning loss/miner; {type(module).__name__} has "
                         f"no distance (proxy and classification losses cannot score a similarity matrix)")
    if any(hasattr(module, name) for name in ("proxies", "W")):
        raise ValueError(f"CIA cannot apply the proxy loss {type(module).__name__} to a pairwise similarity matrix; "
                         f"set model.cia.loss to a pair-based loss such as multi_similarity")
    module = copy.deepcopy(module)
    module.distance = PrecomputedSimilarity() if module.distance.is_inverted else PrecomputedDistance()
    return module


class CrossAttentionLayer(nn.Module):
    """Queries (one per conditioning image) attend to one image's tokens. Pre-LN, residual to the query."""

    def __init__(self, dim: int, channels: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.norm_q, self.norm_tokens = nn.LayerNorm(dim), nn.LayerNorm(channels)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(channels, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        hidden = int(round(dim * mlp_ratio))
        self.mlp = (nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
                    if hidden > 0 else None)

    def forward(self, queries, tokens, need_attention: bool = True):
        """queries B×Q×D (row i: the queries that look into image i) or Q×D (the same queries for every
        image), tokens B×N×C -> (B×Q×D, attention B×Q×H×N or None). Without `need_attention` the fused
        scaled_dot_product_attention runs and the B×Q×H×N weights are never materialised."""
        b, n, _ = tokens.shape
        d, h = self.to_out.in_features, self.heads
        q = self.to_q(self.norm_q(queries))
        if q.dim() == 2:                                                          # shared queries: project once
            q = q.unsqueeze(0).expand(b, -1, -1)
        nq = q.shape[1]
        q = q.reshape(b, nq, h, d // h).transpose(1, 2)                           # B×H×Q×d
        k, v = self.to_kv(self.norm_tokens(tokens)).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)  # B×H×N×d each
        if need_attention:
            attn = torch.matmul(q, k.transpose(-1, -2)).mul(self.scale).softmax(-1)  # B×H×Q×N
            out = torch.matmul(attn, v)
            attn = attn.transpose(1, 2)                                           # B×Q×H×N
        else:
            out, attn = F.scaled_dot_product_attention(q, k, v), None
        x = queries + self.to_out(out.transpose(1, 2).reshape(b, nq, d))          # residual to the query
        if self.mlp is not None:
            x = x + self.mlp(x)
        return x, attn


class CrossImageAttention(nn.Module):
    """Training-only CIA branch. `pairwise(emb, features)` -> (S B×B, attention B×B×L×H×h×w);
    `loss(out, features, labels, criterion)` -> {"cia": weight · criterion on S}, where `criterion` is
    the branch's own, built and passed in by the trainer (`core.losses.cia_criterion`)."""

    def __init__(self, embed_dim: int, feature_channels: int, layers: int = 2, heads: int = 8,
                 weight: float = 1.0, mlp_ratio: float = 2.0, symmetric: bool = True,
                 loss: str | None = None, loss_args: dict | None = None, miner: str | None = "same"):
        super().__init__()
        if layers < 1:
            raise ValueError(f"model.cia.layers must be ≥ 1, got {layers}")
        if embed_dim % heads:
            raise ValueError(f"model.cia.heads ({heads}) must divide the embedding size ({embed_dim})")
        self.embed_dim, self.heads, self.weight, self.symmetric = embed_dim, heads, float(weight), symmetric
        self.layers = nn.ModuleList(CrossAttentionLayer(embed_dim, feature_channels, heads, mlp_ratio)
                                    for _ in range(layers))
        self.loss_name, self.loss_args, self.miner_name = loss, dict(loss_args or {}), miner
        self._cond: tuple[object, tuple[nn.Module, nn.Module | None]] | None = None  # (criterion, its copy)

    def conditional_embeddings(self, emb, features, need_attention: bool = True):
        """(E B×B×D with E[i, j] = eᴸ_{i|j}, attention B×B×L×H×h×w or None)."""
        b, c, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)                   # B×N×C
        queries = emb                                                  # layer 1: queries[i, j] = e_j for every i
        maps = []
        for layer_index, layer in enumerate(self.layers):
            if layer_index:
                queries = cond.transpose(0, 1)                         # queries[i, j] = eˡ⁻¹_{j|i}
            cond, attn = layer(queries, tokens, need_attention)        # cond[i, j] = eˡ_{i|j}; attn B×B×H×N
            if need_attention:
                maps.append(attn.reshape(b, b, self.heads, h, w))
        return cond, (torch.stack(maps, 2) if need_attention else None)

    def similarity(self, emb, cond) -> torch.Tensor:
        cond = F.normalize(cond.float(), dim=-1)
        if self.symmetric:
            return (cond * cond.transpose(0, 1)).sum(-1)               # cos(e_{i|j}, e_{j|i})
        return (cond * F.normalize(emb.float(), dim=-1).unsqueeze(0)).sum(-1)  # cos(e_{i|j}, e_j)

    def pairwise(self, emb: torch.Tensor, features: torch.Tensor):
        """Conditional similarity S (B×B) and attention (B×B×L×heads×h×w): attention[i, j] is where
        the query built from image j looks in image i's feature map when forming e_{i|j}."""
        cond, attention = self.conditional_embeddings(emb, features, need_attention=True)
        return self.similarity(emb, cond), attention

    def forward(self, emb, features):
        return self.pairwise(emb, features)

    def conditional_criterion(self, criterion):
        """(loss, miner) for S: copies of `criterion`'s PML loss and miner with the distance swapped.
        `criterion` is the one the trainer built for this branch (`core.losses.cia_criterion`: the
        configured `model.cia.loss`/`miner`, or the trainer's own, unwrapped from the torchrun wrappers);
        it is injected so that this module needs nothing from `core.losses`. Learnable loss state (a
        learnable β) is copied once and not trained here."""
        if self._cond is None or self._cond[0] is not criterion:
            miner = getattr(criterion, "miner", None)
            self._cond = (criterion, (_swap_distance(criterion.loss),
                                      _swap_distance(miner) if miner is not None else None))
        return self._cond[1]

    def conditional_loss(self, S: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, criterion) -> torch.Tensor:
        loss, miner = self.conditional_criterion(criterion)
        loss = loss.to(S.device)
        loss.distance.matrix = S
        indices = None
        if miner is not None:
            miner.distance.matrix = S.detach()
            indices = miner(emb.float(), labels)
        try:
            return loss(emb.float(), labels, indices)
        finally:
            loss.distance.matrix = None
            if miner is not None:
                miner.distance.matrix = None

    def loss(self, out, features, labels, criterion) -> dict[str, torch.Tensor]:
        cond, _ = self.conditional_embeddings(out.embedding, features, need_attention=False)
        S = self.similarity(out.embedding, cond)
        return {"cia": self.weight * self.conditional_loss(S, out.embedding, labels, criterion)}


def build_cia(cfg: dict, embed_dim: int, feature_channels: int) -> CrossImageAttention:
    """The CIA branch from `model.cia` (keys: layers, heads, weight, mlp_ratio, symmetric, loss,
    loss_args, miner). `loss: null` reuses the trainer's criterion (loss and miner); `miner: same`
    keeps the trainer's miner, `null` mines nothing."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown model.cia keys: {', '.join(unknown)} (known: {', '.join(sorted(DEFAULTS))})")
    return CrossImageAttention(embed_dim, feature_channels, **{**DEFAULTS, **cfg})
