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
from core.neighbours import ExactSearch, precision_at_r, scores_of, search  # noqa: F401  (precision_at_r: re-exported)

log = logging.getLogger(__name__)
SAMPLED_QUERIES = 10_000     # queries scored on a large set (standard error of R@1 at most 0.005)
NMI_MAX_MACS = 3e12          # k-means training for NMI, in multiply-adds (BENCHMARKS.md: its time and error)


def knn(query: np.ndarray, reference: np.ndarray, k: int, exclude_self: bool,
        query_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine on L2-normalised embeddings). Returns (similarities, indices).
    `exclude_self`: the queries are reference rows (`query_ids`, default 0..len(query)-1), each left out of
    its own list."""
    self_ids = (np.arange(len(query)) if query_ids is None else np.asarray(query_ids)) if exclude_self else None
    return search(ExactSearch(reference), query, k, self_ids=self_ids)


def sampled_queries(n_queries: int, n_references: int) -> int | None:
    """How many queries a metric samples: None (every query, exact) while queries × references stays within
    EXACT_MAX_ITEMS² pairs (core.neighbours), else SAMPLED_QUERIES."""
    from core.neighbours import EXACT_MAX_ITEMS
    if n_queries * n_references <= EXACT_MAX_ITEMS ** 2 or n_queries <= SAMPLED_QUERIES:
        return None
    return SAMPLED_QUERIES


def retrieval_metrics(query_emb, query_labels, ref_emb=None, ref_labels=None,
                      recall_ks=(1, 2, 4, 8), seed: int = 0) -> dict[str, float]:
    """Recall@K, MAP@R, R-Precision. Without a reference set, every query searches the others.

    Large sets (see `sampled_queries`) score a uniform random sample of SAMPLED_QUERIES queries (seeded),
    each searched exactly against every reference, and add each metric's standard error over the
    queries as `<metric>_se` (with the finite-population correction): the estimate ± 1.96 SE is a 95 %
    interval for the value every query would give."""
    query_labels = np.asarray(query_labels)
    same_set = ref_emb is None
    if same_set:
        ref_emb, ref_labels = query_emb, query_labels
    ref_labels = np.asarray(ref_labels)
    classes, ref_counts = np.unique(ref_labels, return_counts=True)
    at = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    r = np.where(classes[at] == query_labels, ref_counts[at], 0) - int(same_set)   # relevant refs per query
    queries = np.flatnonzero(r > 0)
    if not len(queries):
        raise ValueError("no query has a same-class reference: every class needs at least 2 images")
    population, sample = len(queries), sampled_queries(len(queries), len(ref_labels))
    if sample:
        queries = np.sort(np.random.default_rng(seed).choice(queries, sample, replace=False))
    k = int(max(max(recall_ks), r[queries].max()))
    _, idx = knn(query_emb[queries], ref_emb, k, exclude_self=same_set, query_ids=queries)
    return summarise(scores_of(idx, ref_labels, query_labels[queries], r[queries]), recall_ks,
                     population if sample else None)


def summarise(scores: np.ndarray, recall_ks=(1, 2, 4, 8), population: int | None = None) -> dict[str, float]:
    """Recall@K, R-precision and MAP@R averaged over per-query scores (core.neighbours.SCORE_DTYPE; queries
    without a same-class reference left out). `population`: the scores are a uniform sample of that many
    queries, so each metric gets its standard error `<metric>_se` (finite-population corrected)."""
    scores = scores[scores["relevant"] > 0]
    per_query = {f"recall@{k}": scores["first_match_rank"] <= k for k in recall_ks}
    per_query["r_precision"], per_query["map_at_r"] = scores["r_precision"], scores["map_at_r"]
    out = {name: float(np.mean(values, dtype=np.float64)) for name, values in per_query.items()}
    if population and population > len(scores):
        shrink = 1 - len(scores) / population
        out |= {f"{name}_se": float(np.std(values, ddof=1, dtype=np.float64) / np.sqrt(len(values)) * np.sqrt(shrink))
                for name, values in per_query.items()}
    return out


def kmeans_points(n: int, n_classes: int, dim: int) -> tuple[int, int]:
    """(points k-means trains on, iterations) for NMI: every point and 50 iterations while that costs at most
    NMI_MAX_MACS multiply-adds; else 10 iterations on a random sample that fits the budget, at least 25 points
    a centroid, then every item is assigned (10,000 classes × 1M items × 50 iterations in full is 6.4e15
    multiply-adds). Its difference from full k-means: benchmarks/scale_estimates.py."""
    if n * n_classes * dim * 50 <= NMI_MAX_MACS:
        return n, 50
    return int(min(n, max(25 * n_classes, NMI_MAX_MACS // (n_classes * dim * 10)))), 10


def nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """NMI of k-means (k = #classes, faiss) against the labels. Large sets train the centroids on a sample
    (`kmeans_points`) and then assign every item."""
    labels = np.asarray(labels)
    n_classes = len(np.unique(labels))
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    points, niter = kmeans_points(len(x), n_classes, x.shape[1])
    km = faiss.Kmeans(x.shape[1], n_classes, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=max(256 if points == len(x) else points // n_classes, 1))
    km.train(x)
    _, assign = km.index.search(x, 1)
    return float(normalized_mutual_info_score(labels, assign[:, 0]))


def evaluation_note(n_items: int, n_classes: int, dim: int, seed: int = 0) -> dict | None:
    """How the metrics of a set scored against itself were estimated (None when exact), for metrics.json."""
    sample = sampled_queries(n_items, n_items)
    points, niter = kmeans_points(n_items, n_classes, dim)
    if not sample and points == n_items:
        return None
    return {"queries": sample or n_items, "items": n_items, "seed": seed,
            "retrieval": ("every item scored exactly" if not sample else
                          "a uniform random sample of queries, each searched exactly against every item; "
                          "<metric>_se: the standard error over the queries (95 % interval: ± 1.96 SE)"),
            "nmi": f"faiss k-means, {niter} iterations, trained on {points} random items; every item assigned"}


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
