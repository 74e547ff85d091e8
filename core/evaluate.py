"""Retrieval metrics from embeddings, computed with faiss: Recall@K, NMI, MAP@R, R-Precision.

Definitions follow Musgrave et al. 2020 (A Metric Learning Reality Check), the same as
pytorch-metric-learning's AccuracyCalculator (cross-checked in tests): for a query with R
same-class references, R-Precision = (#same-class among the top R) / R and
MAP@R = (1/R) Σ_{i≤R} P(i)·1[i-th neighbour is same-class].
"""
from __future__ import annotations

import logging

import faiss
import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch.utils.data import DataLoader

from core.mode import evaluating

log = logging.getLogger(__name__)


def knn(query: np.ndarray, reference: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product (cosine on L2-normalised embeddings). Returns (similarities, indices)."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    reference = np.ascontiguousarray(reference, dtype=np.float32)
    index = faiss.IndexFlatIP(reference.shape[1])
    index.add(reference)
    k_eff = min(k + int(exclude_self), len(reference))
    sims, idx = index.search(query, k_eff)
    if exclude_self:
        # drop each query's own row; ties can put it anywhere in the list, so remove by identity
        rows = np.arange(len(query))[:, None]
        keep = idx != rows
        keep[keep.sum(1) > k_eff - 1, -1] = False  # self not found within k+1: drop the last instead
        sims = sims[keep].reshape(len(query), k_eff - 1)
        idx = idx[keep].reshape(len(query), k_eff - 1)
    return sims[:, :k], idx[:, :k]


def precision_at_r(hits: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query (R-Precision, MAP@R) from `hits` (Q×k, neighbour i shares the query's class, k ≥ R) and
    `relevant` (Q: R, the number of same-class references); nan where R = 0. The one implementation: the
    averaged metrics and the dashboard's per-query table both use it."""
    hits, relevant = np.asarray(hits, bool), np.asarray(relevant)
    hits_r = hits & (np.arange(hits.shape[1])[None, :] < relevant[:, None])
    precision_at_i = np.cumsum(hits_r, 1) / np.arange(1, hits.shape[1] + 1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        r_precision = np.where(relevant > 0, hits_r.sum(1) / relevant, np.nan)
        map_at_r = np.where(relevant > 0, (precision_at_i * hits_r).sum(1) / relevant, np.nan)
    return r_precision, map_at_r


def retrieval_metrics(query_emb, query_labels, ref_emb=None, ref_labels=None,
                      recall_ks=(1, 2, 4, 8)) -> dict[str, float]:
    """Recall@K, MAP@R, R-Precision. Without a reference set, every query searches the others."""
    query_labels = np.asarray(query_labels)
    same_set = ref_emb is None
    if same_set:
        ref_emb, ref_labels = query_emb, query_labels
    ref_labels = np.asarray(ref_labels)
    classes, ref_counts = np.unique(ref_labels, return_counts=True)
    count_of = dict(zip(classes.tolist(), ref_counts.tolist()))
    r = np.asarray([count_of.get(l, 0) - int(same_set) for l in query_labels.tolist()])  # relevant refs per query
    valid = r > 0
    if not valid.any():
        raise ValueError("no query has a same-class reference: every class needs at least 2 images")
    k = int(max(max(recall_ks), r.max()))
    _, idx = knn(query_emb[valid], ref_emb, k, exclude_self=same_set)
    hits = ref_labels[idx] == query_labels[valid][:, None]   # Q×k
    r = r[valid]
    out = {f"recall@{kk}": float(hits[:, :kk].any(1).mean()) for kk in recall_ks}
    r_precision, map_at_r = precision_at_r(hits, r)
    out["r_precision"], out["map_at_r"] = float(r_precision.mean()), float(map_at_r.mean())
    return out


def nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """NMI of k-means (k = #classes, faiss) against the labels."""
    labels = np.asarray(labels)
    n_classes = len(np.unique(labels))
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], n_classes, niter=50, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return float(normalized_mutual_info_score(labels, assign[:, 0]))


def all_metrics(emb, labels, recall_ks=(1, 2, 4, 8), query_gallery=None) -> dict[str, float]:
    """All metrics. `query_gallery=(q_emb, q_labels, g_emb, g_labels)` switches to query->gallery."""
    if query_gallery is not None:
        q, ql, g, gl = query_gallery
        out = retrieval_metrics(q, ql, g, gl, recall_ks)
        out["nmi"] = nmi(np.concatenate([q, g]), np.concatenate([ql, gl]))
        return out
    out = retrieval_metrics(emb, labels, recall_ks=recall_ks)
    out["nmi"] = nmi(emb, labels)
    return out


@torch.no_grad()
def embed_dataset(model, dataset, batch_size: int = 128, device: str | torch.device = "cpu",
                  num_workers: int = 0, progress=None, label: str = "embedding") -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N×D float32) and labels of a dataset, in dataset order, in eval mode; `progress(step,
    total, label)` after each batch (on a CPU, embedding thousands of images takes minutes)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    embs, labels = [], []
    with evaluating(model):  # a failing batch (or a cancelled progress callback) leaves a training model training
        for step, (x, y, _) in enumerate(loader):
            embs.append(model(x.to(device)).float().cpu())
            labels.append(y)
            if progress:
                progress(step + 1, len(loader), label)
    return torch.cat(embs).numpy(), torch.cat(labels).numpy()


def readable(dataset, n: int) -> np.ndarray:
    """Mask of the items whose own image was read. An unreadable image is served by another image of its
    class (so an epoch never crashes); in an evaluation that copy would find itself and inflate the
    metrics, so such items are left out of them. `dataset.bad` is filled while embedding (in-process)."""
    keep = np.ones(n, bool)
    bad = [i for i in getattr(dataset, "bad", ()) if 0 <= i < n]
    if bad:
        keep[bad] = False
        log.warning("%d unreadable image(s) left out of the metrics, e.g. %s", len(bad),
                    ", ".join(str(dataset.path(i)) for i in sorted(bad)[:3]))
    return keep


def score(parts: dict, recall_ks=(1, 2, 4, 8), progress=None, label: str = "scoring") -> dict[str, float]:
    """Metrics of embedded evaluation parts {name: (dataset, emb, labels)}: `test` (every item a query
    against the others) or `query` + `gallery`; unreadable items are left out (see `readable`)."""
    kept = {name: (emb[m], lab[m]) for name, (ds, emb, lab) in parts.items() for m in [readable(ds, len(lab))]}
    if progress:  # nearest neighbours + k-means for NMI: one step, but seconds on large sets
        progress(0, 1, f"{label}: nearest neighbours + k-means (NMI)")
    if "test" in kept:
        out = all_metrics(*kept["test"], recall_ks)
    else:
        out = all_metrics(None, None, recall_ks, query_gallery=(*kept["query"], *kept["gallery"]))
    if progress:
        progress(1, 1, f"{label}: nearest neighbours + k-means (NMI)")
    return out


def evaluate_splits(model, splits, device="cpu", recall_ks=(1, 2, 4, 8), which: str = "test",
                    batch_size: int = 128, progress=None) -> dict[str, float]:
    """Metrics on `which` ∈ {test, val}; for a query/gallery data set, test means query->gallery."""
    def embedded(ds, name):
        return (ds, *embed_dataset(model, ds, batch_size, device, progress=progress,
                                   label=f"{which} {name}: embedding {len(ds)} images"))

    if which == "val":
        if splits.val is None:
            raise ValueError("no validation part: set data.val_classes > 0")
        parts = {"test": embedded(splits.val, "classes")}  # scored as a test set: every item a query against the others
    elif splits.test is not None:
        parts = {"test": embedded(splits.test, "classes")}
    else:
        parts = {"query": embedded(splits.query, "query"), "gallery": embedded(splits.gallery, "gallery")}
    return score(parts, recall_ks, progress, which)
