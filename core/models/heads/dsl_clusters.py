"""DSL's divide-and-conquer bookkeeping (methods.md §2.2, official `clustering.py` / `train.py`), kept apart
from the head so that each step is a plain function of arrays: cluster the train set, keep cluster ids
stable across re-clusterings, and turn a clustering into the epoch's per-cluster batch stream; and the
head's schedule built on them (`ClusterSchedule`, a mixin of `DSLHead`)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from core.run_dir import DSL_CLUSTERS as CLUSTERS_FILE  # the last clustering, for resume
from core.sampling import class_balanced_batches

if TYPE_CHECKING:
    from core.train_context import TrainContext

log = logging.getLogger(__name__)


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
    streams: list[list[list[int]]] = []
    for c in range(k):
        idx = np.flatnonzero(assign == c)
        if len(np.unique(labels[idx])) < 2:
            streams.append([])
            continue
        batches = class_balanced_batches(labels[idx], m_per_class, batch_size, seed=seed + c + 1)
        streams.append([idx[b].tolist() for b in batches])
    longest = max((len(s) for s in streams), default=0)
    return [(s[j % len(s)], c) for j in range(longest) for c, s in enumerate(streams) if s]


class ClusterSchedule:
    """`DSLHead`'s batch schedule: per-cluster batches (`Head.epoch_batches`) until fine-tuning, the train
    set re-clustered every `recluster_every` epochs and after a learner was added. Keeps `assign`
    (cluster id per train item, −1: in none), `assign_epoch`; written as CLUSTERS_FILE for resume."""

    def resume_clusters(self, ctx: TrainContext) -> None:
        """The clustering an interrupted run had written, if it still fits the train set."""
        saved = ctx.read_artifact(CLUSTERS_FILE)
        if self.assign is None and saved is not None and len(self.learners) > 1 and len(saved) == len(ctx.train_labels):
            self.assign, self.assign_epoch = saved.astype(np.int64), -1
            self._assign_k = int(self.assign.max()) + 1

    def epoch_batches(self, ctx: TrainContext, epoch: int):
        if self.in_finetune(epoch) or len(self.learners) == 1:
            return None  # the trainer's class-balanced sampler over all data; loss on the whole vector
        k = len(self.learners)
        stale = self.assign is None or int(self.assign.max()) + 1 > k
        grew = self.recluster_on_growth and self.assign is not None and self.assign_k != k
        due = epoch > 0 and epoch % self.recluster_every == 0 and self.assign_epoch != epoch
        if stale or grew or due:
            self.recluster(ctx, epoch)
        batches = self.cluster_batches(ctx, epoch)
        if not batches:  # no cluster holds two classes: train the whole embedding this epoch
            log.warning("dsl: epoch %d has no cluster with two classes; using the default sampler", epoch)
            return None
        return batches

    @property
    def assign_k(self) -> int:
        return self._assign_k if self.assign is not None else 0

    def recluster(self, ctx: TrainContext, epoch: int) -> None:
        k = len(self.learners)
        # L2norm(GAP(F⊙A)) of every train item with the test-time transform (official `init` loader)
        self.assign = kmeans_clusters(ctx.embed_train_set(self.penultimate), k, ctx.train_labels,
                                      previous=self.assign, niter=self.kmeans_niter, nredo=self.kmeans_nredo,
                                      seed=int(ctx.seed) * 1000 + epoch + 1)
        self.assign_epoch, self._assign_k = epoch, k
        sizes = np.bincount(self.assign[self.assign >= 0], minlength=k).tolist()
        log.info("dsl: epoch %d re-clustered the train set into %d clusters of sizes %s", epoch, k, sizes)

    def cluster_batches(self, ctx: TrainContext, epoch: int) -> list[tuple[list[int], int]]:
        return round_robin_cluster_batches(self.assign, ctx.train_labels, len(self.learners), ctx.batch_size,
                                           ctx.m_per_class, seed=(ctx.seed * 100_003 + epoch * 101) % 2**32)
