"""Every item's saved neighbours and scores (core/neighbours.py), and metrics on large sets (core/evaluate.py):
exact on a shipped run, the IVF index's reported recall, the sampled metrics' error bars (issue 27)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core import evaluate, neighbours
from core.run_dir import ARTIFACTS, EMBEDDINGS, LABELS, NEIGHBOURS_INFO
from dashboard import logic
from dashboard_testing import demo_runs


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    return Path(demo_runs(tmp_path_factory.mktemp("runs"), 1)[0])


def clustered(n: int, classes: int, dim: int = 32, latent: int = 12, spread: float = 0.7, seed: int = 0):
    """Unit embeddings of `classes` clusters of uneven size, of low intrinsic dimension (as trained ones are)."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0, 0.5, classes)
    labels = np.r_[np.arange(classes), rng.choice(classes, n - classes, p=weights / weights.sum())]
    mix = rng.normal(size=(latent, dim))
    x = (rng.normal(size=(classes, latent))[labels] + spread * rng.normal(size=(n, latent))) @ mix
    x += 0.1 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_saved_neighbours_of_a_run_are_the_exact_ones(shipped, tmp_path):
    """On a shipped run's real embeddings: every item's top-32 and scores equal brute force and the dashboard's
    own leave-one-out table; computed for a run written before the artifact existed, then read back."""
    run = tmp_path / "run"
    shutil.copytree(shipped, run)
    (run / ARTIFACTS / NEIGHBOURS_INFO).unlink(missing_ok=True)    # an older run: no saved neighbours
    assert neighbours.read_neighbours(run) is None
    found = neighbours.ensure_neighbours(run)
    emb, labels = np.load(run / ARTIFACTS / EMBEDDINGS), np.load(run / ARTIFACTS / LABELS)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    brute = np.argsort(-sims, axis=1, kind="stable")[:, :32]
    assert found.info["exact"] and found.ids.shape == (len(emb), 32)
    assert (found.ids == brute).mean() > 0.999                       # float ties aside, the same lists
    assert np.allclose(found.sims, np.take_along_axis(sims, found.ids.astype(int), 1), atol=1e-5)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :-1]          # every other item, by brute force
    hits = labels[order] == labels[:, None]
    relevant = hits.sum(1)
    r_prec = np.array([h[:r].mean() if r else np.nan for h, r in zip(hits, relevant)])
    map_r = np.array([(np.cumsum(h[:r]) / np.arange(1, r + 1) * h[:r]).sum() / r if r else np.nan
                      for h, r in zip(hits, relevant)])
    np.testing.assert_allclose(found.scores["r_precision"], r_prec, atol=1e-5)
    np.testing.assert_allclose(found.scores["map_at_r"], map_r, atol=1e-5)
    first, depth = hits.argmax(1) + 1, found.info["depth"]          # searched to depth: beyond it, depth + 1
    within = first <= depth
    assert (found.scores["first_match_rank"][within] == first[within]).mean() > 0.999   # float ties aside
    assert (found.scores["first_match_rank"][~within] == depth + 1).all()
    table = logic.retrieval_table(emb, labels)                      # the dashboard's table: the same lists
    assert (table.neighbours == found.ids).all() and (table.top1_correct == hits[:, 0]).all()
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert evaluate.summarise(found.scores)["recall@1"] == pytest.approx(saved["recall@1"], abs=1e-6)
    again = neighbours.read_neighbours(run)                          # memory-mapped, the same arrays
    assert isinstance(again.ids, np.memmap) and (again.ids == found.ids).all()


def test_the_ivf_index_reports_its_recall_against_exact_search():
    emb, labels = clustered(12_000, 600)
    found = neighbours.all_neighbours(emb, labels, exact=False)
    info = found.info
    assert not info["exact"] and "IndexIVFFlat" in info["method"] and info["recall_queries"] == 1000
    queries = np.arange(0, 12_000, 40)
    _, truth = evaluate.knn(emb[queries], emb, 10, exclude_self=True, query_ids=queries)
    measured = neighbours.recall_at(found.ids[queries], truth)
    assert info["recall@10"] >= 0.9 and abs(measured - info["recall@10"]) < 0.05   # what it says is what it does
    exact = neighbours.all_neighbours(emb, labels, exact=True)
    for name in ("r_precision", "map_at_r"):            # approximate lists: per-item scores close on average
        assert abs(found.scores[name].mean() - exact.scores[name].mean()) < 0.02


def test_sampled_metrics_carry_error_bars_that_cover_the_exact_value(monkeypatch):
    """A mid-size set scored exactly, then with the thresholds lowered so 2,000 sampled queries estimate it:
    each estimate ± 1.96 SE covers the exact value, and the SE is the binomial one for R@1."""
    emb, labels = clustered(12_000, 600)
    exact = evaluate.retrieval_metrics(emb, labels)
    assert not any(key.endswith("_se") for key in exact)
    monkeypatch.setattr(neighbours, "EXACT_MAX_ITEMS", 4_000)
    monkeypatch.setattr(evaluate, "SAMPLED_QUERIES", 2_000)
    estimate = evaluate.retrieval_metrics(emb, labels)
    for name, value in exact.items():
        assert abs(estimate[name] - value) <= 1.96 * estimate[f"{name}_se"], (name, estimate[name], value)
    p = estimate["recall@1"]
    assert estimate["recall@1_se"] == pytest.approx(np.sqrt(p * (1 - p) / 2_000 * (1 - 2_000 / 12_000)), rel=0.01)
    assert estimate["recall@1"] != exact["recall@1"]     # it did sample
    note = evaluate.evaluation_note(12_000, 600, 32)
    assert note["queries"] == 2_000 and "standard error" in note["retrieval"]


def test_a_query_with_no_same_class_item_does_not_find_itself():
    """Classes with a single item are no query, but stay references; before, the remaining queries' own rows
    were not recognised as themselves, so every query found itself at rank 1 (R@1 = 1)."""
    rng = np.random.default_rng(0)
    labels = np.r_[rng.integers(0, 20, 400), np.arange(100, 130)]
    rng.shuffle(labels)
    x = rng.normal(size=(200, 16))[labels] + 0.9 * rng.normal(size=(len(labels), 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    valid = np.bincount(labels)[labels] > 1
    brute = (labels[sims.argmax(1)] == labels)[valid].mean()
    assert evaluate.retrieval_metrics(x, labels)["recall@1"] == pytest.approx(brute) and brute < 0.95


def test_nmi_on_a_sample_of_items_stays_close_to_full_k_means(monkeypatch):
    emb, labels = clustered(12_000, 300, spread=0.5)
    full = evaluate.nmi(emb, labels)
    assert evaluate.kmeans_points(12_000, 300, 32) == (12_000, 50)
    monkeypatch.setattr(evaluate, "NMI_MAX_MACS", 12_000 * 300 * 32 * 10 // 2)     # half the items
    assert evaluate.kmeans_points(12_000, 300, 32) == (7_500, 10)                  # at least 25 a centroid
    assert evaluate.nmi(emb, labels) == pytest.approx(full, abs=0.02)
    assert evaluate.nmi(emb, np.random.default_rng(0).permutation(labels)) < full - 0.3   # it still measures


def test_topk_overlap_is_the_jaccard_of_the_two_lists():
    rng = np.random.default_rng(0)
    a = np.stack([rng.permutation(50)[:10] for _ in range(200)])
    b = np.stack([rng.permutation(50)[:10] for _ in range(200)])
    b[:20, :8] = a[:20, 7::-1]                          # the same top-8 sets in another order
    b[20:40, 5:] = -1                                   # fewer found
    expected = [len(set(x[:8]) & set(y[:8]) - {-1}) / len((set(x[:8]) | set(y[:8])) - {-1}) for x, y in zip(a, b)]
    assert np.allclose(neighbours.topk_overlap(a, b, 8), expected)
    assert np.allclose(neighbours.topk_overlap(a, b, 8)[:20], 1.0)


def test_a_large_import_says_how_its_metrics_and_neighbours_were_estimated(tmp_path, monkeypatch):
    """`python -m core import` past the (lowered) exact threshold: sampled metrics with standard errors that
    cover the exact values, metrics.json's evaluation and neighbours records, and the saved artifact."""
    from core.__main__ import main
    from core.importer import IMPORTED

    emb, labels = clustered(12_000, 600)
    np.save(tmp_path / "emb.npy", emb)
    (tmp_path / "labels.csv").write_text("label,site\n" + "".join(f"c{l},s{l % 5}\n" for l in labels))
    exact = evaluate.retrieval_metrics(emb, labels)
    monkeypatch.setattr(neighbours, "EXACT_MAX_ITEMS", 4_000)
    monkeypatch.setattr(evaluate, "SAMPLED_QUERIES", 2_000)
    run = tmp_path / "run"
    assert main(["import", "--embeddings", str(tmp_path / "emb.npy"), "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(run)]) == 0
    record = json.loads((run / "metrics.json").read_text())
    assert record["evaluation"]["queries"] == 2_000 and record["evaluation"]["items"] == 12_000
    for name in ("recall@1", "map_at_r", "r_precision"):
        assert abs(record["test"][name] - exact[name]) <= 1.96 * record["test"][f"{name}_se"]
    assert not record["neighbours"]["exact"] and record["neighbours"]["recall@10"] >= 0.9
    found = neighbours.read_neighbours(run)
    assert found.ids.shape == (12_000, 32) and found.info == record["neighbours"]
    assert (found.ids != np.arange(12_000)[:, None]).all()                    # nobody is their own neighbour
    from core.item_store import read_items
    assert read_items(run / ARTIFACTS).row(7)["site"] == f"s{labels[7] % 5}"
    assert json.loads((run / "config.json").read_text())["data"]["name"] == IMPORTED


def test_each_query_searched_to_its_own_depth_scores_as_one_search_to_the_largest():
    """Queries are searched to max(k, R) rounded up (core.neighbours.search_depths), not all to the largest R; the
    lists and scores are those of one search of every query to the largest R (exact search: a shallower top is a
    prefix of a deeper one), the first true match's rank included where it lies beyond a query's own depth."""
    emb, labels = clustered(3_000, 25, spread=1.6)   # classes of ~50-250 items: several depths, some misses
    found = neighbours.all_neighbours(emb, labels, exact=True)
    relevant = neighbours.class_sizes(labels)
    depth = found.info["depth"]
    depths = neighbours.search_depths(relevant, 32, depth)
    assert len(np.unique(depths)) >= 3 and depths.max() == depth and (depths >= np.maximum(relevant, 32)).all()
    rows = np.arange(len(emb))
    sims, ids = neighbours.search(neighbours.ExactSearch(emb), emb, depth, self_ids=rows)
    whole = neighbours.scores_of(ids, labels, labels, relevant)
    beyond = whole["first_match_rank"] > depths     # found again at the full depth
    assert beyond.any() and (found.scores["first_match_rank"] == whole["first_match_rank"]).mean() > 0.999
    for name in ("r_precision", "map_at_r"):
        np.testing.assert_allclose(found.scores[name], whole[name], atol=1e-6)
    assert (found.ids == ids[:, :32]).mean() > 0.999 and np.allclose(found.sims, sims[:, :32], atol=1e-6)
