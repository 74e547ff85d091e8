"""Didactic, stand-alone versions of the pooling methods for the Learn page (numpy/torch, no Streamlit).

They run on any feature map (a trained model's, or plain pixel colours when no run exists), so the
page keeps working without the methods' own runs. They illustrate the mechanism; they are not the
trained heads (those live in core/models and are shown when their runs are present).
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


def csa_demo(features: np.ndarray, num_bases: int, row: int, col: int, temperature: float = 0.1,
             seed: int = 0) -> dict[str, np.ndarray]:
    """Compressed self-attention on one feature map: M base vectors (k-means centres), their base maps,
    and the query position's map rebuilt from them, next to full self-attention for comparison."""
    c, h, w = features.shape
    x = unit(features.reshape(c, -1), 0)                         # C×N
    bases = unit(kmeans(x.T, num_bases, seed=seed), 1)           # M×C
    base_maps = softmax(bases @ x / temperature, 1)              # M×N: where each base vector attends
    weights = softmax(bases @ x / temperature, 0)                # M×N: each position's mix of the bases
    i = row * w + col
    rebuilt = weights[:, i] @ base_maps                          # N
    full = softmax(x[:, i] @ x / temperature, 0)                 # N: exact self-attention of position i
    agreement = float(np.minimum(rebuilt, full).sum())           # overlap of two distributions, 1 = identical
    return {"base_maps": base_maps.reshape(-1, h, w), "weights": weights[:, i], "rebuilt": rebuilt.reshape(h, w),
            "full": full.reshape(h, w), "agreement": agreement}


def dsl_state_at(payload: dict, epoch_index: int) -> dict:
    """The DSL growth log (RUN_DIR/dsl_events.json) replayed up to one logged epoch."""
    epochs = payload.get("epochs") or []
    if not epochs:
        return {"epoch": None, "learners": [len(g) for g in payload.get("learners", [])], "events": []}
    row = epochs[min(max(epoch_index, 0), len(epochs) - 1)]
    events = [e for e in payload.get("events", []) if e.get("applied_epoch", 1e9) <= row["epoch"]]
    return {"epoch": row["epoch"], "learners": row.get("learners", []), "events": events, "row": row}
