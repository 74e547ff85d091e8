"""2-D projections at scale (core/projection.py): PCA without an SVD of the data, UMAP fitted on a sample."""
from __future__ import annotations

import numpy as np
import pytest

from core import projection


def test_pca_matches_an_svd_of_the_centred_data_with_fixed_signs(monkeypatch):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(5_000, 24)) * np.linspace(3, 0.1, 24) + 5).astype(np.float32)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    reference = centred @ vt[:2].T
    xy = projection.pca_2d(x)
    assert xy.shape == (5_000, 2) and xy.dtype == np.float32
    assert np.allclose(np.abs(xy), np.abs(reference), atol=1e-3)
    # the same axes for the mirrored data (each signed by its largest loading), so its map is mirrored too
    assert np.allclose(projection.pca_2d(-x), -xy, atol=1e-3)
    monkeypatch.setattr(projection, "PCA_CHUNK", 700)   # chunks that do not divide the rows: the same map
    assert np.allclose(projection.pca_2d(x), xy, atol=1e-4)


@pytest.mark.slow
def test_umap_of_a_large_set_is_fitted_on_a_sample_and_reports_progress(monkeypatch):
    """Thresholds lowered so 3,000 items take the large-set path: fit on 1,000, transform the rest in chunks of
    800, progress after the fit and after each chunk; neighbours in the embedding stay neighbours on the map."""
    monkeypatch.setattr(projection, "UMAP_SEEDED_MAX", 500)
    monkeypatch.setattr(projection, "UMAP_FIT_SAMPLE", 1_000)
    monkeypatch.setattr(projection, "TRANSFORM_CHUNK", 800)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 3_000)
    x = rng.normal(size=(6, 16))[labels] + 0.3 * rng.normal(size=(3_000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    steps = []
    xy = projection.umap_2d(x, report=lambda step, total, message: steps.append((step, total)))
    assert xy.shape == (3_000, 2) and np.isfinite(xy).all()
    assert steps == [(i, 5) for i in range(6)]           # start, fit, 4 chunks
    centres = np.stack([xy[labels == c].mean(0) for c in range(6)])
    spread = np.mean([np.linalg.norm(xy[labels == c] - centres[c], axis=1).mean() for c in range(6)])
    apart = np.mean([np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1:]])
    assert apart > 3 * spread                            # classes stay apart on the map, fitted or transformed
