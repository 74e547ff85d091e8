"""Class-balanced batches (pytorch-metric-learning's `MPerClassSampler`), the one place they are built:
the trainer's default epoch and DSL's per-cluster streams both come from here."""
from __future__ import annotations

import numpy as np
from pytorch_metric_learning.samplers import MPerClassSampler


def class_balanced_batches(labels: np.ndarray, m_per_class: int, batch_size: int, seed: int,
                           min_batches: int = 1) -> list[list[int]]:
    """Full batches of positions into `labels`, each `m_per_class` images of batch/m classes.

    The batch shrinks to what the classes allow (at most n_classes·m, a multiple of m); one pass covers
    max(len(labels), `min_batches`·batch) positions. Seeded: the sampler draws from np.random."""
    n_classes = len(np.unique(labels))
    batch = min(batch_size, n_classes * m_per_class)
    batch -= batch % m_per_class
    np.random.seed(seed % 2**32)
    sampler = MPerClassSampler(labels, m_per_class, batch_size=batch,
                               length_before_new_iter=max(len(labels), batch * min_batches))
    order = [int(i) for i in sampler]
    return [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]
