"""Nearest neighbours of every item, exact or approximate by size, and the artifact that keeps them.

Every item's top-k (leave-one-out, cosine on unit embeddings) and its per-item retrieval scores (R-precision,
MAP@R, rank of the first true match) are computed once, where a run is written (`core.artifacts`, the importer),
and saved beside the embeddings, so the dashboard reads them instead of searching all pairs again.

- Up to EXACT_MAX_ITEMS items: exact (faiss brute force), in query chunks of bounded memory.
- Above: an IVF index (faiss IndexIVFFlat, about 4·√N cells), its number of probed cells raised until its
  recall@10 against exact search, measured on a sample of queries, reaches RECALL_TARGET (or MAX_NPROBE).
  Exact all-pairs search costs N²·D multiply-adds (100× more at 1M items than at 100k); the IVF pass scans a
  few percent of the items per query. The recall is saved with the artifact (timings: BENCHMARKS.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import io
from core.run_dir import (ARTIFACTS, EMBEDDINGS, ITEM_SCORES, LABELS, NEIGHBOUR_IDS, NEIGHBOUR_SIMS,
                          NEIGHBOURS_INFO)

EXACT_MAX_ITEMS = 100_000     # above: approximate all-items search (and sampled metrics, core.evaluate)
SAVED_K = 32                  # neighbours kept per item: the most any page lists (Retrieval's k slider)
RECALL_TARGET, MAX_NPROBE = 0.95, 64
RECALL_QUERIES = 1000         # queries the IVF recall is measured on
CHUNK_RESULTS = 20_000_000    # (query, neighbour) pairs per search call: bounds the result memory
CHUNK_MAX_ROWS = 16 * 4096    # and at most this many queries, so progress is reported every few seconds
FAISS_BLOCK = 4096            # faiss's own query block for exact search: chunks are multiples of it, so a
                              # chunked search computes every similarity exactly as one call would
SCORE_DTYPE = np.dtype([("relevant", "<i4"), ("r_precision", "<f4"), ("map_at_r", "<f4"),
                        ("first_match_rank", "<i4")])


def as_float32(x: np.ndarray) -> np.ndarray:
    """What faiss takes: C-contiguous float32 (no copy when it already is, e.g. a memory-mapped .npy)."""
    return np.ascontiguousarray(x, dtype=np.float32)


def _chunk_rows(k: int, block: int = FAISS_BLOCK) -> int:
    return max(block, min(CHUNK_MAX_ROWS, CHUNK_RESULTS // max(k, 1)) // block * block)


def drop_self(sims: np.ndarray, ids: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id from a (k+1)-wide result (ties can put it anywhere, so by identity; a row
    where it is absent loses its last entry instead)."""
    if (ids[:, 0] == self_ids).all():      # the usual case: each query is its own nearest, a slice drops it
        return sims[:, 1:k + 1], ids[:, 1:k + 1]
    keep = ids != self_ids[:, None]
    keep[keep.sum(1) > ids.shape[1] - 1, -1] = False
    width = ids.shape[1] - 1
    return sims[keep].reshape(len(ids), width)[:, :k], ids[keep].reshape(len(ids), width)[:, :k]


def search(index, queries: np.ndarray, k: int, self_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of `queries` in a faiss index, in chunks (memory: CHUNK_RESULTS pairs); `self_ids[j]` (the
    index id of query j) is left out of its own list. Returns (similarities, ids); ids -1 where an
    approximate index found fewer than k."""
    n, extra = len(queries), int(self_ids is not None)
    k_eff = min(k + extra, index.ntotal)
    step = _chunk_rows(k_eff)
    sims = np.empty((n, k_eff - extra), np.float32)
    ids = np.empty((n, k_eff - extra), np.int64)
    for start in range(0, n, step):
        stop = min(n, start + step)
        s, i = index.search(as_float32(queries[start:stop]), k_eff)
        if self_ids is not None:
            s, i = drop_self(s, i, np.asarray(self_ids[start:stop]), k_eff - 1)
        sims[start:stop], ids[start:stop] = s, i
    return sims, ids


class ExactSearch:
    """Exact inner-product search over `reference` (faiss's brute force, the same kernel as IndexFlatIP),
    without copying the reference into an index."""

    def __init__(self, reference: np.ndarray):
        self.reference = as_float32(reference)
        self.ntotal = len(self.reference)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss
        return faiss.knn(as_float32(queries), self.reference, k, metric=faiss.METRIC_INNER_PRODUCT)


def ivf_index(emb: np.ndarray, seed: int = 0):
    """An IVF index of ~4·√N cells, its coarse k-means trained (10 iterations) on at most 64 points a cell."""
    import faiss

    n, dim = emb.shape
    nlist = int(min(max(16, 4 * math.sqrt(n)), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter, index.cp.seed, index.cp.max_points_per_centroid = 10, seed, 64
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))
    index.train(as_float32(emb[train]))
    for start in range(0, n, 200_000):   # add in slices: one float32 copy of the whole set at most
        index.add(as_float32(emb[start:start + 200_000]))
    return index


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean share of the true top-k found in the approximate top-k."""
    found, truth = found[:, :k], truth[:, :k]
    return float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth)]))


def calibrate(index, emb: np.ndarray, seed: int = 0, k: int = 10) -> dict:
    """Probe more cells (8, 16, 32, 64) until recall@k against exact search, on RECALL_QUERIES items, reaches
    RECALL_TARGET; sets index.nprobe and returns {nprobe, recall@k, queries}."""
    rng = np.random.default_rng(seed + 1)
    queries = np.sort(rng.choice(len(emb), min(len(emb), RECALL_QUERIES), replace=False))
    _, truth = search(ExactSearch(emb), emb[queries], k, self_ids=queries)
    for nprobe in (8, 16, 32, MAX_NPROBE):
        index.nprobe = nprobe
        _, found = search(index, emb[queries], k, self_ids=queries)
        recall = recall_at(found, truth, k)
        if recall >= RECALL_TARGET:
            break
    return {"nprobe": int(index.nprobe), f"recall@{k}": round(recall, 4), "recall_queries": len(queries)}


# ---- per-item retrieval scores --------------------------------------------------------------------
def precision_at_r(hits: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query (R-Precision, MAP@R) from `hits` (Q×k, neighbour i shares the query's class, k ≥ R) and
    `relevant` (Q: R, the number of same-class references); nan where R = 0. The one implementation: the
    averaged metrics (core.evaluate), the saved per-item scores and the dashboard's table all use it."""
    hits, relevant = np.asarray(hits, bool), np.asarray(relevant)
    hits_r = hits & (np.arange(hits.shape[1])[None, :] < relevant[:, None])
    precision_at_i = np.cumsum(hits_r, 1) / np.arange(1, hits.shape[1] + 1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        r_precision = np.where(relevant > 0, hits_r.sum(1) / relevant, np.nan)
        map_at_r = np.where(relevant > 0, (precision_at_i * hits_r).sum(1) / relevant, np.nan)
    return r_precision, map_at_r


def class_sizes(labels: np.ndarray) -> np.ndarray:
    """Per item R: the number of other items of its class."""
    _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    return (counts[inverse] - 1).astype(np.int32)


def scores_of(ids: np.ndarray, ref_labels: np.ndarray, query_labels: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per query (a SCORE_DTYPE record): R, R-precision, MAP@R and the 1-based rank of the first true match
    (k + 1 when none is within the k searched), from its neighbour ids (-1: none found) and R."""
    ref_labels = np.asarray(ref_labels)
    hits = (ids >= 0) & (ref_labels[np.maximum(ids, 0)] == np.asarray(query_labels)[:, None])
    out = np.empty(len(ids), SCORE_DTYPE)
    out["relevant"] = relevant
    out["r_precision"], out["map_at_r"] = precision_at_r(hits, relevant)
    out["first_match_rank"] = np.where(hits.any(1), hits.argmax(1) + 1, ids.shape[1] + 1)
    return out


@dataclass
class Neighbours:
    """Every item's top-k other items, best first (ids -1 / similarity nan where fewer were found), its
    retrieval scores, and how they were found (`info`: exact or IVF with its recall@10)."""
    ids: np.ndarray          # N×k int32
    sims: np.ndarray         # N×k float32
    scores: np.ndarray       # N, SCORE_DTYPE
    info: dict = field(default_factory=dict)

    def hits(self, labels: np.ndarray) -> np.ndarray:
        """N×k: neighbour j of item i shares its label (False where none was found)."""
        labels = np.asarray(labels)
        if labels.dtype.kind in "iu" and len(labels) and -2**31 <= labels.min() and labels.max() < 2**31:
            labels = labels.astype(np.int32)    # gathered N×k times: half the memory traffic of int64
        ids = np.asarray(self.ids)
        return (ids >= 0) & (np.take(labels, np.maximum(ids, 0)) == labels[:, None])


def search_depths(relevant: np.ndarray, k: int, depth: int) -> np.ndarray:
    """Per query, how far to search: max(k, R) rounded up to k·2^j (at most `depth`). A query needs its top R for
    R-precision and MAP@R; searching every query to the largest R (hundreds where classes are large) made the
    heaps and result arrays of every query that deep."""
    need = np.maximum(np.asarray(relevant), k)
    steps = np.ceil(np.log2(np.maximum(need / max(k, 1), 1))).astype(int)
    return np.minimum(k * 2 ** steps, depth)


def all_neighbours(emb: np.ndarray, labels: np.ndarray, k: int = SAVED_K, exact: bool | None = None,
                   progress=None, seed: int = 0) -> Neighbours:
    """Every item's top-k neighbours and its scores. Each query is searched to max(k, its R) (`search_depths`), so
    R-precision and MAP@R see every rank they need; a query with no true match that deep is searched again to the
    largest R (`depth`), so the rank of the first true match is exact up to it. Only the first k are kept."""
    n, labels = len(emb), np.asarray(labels)
    exact = n <= EXACT_MAX_ITEMS if exact is None else exact
    relevant = class_sizes(labels)
    depth = int(min(n - 1, max(k, relevant.max(initial=1))))
    if exact:
        index, info = ExactSearch(emb), {"method": "exact (faiss brute force)"}
    else:
        if progress:
            progress(0, 1, "neighbours: training the IVF index")
        index = ivf_index(emb, seed)
        info = {"method": f"faiss IndexIVFFlat, {index.nlist} cells", **calibrate(index, emb, seed)}
    keep = min(k, n - 1)
    ids, sims = np.empty((n, keep), np.int32), np.empty((n, keep), np.float32)
    scores = np.empty(n, SCORE_DTYPE)
    depths = search_depths(relevant, keep, depth)

    def scored(rows: np.ndarray, d: int):
        s, i = search(index, emb[rows], d, self_ids=rows)
        return s, i, scores_of(i, labels, labels[rows], relevant[rows])

    step = _chunk_rows(depth + 1)
    for start in range(0, n, step):   # one chunk at a time: its lists are scored, then trimmed to k
        stop = min(n, start + step)
        for d in np.unique(depths[start:stop]).tolist():
            rows = start + np.flatnonzero(depths[start:stop] == d)
            s, i, found = scored(rows, d)
            again = np.flatnonzero(found["first_match_rank"] > d) if d < depth else []
            if len(again):                # no true match within d: the first one's rank needs the full depth
                found[again] = scored(rows[again], depth)[2]
            scores[rows] = found
            ids[rows], sims[rows] = i[:, :keep], np.where(i[:, :keep] >= 0, s[:, :keep], np.nan)
        if progress:
            progress(stop, n, f"neighbours of {n} items ({'exact' if exact else 'IVF'})")
    info.update(k=keep, depth=depth, items=n, exact=bool(exact))
    return Neighbours(ids, sims, scores, info)


# ---- the artifact ---------------------------------------------------------------------------------
def write_neighbours(art_dir: str | Path, found: Neighbours) -> None:
    art = Path(art_dir)
    io.atomic_save_npy(art / NEIGHBOUR_IDS, found.ids)
    io.atomic_save_npy(art / NEIGHBOUR_SIMS, found.sims)
    io.atomic_save_npy(art / ITEM_SCORES, found.scores)
    io.write_json(art / NEIGHBOURS_INFO, found.info)   # last: its presence says the three arrays are whole


def read_neighbours(run_dir: str | Path, mmap: bool = True) -> Neighbours | None:
    """The saved artifact (memory-mapped: a 1M-item run's lists stay on disk until read), or None when the
    run has none (runs written before it existed: see `ensure_neighbours`)."""
    art = Path(run_dir) / ARTIFACTS
    if not (art / NEIGHBOURS_INFO).exists():
        return None
    return Neighbours(io.read_npy(art / NEIGHBOUR_IDS, mmap), io.read_npy(art / NEIGHBOUR_SIMS, mmap),
                      io.read_npy(art / ITEM_SCORES, mmap), io.read_json(art / NEIGHBOURS_INFO))


def saved_neighbours(run_dir: str | Path) -> Neighbours | None:
    """The run's saved neighbours if they are as new as its embeddings, else None."""
    art = Path(run_dir) / ARTIFACTS
    info = art / NEIGHBOURS_INFO
    if info.exists() and info.stat().st_mtime >= (art / EMBEDDINGS).stat().st_mtime:
        return read_neighbours(run_dir)
    return None


def ensure_neighbours(run_dir: str | Path, progress=None) -> Neighbours:
    """The run's saved neighbours, computed and saved first when missing or older than its embeddings."""
    art = Path(run_dir) / ARTIFACTS
    found = saved_neighbours(run_dir)
    if found is not None:
        return found
    found = all_neighbours(io.read_npy(art / EMBEDDINGS, mmap=True), io.read_npy(art / LABELS), progress=progress)
    write_neighbours(art, found)
    return read_neighbours(run_dir)


# ---- comparing two runs' neighbours -----------------------------------------------------------------
def topk_overlap(ids_a: np.ndarray, ids_b: np.ndarray, k: int) -> np.ndarray:
    """Per item, |A ∩ B| / |A ∪ B| of two top-k lists (ids within a list are distinct), vectorised: both lists
    side by side, sorted per row, an id in both is a pair of equal neighbours."""
    a, b = np.asarray(ids_a)[:, :k], np.asarray(ids_b)[:, :k]
    both = np.sort(np.concatenate([a, b], 1), 1)
    common = ((both[:, 1:] == both[:, :-1]) & (both[:, 1:] >= 0)).sum(1)
    size = (a >= 0).sum(1) + (b >= 0).sum(1) - common
    return common / np.maximum(size, 1)
