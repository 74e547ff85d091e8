"""Counterfactual re-ranking: hide cells of the query and watch the retrieval over the whole test set respond.

    reranker = Reranker(model, query_image, gallery_embeddings, exclude=query_item)
    hidden = cells_by_map(cell_map, share=0.2)            # "hide what the map attends to" (keep=True: "keep only it")
    result = reranker.rerank(hidden)                      # any h×w bool grid; e.g. a page's clicked cells
    result.former(k=8)                                    # each former neighbour: old rank, new rank, Δ similarity

Only the query is embedded again (one forward per re-rank); the gallery is the run's stored embeddings
(artifacts/embeddings.npy), so a re-rank costs one forward plus a matrix-vector product. Hidden cells are
filled as the deletion curves and occlusion fill them (`core.attribution.fill_image`: the image's mean
colour, or a blur), mapped to pixels by `cells_to_pixels`.

The "before" ranking is that of a fresh embedding of the unmodified query (not its stored embedding, which
may differ from a fresh forward by float rounding), embedded exactly as a re-rank embeds, so hiding nothing
reproduces it bit for bit. It relies only on `model(images) -> embeddings`, so any model with a forward
(an imported one too) can be re-ranked.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.attribution import cells_to_pixels, fill_image


@dataclass
class Reranking:
    order: np.ndarray          # item ids, most similar first (the excluded query item left out)
    order_before: np.ndarray   # the same before anything was hidden
    similarity: np.ndarray     # N: cosine of every item to the (hidden) query, by item id
    before: np.ndarray         # N: cosine of every item to the unmodified query
    rank: np.ndarray           # N: 1-based rank of every item now (0: the excluded query item)
    rank_before: np.ndarray    # N: 1-based rank before

    @property
    def delta(self) -> np.ndarray:
        """N: similarity now minus before, by item id."""
        return self.similarity - self.before

    def former(self, k: int) -> list[dict]:
        """The k former top neighbours: item, rank before and now, and the change of similarity."""
        return [{"item": int(i), "rank_before": int(self.rank_before[i]), "rank": int(self.rank[i]),
                 "similarity": float(self.similarity[i]), "delta": float(self.delta[i])} for i in self.order_before[:k]]


def cells_by_map(cell_map: np.ndarray, share: float, keep: bool = False) -> np.ndarray:
    """The hidden cells (h×w bool) for "hide what the map attends to": its top `share` of cells by value (ties:
    the first in raster order); with `keep`, "keep only it": every other cell is hidden instead."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    values = np.nan_to_num(np.asarray(cell_map, dtype=np.float64), nan=-np.inf)
    top = np.zeros(values.size, bool)
    top[np.argsort(-values.ravel(), kind="stable")[:int(round(share * values.size))]] = True
    top = top.reshape(values.shape)
    return ~top if keep else top


def _ranks(similarity: np.ndarray, exclude: int | None) -> tuple[np.ndarray, np.ndarray]:
    sims = similarity.astype(np.float64).copy()
    if exclude is not None:
        sims[exclude] = -np.inf
    order = np.argsort(-sims, kind="stable")            # ties: the lower id first, before and after alike
    if exclude is not None:
        order = order[order != exclude]
    rank = np.zeros(len(sims), int)
    rank[order] = np.arange(1, len(order) + 1)
    return order, rank


class Reranker:
    """One query image against a gallery of embeddings (N×D, unit rows: numpy, or a tensor that many re-rankers
    share); `exclude`: the query's own item."""

    def __init__(self, model, image, gallery: np.ndarray, *, exclude: int | None = None, fill: str = "mean"):
        self.model = model
        self.image = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).float()
        self.filled = fill_image(self.image, fill)
        self.gallery = (gallery.float() if torch.is_tensor(gallery)
                        else torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32)))
        self.exclude = exclude
        self.before = self._similarity(self.image)
        self.order_before, self.rank_before = _ranks(self.before, exclude)

    def _similarity(self, image: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            embedding = F.normalize(self.model(image[None]).float(), dim=-1)[0]
            return (self.gallery @ embedding).numpy()

    def hidden_image(self, hidden: np.ndarray) -> torch.Tensor:
        """The query with the hidden cells (h×w bool, any grid) filled."""
        pixels = cells_to_pixels(torch.as_tensor(np.asarray(hidden, dtype=bool)), tuple(self.image.shape[-2:]))
        return torch.where(pixels, self.filled, self.image)

    def rerank(self, hidden: np.ndarray) -> Reranking:
        similarity = self._similarity(self.hidden_image(hidden))
        order, rank = _ranks(similarity, self.exclude)
        return Reranking(order, self.order_before, similarity, self.before, rank, self.rank_before)
