"""Explanations beyond a model's own maps (`Embedder.explain`).

Cross-image maps (this section is self-contained; other explainers may live beside it):

`cross_attention(model, image_a, image_b)` says where each image looks in the other, as
`a_in_b` (over B's feature positions, conditioned on A) and `b_in_a`, each K×h×w summing to 1
over positions. Two sources:

* **"cia"** (a run trained with the cross-image attention branch, `model.cia`): the trained
  attention of the last CIA layer, averaged over heads (K = 1). `a_in_b` is the attention over B's
  tokens when B's conditional embedding is formed with A as the condition (query from A).
* **"similarity"** (any run): a generic correspondence map. For each group g of the embedding
  (`Explanation.groups`: one for GAP, k for grouping heads, K learners for DSL), the softmax over
  B's positions p of cos(emb_A[g], pos_B[g, p]) / temperature, where pos_B are B's per-position
  embeddings: the head's `position_embeddings(features) -> B×D×h×w` when it has one (DSL: each
  position's attended share of the linear projection), otherwise the head applied to every
  feature position on its own as a 1×1 feature map (for GAP: its linear projection of that
  position's feature). If the head cannot run on a 1×1 map, the raw features are used against
  the raw pooled features of A (reported in `source`).

`patch_correspondence(model, image_a, image_b, row, col)` answers "click a patch in A, see where
it lands in B": softmax over B's positions of the cosine between A's feature at (row, col) and
B's features (backbone features by default; `space="embedding"` uses per-position embeddings).

Images are 3×H×W tensors in [0, 1] (the model normalises internally); maps are on the feature
grid (h×w); upsample them for display. Everything runs without gradients and works under
`torch.inference_mode()`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.models.mode import evaluating

CROSS_SOURCES = {
    "cia": "trained cross-image attention (last CIA layer, mean over heads): where one image's "
           "conditional query looks in the other image's feature map",
    "similarity": "softmax over positions of the cosine between one image's embedding (per group) and the "
                  "other image's per-position embeddings; a generic correspondence map, not learned attention",
}


def _batch(image: torch.Tensor, device) -> torch.Tensor:
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"expected an image tensor 3×H×W (or 1×3×H×W) in [0, 1], got shape {tuple(image.shape)}")
    return image.to(device=device, dtype=torch.float32)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def position_embeddings(model, features: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(B×D×h×w per-position embeddings, how they were made) for a model's head."""
    head = model.head
    own = getattr(head, "position_embeddings", None)
    if callable(own):
        return own(features), "the head's position_embeddings"
    b, c, h, w = features.shape
    cells = features.permute(0, 2, 3, 1).reshape(b * h * w, c, 1, 1)   # every position as a 1×1 map
    try:
        emb = torch.cat([head(chunk).embedding for chunk in cells.split(4096)])
    except (RuntimeError, ValueError):  # a head that needs spatial context: fall back to raw features
        return features, "raw features (the head cannot embed a single position)"
    return emb.reshape(b, h, w, -1).permute(0, 3, 1, 2), "the head applied to each position as a 1×1 map"


def _similarity_maps(query: torch.Tensor, positions: torch.Tensor, groups: list[slice], temperature: float):
    """query D, positions D×h×w -> K×h×w softmax over positions of the per-group cosine."""
    d, h, w = positions.shape
    maps = []
    for g in groups:
        q = F.normalize(query[g].float(), dim=0)
        p = F.normalize(positions[g].float().reshape(-1, h * w), dim=0)   # d_g×N
        maps.append(torch.softmax((q @ p) / temperature, dim=0).reshape(h, w))
    return torch.stack(maps)


def cross_attention(model, image_a: torch.Tensor, image_b: torch.Tensor, *, source: str = "auto",
                    temperature: float = 0.1, layer: int = -1, per_head: bool = False) -> dict:
    """Where A looks in B and B looks in A.

    Returns {"a_in_b": K×h×w, "b_in_a": K×h×w (each sums to 1 over positions), "source": str,
    "description": str, "groups": list[slice] (the embedding dims each of the K maps belongs to; CIA:
    one map over the whole embedding; raw-feature fallback: feature channels), "group_similarity":
    K cosines of A's and B's embeddings (per group; one whole-embedding value when K = 1), and for CIA
    "conditional_similarity": the trained conditional cosine s_AB}.
    `source`: "auto" (CIA when the run has the branch), "cia" or "similarity"; `temperature` sharpens
    the similarity maps; `layer`/`per_head` pick the CIA layer and keep heads apart (K = heads)."""
    if source not in ("auto", "cia", "similarity"):
        raise ValueError(f"source must be auto, cia or similarity, got {source!r}")
    cia = getattr(model, "cia", None)
    if source == "cia" and cia is None:
        raise ValueError("this run has no cross-image attention branch (model.cia); use source='similarity'")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    use_cia = cia is not None and source in ("auto", "cia")
    device = _device(model)
    images = torch.cat([_batch(image_a, device), _batch(image_b, device)])
    with torch.no_grad(), evaluating(model):
        features = model.forward_features(images)
        explanation = model.explain(images)             # the generic interface: embedding + groups
        emb = explanation.embedding
        groups = list(explanation.groups) or [slice(0, emb.shape[1])]
        group_sim = torch.stack([F.cosine_similarity(emb[0, g].float(), emb[1, g].float(), dim=0) for g in groups])
        if use_cia:
            S, attention = cia.pairwise(emb, features)               # 2×2×L×H×h×w; [i, j]: over i's positions, query from j
            attention = attention[:, :, layer].float()
            a_in_b, b_in_a = attention[1, 0], attention[0, 1]       # H×h×w
            if not per_head:
                a_in_b, b_in_a = a_in_b.mean(0, keepdim=True), b_in_a.mean(0, keepdim=True)
            whole = [slice(0, emb.shape[1])]
            return {"a_in_b": a_in_b.cpu(), "b_in_a": b_in_a.cpu(), "source": "cia",
                    "description": CROSS_SOURCES["cia"], "groups": whole,
                    "group_similarity": F.cosine_similarity(emb[0:1].float(), emb[1:2].float()).cpu(),
                    "conditional_similarity": float(S[0, 1])}
        positions, how = position_embeddings(model, features)
        if positions is features:  # raw-feature fallback: raw pooled features of A, one map
            query = features.mean((2, 3))
            groups = [slice(0, features.shape[1])]
            group_sim = F.cosine_similarity(emb[0:1].float(), emb[1:2].float())
        else:
            query = emb
        a_in_b = _similarity_maps(query[0], positions[1], groups, temperature)
        b_in_a = _similarity_maps(query[1], positions[0], groups, temperature)
    return {"a_in_b": a_in_b.cpu(), "b_in_a": b_in_a.cpu(), "source": "similarity",
            "description": f"{CROSS_SOURCES['similarity']} (per-position embeddings: {how})",
            "groups": groups, "group_similarity": group_sim.cpu()}


def feature_grid(model, image: torch.Tensor) -> tuple[int, int]:
    """(h, w) of the feature map the cross maps live on, for turning a click in pixels into a patch."""
    with torch.no_grad(), evaluating(model):
        f = model.forward_features(_batch(image, _device(model)))
    return int(f.shape[2]), int(f.shape[3])


def patch_correspondence(model, image_a: torch.Tensor, image_b: torch.Tensor, row: int, col: int, *,
                         temperature: float = 0.1, space: str = "features") -> torch.Tensor:
    """h×w map over B (sums to 1): where A's patch (row, col) of the feature grid lands in B.

    softmax_p cos(f_A[row, col], f_B[p]) / temperature with f the backbone features at the pooled stage
    (`space="features"`) or the per-position embeddings (`space="embedding"`, see `position_embeddings`)."""
    if space not in ("features", "embedding"):
        raise ValueError(f"space must be features or embedding, got {space!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = _device(model)
    images = torch.cat([_batch(image_a, device), _batch(image_b, device)])
    with torch.no_grad(), evaluating(model):
        features = model.forward_features(images)
        h, w = features.shape[2:]
        if not (0 <= row < h and 0 <= col < w):
            raise IndexError(f"patch ({row}, {col}) is outside the {h}×{w} feature grid")
        if space == "embedding":
            features, _ = position_embeddings(model, features)
        query = features[0, :, row, col]
        return _similarity_maps(query, features[1], [slice(0, features.shape[1])], temperature)[0].cpu()
