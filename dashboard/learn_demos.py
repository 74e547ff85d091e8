"""Didactic, stand-alone versions of the pooling methods for the Learn page (numpy/torch, no Streamlit).

They run on any feature map (a trained model's, or plain pixel colours when no run exists), so the
page keeps working without the methods' own runs. They illustrate the mechanism with untrained settings
(CSA runs its real block, `csa_block_on`); the trained heads live in core/models and are shown when
their runs are present.
"""
from __future__ import annotations

import numpy as np
import torch


def pixel_features(pixels: np.ndarray, cell: int = 8) -> np.ndarray:
    """3×H×W image -> 6×(H/cell)×(W/cell) features: mean colour and its spread per cell."""
    c, h, w = pixels.shape
    gh, gw = h // cell, w // cell
    x = pixels[:, :gh * cell, :gw * cell].reshape(c, gh, cell, gw, cell)
    return np.concatenate([x.mean((2, 4)), x.std((2, 4))]).astype(np.float32)


def mask_to_grid(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Share of each feature cell covered by a pixel mask (H×W bool -> h×w in [0, 1])."""
    from PIL import Image
    img = Image.fromarray((np.asarray(mask, dtype=np.float32)), mode="F")
    return np.asarray(img.resize((w, h), Image.BOX), dtype=np.float32)


def unit(x: np.ndarray, axis: int = 0) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-8)


def kmeans(points: np.ndarray, k: int, iters: int = 25, seed: int = 0) -> np.ndarray:
    """k centres of P×D points (k-means++ start, Lloyd steps)."""
    rng = np.random.default_rng(seed)
    k = max(1, min(k, len(points)))
    centres = [points[rng.integers(len(points))]]
    for _ in range(k - 1):
        d = np.min([((points - c) ** 2).sum(1) for c in centres], 0)
        centres.append(points[rng.choice(len(points), p=d / d.sum())] if d.sum() > 0 else points[rng.integers(len(points))])
    centres = np.stack(centres)
    for _ in range(iters):
        assign = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (assign == j).any():
                centres[j] = points[assign == j].mean(0)
    return centres


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def grouping_attention(features: np.ndarray, queries: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """Attentive grouping: one softmax over positions per query. features C×h×w, queries k×C -> k×h×w."""
    c, h, w = features.shape
    x = unit(features.reshape(c, -1), 0)                         # C×N
    logits = unit(queries, 1) @ x / temperature                 # k×N
    return softmax(logits, 1).reshape(len(queries), h, w)


RELATIVE_SCALE = 8.0   # attention maps shown as weight × positions: 1 = uniform, bright = 8× uniform or more


def relative_to_uniform(maps: np.ndarray) -> np.ndarray:
    """Softmax maps (k×h×w, each summing to 1) as multiples of the uniform weight 1/(h·w). On the fixed scale
    [0, RELATIVE_SCALE] a flat map stays dim and a peaked one bright, so the temperature's effect shows;
    per-panel min–max scaling stretched every map to full contrast and hid it."""
    maps = np.asarray(maps, dtype=np.float32)
    return maps * (maps.shape[-1] * maps.shape[-2])


def keep_scale(keep: np.ndarray) -> float:
    """Top of the colour scale for a GSP keep map: its largest weight, at least average pooling's 1. The fixed
    1/μ (the most a position can get) left small-μ maps nearly black, because the smoothed transport
    spreads over many positions and none comes near 1/μ."""
    return max(float(np.max(keep)), 1.0)


def gsp_transport(features: np.ndarray, prototypes: np.ndarray, mu: float, gamma: float = 5.0,
                  iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """GSP's partial transport of the positions to the prototypes (core.models.optimal_transport).

    Returns (keep map α·n, h×w: 1 = average pooling's weight, 0 = ignored; per-prototype plan π·n, m×h×w).
    """
    from core.models.optimal_transport import partial_transport

    c, h, w = features.shape
    z = unit(features.reshape(c, -1), 0).T                       # N×C
    omega = unit(prototypes, 1)                                  # m×C
    cost = np.sqrt(np.maximum(((omega[:, None] - z[None]) ** 2).sum(-1), 0))    # m×N, Euclidean on unit vectors
    plan = partial_transport(torch.from_numpy(cost[None]).float(), float(mu), float(gamma), iterations)[0].numpy()
    n = h * w
    rho, pi = plan[0], plan[1:]
    keep = (1.0 - n * rho) / mu
    return keep.reshape(h, w), (pi * n).reshape(len(prototypes), h, w)


def csa_block_on(features: np.ndarray, bases: np.ndarray):
    """The CSA block itself (core.models.blocks.csa), set up to run on a C×h×w feature map untrained.

    A trained block learns its query conv and base vectors; here the features are repeated 4× along the
    channels so that the block's query conv (C -> C/4) can return them centred, and the M base vectors are
    given (one group). The value and output convs pass the features through, γ = 1."""
    from core.models.blocks.csa import CompressedSelfAttention2d

    c = features.shape[0]
    block = CompressedSelfAttention2d(4 * c, groups=1, num_bases=len(bases), deep_supervision=False).eval()
    mean = torch.from_numpy(features.reshape(c, -1).mean(1)).float()
    state = block.state_dict()
    state["attention.query.weight"] = torch.eye(c).repeat(1, 4)[..., None, None] / 4
    state["attention.query.bias"] = -mean
    state["attention.bases"] = torch.from_numpy(np.asarray(bases, dtype=np.float32))
    for conv in ("value", "out"):
        state[f"attention.{conv}.weight"] = torch.eye(4 * c)[..., None, None]
        state[f"attention.{conv}.bias"] = torch.zeros(4 * c)
    state["gamma"] = torch.ones(1)
    block.load_state_dict(state)
    return block


def csa_demo(features: np.ndarray, num_bases: int, row: int, col: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Compressed self-attention on one feature map, computed by the CSA block (`csa_block_on`) with its M
    base vectors set to k-means centres of the centred features: the base maps, the query position's
    adaptive weights and the attention it effectively uses (Σ_m W[m, i]·A[m]), next to full self-attention
    with the same cosine × scale logits between positions."""
    from core.models.blocks.csa import attention_at

    c, h, w = features.shape
    x = features.reshape(c, -1)
    centred = unit(x - x.mean(1, keepdims=True), 0)              # what the block's query conv produces, C×N
    bases = kmeans(centred.T, num_bases, seed=seed)              # M×C
    block = csa_block_on(features, bases)
    with torch.no_grad():
        _, maps = block(torch.from_numpy(np.tile(features, (4, 1, 1)))[None].float(), return_maps=True)
        rebuilt = attention_at(maps, row, col)[0, 0].numpy()
    scale = block.attention.scale
    i = row * w + col
    full = softmax(scale * centred[:, i] @ centred, 0)          # N: exact self-attention of position i
    agreement = float(np.minimum(rebuilt.ravel(), full).sum())    # overlap of two distributions, 1 = identical
    return {"base_maps": maps["csa_base"][0].numpy(), "weights": maps["csa_weights"][0, :, row, col].numpy(),
            "rebuilt": rebuilt, "full": full.reshape(h, w), "agreement": agreement}


def dsl_state_at(payload: dict, epoch_index: int) -> dict:
    """The DSL growth log (RUN_DIR/dsl_events.json) replayed up to one logged epoch."""
    epochs = payload.get("epochs") or []
    if not epochs:
        return {"epoch": None, "learners": [len(g) for g in payload.get("learners", [])], "events": []}
    row = epochs[min(max(epoch_index, 0), len(epochs) - 1)]
    events = [e for e in payload.get("events", []) if e.get("applied_epoch", 1e9) <= row["epoch"]]
    return {"epoch": row["epoch"], "learners": row.get("learners", []), "events": events, "row": row}
