import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from core.evaluate import all_metrics, retrieval_metrics


def _clustered(n=400, dim=16, classes=12, spread=0.9, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim))
    x = centres[labels] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_metric_learning(seed):
    x, y = _clustered(seed=seed)
    ours = retrieval_metrics(x, y)
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"))
    ref = calc.get_accuracy(torch.tensor(x), torch.tensor(y))
    assert ours["recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-5)
    assert 0.2 < ours["recall@1"] < 1.0   # the data is neither trivial nor random


def test_query_gallery_matches_pytorch_metric_learning():
    x, y = _clustered(seed=2)
    q, ql, g, gl = x[:150], y[:150], x[150:], y[150:]
    ours = retrieval_metrics(q, ql, g, gl)
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"))
    ref = calc.get_accuracy(torch.tensor(q), torch.tensor(ql), torch.tensor(g), torch.tensor(gl), ref_includes_query=False)
    assert ours["recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-5)


def test_recall_is_monotone_and_nmi_tracks_structure():
    x, y = _clustered(spread=0.3)
    m = all_metrics(x, y, recall_ks=(1, 2, 4, 8, 16))
    ks = [m[f"recall@{k}"] for k in (1, 2, 4, 8, 16)]
    assert ks == sorted(ks)
    noise, _ = _clustered(spread=50.0)
    assert m["nmi"] > 0.9 > all_metrics(noise, y)["nmi"]


def test_precision_at_r_by_hand_and_the_dashboard_uses_it(monkeypatch):
    """R-Precision and MAP@R per query, computed by hand; the dashboard's per-query table calls this one
    implementation (no second copy in dashboard/logic.py)."""
    import core.neighbours
    from core.evaluate import precision_at_r
    from dashboard import logic

    hits = np.array([[1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]], bool)
    r_prec, map_r = precision_at_r(hits, np.array([2, 3, 0]))
    np.testing.assert_allclose(r_prec[:2], [1 / 2, 2 / 3])
    np.testing.assert_allclose(map_r[:2], [(1 / 1) / 2, (1 / 1 + 2 / 3) / 3])
    assert np.isnan(r_prec[2]) and np.isnan(map_r[2])
    calls = []
    monkeypatch.setattr(core.neighbours, "precision_at_r", lambda h, r: calls.append(len(r)) or precision_at_r(h, r))
    emb = np.eye(6, dtype=np.float32)
    logic.retrieval_table(emb, np.array([0, 0, 1, 1, 2, 2]))
    assert calls == [6]
