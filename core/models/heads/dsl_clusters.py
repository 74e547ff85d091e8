"""DSL's divide-and-conquer bookkeeping (methods.md §2.2, official `clustering.py` / `train.py`), kept apart
from the head so that each step is a plain function of arrays: cluster the train set, keep cluster ids
stable across re-clusterings, and turn a clustering into the epoch's per-cluster batch stream."""
from __future__ import annotations

import numpy as np


def kmeans_clusters(penultimate: np.ndarray, k: int, labels: np.ndarray, previous: np.ndarray | None = None, *,
                    niter: int = 100, nredo: int = 5, seed: int = 0) -> np.ndarray:
    """Cluster id (−1 = in no cluster) of every train item: faiss k-means on its L2-normalised pooled
    features, ids matched to `previous` (min-cost), then lone members of a class dropped from their cluster."""
    import faiss

    km = faiss.Kmeans(penultimate.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1_000_000)
    km.train(penultimate)
    assign = km.index.search(penultimate, 1)[1][:, 0].astype(np.int64)
    if previous is not None:
        assign = min_cost_reassign(previous, assign, k)
    return drop_singleton_classes(assign, labels)


def min_cost_reassign(previous: np.ndarray, current: np.ndarray, k: int) -> np.ndarray:
    """Relabel `current` cluster ids (0..k-1) to overlap most with `previous` (−1 = unassigned).

    Hungarian assignment on the negative overlap counts; clusters left unmatched (k grew) take the
    smallest ids the previous clustering did not use, in order.
    """
    from scipy.optimize import linear_sum_assignment

    k_prev = int(previous.max()) + 1 if (previous >= 0).any() else 0
    overlap = np.zeros((k, max(k_prev, 1)), np.int64)
    both = (previous >= 0) & (current >= 0)
    np.add.at(overlap, (current[both], previous[both]), 1)
    rows, cols = linear_sum_assignment(-overlap[:, :k_prev]) if k_prev else (np.array([], int), np.array([], int))
    mapping = dict(zip(rows.tolist(), cols.tolist()))
    free = iter(i for i in range(k) if i not in mapping.values())
    for c in range(k):
        if c not in mapping:
            mapping[c] = next(free)
    lut = np.asarray([mapping[c] for c in range(k)])
    return np.where(current >= 0, lut[np.clip(current, 0, None)], -1)


def drop_singleton_classes(assign: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A class with a single sample inside a cluster leaves that cluster (official `clustering.py`)."""
    assign = assign.copy()
    for c in np.unique(assign[assign >= 0]):
        in_c = assign == c
        classes, counts = np.unique(labels[in_c], return_counts=True)
        for lone in classes[counts == 1]:
            assign[in_c & (labels == lone)] = -1
    return assign


def round_robin_cluster_batches(assign: np.ndarray, labels: np.ndarray, k: int, batch_size: int, m_per_class: int,
                                seed: int) -> list[tuple[list[int], int]]:
    """Class-balanced batches per cluster (MPerClassSampler), interleaved round-robin as (indices, cluster);
    shorter clusters cycle (official `merge`). A cluster with fewer than two classes is skipped."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    streams: list[list[list[int]]] = []
    for c in range(k):
        idx = np.flatnonzero(assign == c)
        n_classes = len(np.unique(labels[idx]))
        if n_classes < 2:
            streams.append([])
            continue
        batch = min(batch_size, n_classes * m_per_class)
        batch -= batch % m_per_class
        np.random.seed((seed + c + 1) % 2**32)  # the sampler draws from np.random
        sampler = MPerClassSampler(labels[idx], m_per_class, batch_size=batch,
                                   length_before_new_iter=max(len(idx), batch))
        order = idx[np.asarray(list(iter(sampler)), dtype=np.int64)]
        streams.append([order[i:i + batch].tolist() for i in range(0, len(order) - batch + 1, batch)])
    longest = max((len(s) for s in streams), default=0)
    return [(s[j % len(s)], c) for j in range(longest) for c, s in enumerate(streams) if s]
