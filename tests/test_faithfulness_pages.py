"""Faithfulness in the dashboard (issue 26): the counterfactual re-ranking panel on Retrieval and Attention, the notes
beside each map on Attention, and the run-level faithfulness table with its background job.

Real input: the shipped shapes runs (or tiny fresh ones), their model and stored test embeddings. Selections on the
grid are injected as the browser sends them (AppTest cannot drive plotly); every number the pages show is checked
against the model computed here directly.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.faithfulness import Pair, PairScorer, drop_at, score_map
from core.rerank import Reranker, cells_by_map
from tests.test_dashboard_pages import open_app, runs, texts  # noqa: F401  (runs: the pages' demo-run fixture)

ROOT = Path(__file__).resolve().parents[1]


def listed(monkeypatch, run: Path) -> str:
    """A run made in a test folder, listed beside the demo runs (the app opens only listed runs)."""
    monkeypatch.setenv("METRICLENS_RUNS", os.pathsep.join([os.environ["METRICLENS_RUNS"], str(run.parent)]))
    return str(run)


def picker(at, page: str):
    return next(c for c in at.get("plotly_chart") if c.key and c.key.startswith(f"rerank_picker_{page}_"))


def select(at, page: str, cells, region: bool = False) -> None:
    """Cells picked on the query's grid, as a click (one point) or a box (points + the box) arrives."""
    at.session_state[picker(at, page).key] = {"selection": {
        "points": [{"customdata": int(c)} for c in cells], "point_indices": list(map(int, cells)),
        "box": [{"x": [0, 1], "y": [0, 1]}] if region else [], "lasso": []}}
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def rows(at) -> list[dict]:
    tables = [d.value for d in at.dataframe if "rank now" in d.value.columns]    # the re-ranking table
    assert len(tables) == 1
    return tables[0].to_dict("records")


def summary(at) -> str:
    return next(m.value for m in at.markdown if "cells hidden" in m.value)


def hidden_count(at) -> tuple[int, int]:
    hidden, cells = re.search(r"\*\*(\d+) of (\d+) cells hidden", summary(at)).groups()
    return int(hidden), int(cells)


@pytest.fixture(scope="module")
def engine(runs):
    """The re-ranking the page should show for query 2 of the first run, computed here."""
    from core.run_items import RunItems
    items = RunItems(runs[0])
    return items, Reranker(items.model, items.image(2), items.embeddings, exclude=2)


# ---- re-ranking ------------------------------------------------------------------------------------------
def test_nothing_hidden_lists_the_original_ranking(runs, engine):
    items, reranker = engine
    at = open_app(runs[0], "retrieval", query=2)
    table = rows(at)
    assert hidden_count(at)[0] == 0
    assert [r["item"] for r in table] == reranker.order_before[:8].tolist()
    stored = np.argsort(-(items.embeddings @ items.embeddings[2] - 9 * (np.arange(len(items)) == 2)), kind="stable")
    assert [r["item"] for r in table][:3] == stored[:3].tolist()        # the stored embeddings rank them alike
    assert all(r["rank now"] == r["rank before"] and r["moved"] == 0 and r["Δ cosine"] == 0 for r in table)


def test_hiding_the_whole_image_reranks_against_the_filled_query(runs, engine):
    items, reranker = engine
    at = open_app(runs[0], "retrieval", query=2)
    hidden, cells = hidden_count(at)
    select(at, "retrieval", range(cells), region=True)
    assert hidden_count(at) == (cells, cells)
    with torch.inference_mode():
        filled = reranker.filled[None]
        expected = items.embeddings @ F.normalize(items.model(filled), dim=-1)[0].numpy()
    expected[2] = -np.inf
    table = rows(at)
    now = [r for r in table if r["top-k"] != "left"]
    assert [r["item"] for r in now] == np.argsort(-expected, kind="stable")[:8].tolist()
    for r in table:
        assert r["cosine now"] == pytest.approx(expected[r["item"]], abs=1e-4)
        assert r["Δ cosine"] == pytest.approx(r["cosine now"] - r["cosine before"], abs=1e-6)
        assert r["moved"] == r["rank before"] - r["rank now"]
    assert any(r["moved"] != 0 for r in table)
    # a region over hidden cells only shows them again; Reset shows everything
    select(at, "retrieval", [0, 1], region=True)
    assert hidden_count(at)[0] == cells - 2
    at.button(key="rerank_reset_retrieval").click().run()
    assert hidden_count(at)[0] == 0 and all(r["moved"] == 0 for r in rows(at))


def test_a_click_toggles_one_cell(runs):
    at = open_app(runs[0], "retrieval", query=2)
    select(at, "retrieval", [9])
    assert hidden_count(at)[0] == 1 and at.session_state["rerank_hidden"]["cells"] == [9]
    select(at, "retrieval", [9])                          # the same cell again (a fresh chart): shown again
    assert hidden_count(at)[0] == 0
    at.session_state["query"] = 3                         # another query starts with nothing hidden
    at.run()
    assert hidden_count(at)[0] == 0


def test_hide_what_the_map_attends_to_and_keep_only_it_on_attention(runs, engine):
    """The buttons hide the chosen map's top share of the grid (or everything else), and the ranking moves."""
    from core.explain import explain

    items, reranker = engine
    at = open_app(runs[0], "attention", query=2)
    choice = at.selectbox(key="rerank_map_attention")
    label = next(o for o in choice.options if "Occlusion" in o)
    choice.set_value(label).run()
    at.slider(key="rerank_share_attention").set_value(0.25).run()
    at.button(key="rerank_hide_attention").click().run()
    assert not at.exception, [e.value for e in at.exception]
    hidden, cells = hidden_count(at)
    side = int(np.sqrt(cells))
    occlusion = explain(items.model, items.image(2), torch.from_numpy(items.embeddings[reranker.order_before[0]]),
                        explainer="occlusion").maps["attribution"]
    grid = F.adaptive_avg_pool2d(torch.as_tensor(np.asarray(occlusion, np.float32))[None, None], (side, side))[0, 0]
    expected = cells_by_map(grid.numpy(), 0.25)
    assert np.flatnonzero(expected).tolist() == at.session_state["rerank_hidden"]["cells"]
    assert hidden == expected.sum()
    moved = rows(at)
    assert any(r["moved"] != 0 for r in moved)
    at.button(key="rerank_keep_attention").click().run()
    assert hidden_count(at)[0] == cells - expected.sum()


def test_an_embeddings_only_run_says_hiding_needs_the_model(runs, tmp_path, monkeypatch):
    from core.importer import import_run
    from tests.test_runs_import import write_inputs

    emb, labels = write_inputs(tmp_path / "inputs", Path(runs[0]), images=False)
    run = tmp_path / "imported" / "only_embeddings"
    import_run(emb, labels, run)
    at = open_app(listed(monkeypatch, run), "retrieval", query=1)
    assert "hiding part of the query cannot work" in texts(at)
    assert not [c for c in at.get("plotly_chart") if c.key and c.key.startswith("rerank_picker")]


# ---- beside each map on Attention -------------------------------------------------------------------------
def test_each_map_is_tested_on_the_query_against_random(runs, engine):
    """The note under a map says what its deletion curve says: the numbers are those of score_map + drop_at on the
    query's map against its top-1 neighbour (10 steps: the top 19 % of an 8×8 grid)."""
    from core.explain import explain

    items, reranker = engine
    at = open_app(runs[0], "attention", query=2)
    assert "This query: hiding" not in texts(at)          # on demand only
    at.toggle(key="attention_test_maps").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    notes = [c.value for c in at.caption if "This query: hiding the map's top" in c.value]
    target = int(at.selectbox(key="attention_target").value)
    gradcam = next(n for n in notes if "**query → target**" in n)
    cam = explain(items.model, items.image(2), torch.from_numpy(items.embeddings[target]),
                  explainer="gradcam").maps["attribution"]
    score = score_map(PairScorer(items.model, Pair(items.image(2), items.image(target))), np.asarray(cam), steps=10)
    drop = drop_at(score, 0.2)
    assert (f"top {drop['share']:.0%} of cells drops the similarity to #{target} by {drop['map']:.2f}; a random "
            f"{drop['share']:.0%} drops it by {drop['random']:.2f}") in gradcam
    assert f"deletion AUC {score['deletion_auc']:.2f}, random {score['random']['deletion_auc']:.2f}" in gradcam
    for name in explain(items.model, items.image(2)).maps:        # a note under every learned map's row
        assert any(f"**{name}" in n and "of the query**" in n for n in notes), name


@pytest.fixture(scope="module")
def tabled_run(runs, tmp_path_factory):
    """A copy of the first run with a faithfulness table of its weights (Grad-CAM only, one query: quick)."""
    run = tmp_path_factory.mktemp("tabled") / "with_table"
    shutil.copytree(runs[0], run)
    return run, make_table(run)


def test_the_run_table_is_shown_beside_the_maps_and_in_its_expander(tabled_run, monkeypatch):
    """Every map's note quotes the run's table, and the table lists every map with its verdicts."""
    run, table = tabled_run
    at = open_app(listed(monkeypatch, run), "attention", query=2)
    entry = table["explainers"]["gradcam/attribution"]
    assert (f"The run's table (1 test query): deletion AUC {entry['deletion_auc']['mean']:.2f} against "
            f"{entry['random']['deletion_auc']['mean']:.2f} for random orders") in texts(at)
    shown = at.dataframe[0].value
    assert set(shown["map"]) == set(table["explainers"])
    assert {"reading", "faithful?", "sanity check", "mass on object"} <= set(shown.columns)
    assert at.button(key="faithfulness_start").label == "Compute again"


def test_teaching_mode_shows_the_table_but_computes_none(tabled_run, tmp_path, monkeypatch):
    run, _ = tabled_run
    bare = tmp_path / "without_table"                        # a run with no table: says who can make one
    shutil.copytree(run, bare)
    (bare / "faithfulness.json").unlink()
    listed(monkeypatch, bare)
    monkeypatch.setenv("METRICLENS_MODE", "demo")
    at = open_app(listed(monkeypatch, run), "attention", query=2)
    assert "The run's table (1 test query)" in texts(at) and len(at.dataframe) >= 1
    assert not [b for b in at.button if b.key == "faithfulness_start"]
    at = open_app(str(bare), "attention", query=2)
    assert "off in teaching mode" in texts(at) and not [b for b in at.button if b.key == "faithfulness_start"]


def test_a_table_of_other_weights_is_not_shown(tabled_run, monkeypatch):
    run, table = tabled_run
    path = run / "faithfulness.json"
    try:
        path.write_text(json.dumps({**table, "weights_sha256": "0" * 64}))   # as if the run was retrained since
        at = open_app(listed(monkeypatch, run), "attention", query=2)
        assert "computed for other weights" in texts(at) and "The run's table" not in texts(at)
    finally:
        path.write_text(json.dumps(table))


def make_table(run: Path, explainers: str = "gradcam") -> dict:
    from core.__main__ import main

    assert main(["faithfulness", str(run), "--queries", "1", "--steps", "4", "--explainers", explainers]) == 0
    return json.loads((run / "faithfulness.json").read_text())


# ---- the run-level table's job ----------------------------------------------------------------------------
def test_the_job_writes_to_the_cache_when_the_run_folder_is_read_only(runs, tmp_path, monkeypatch):
    """Started as the page starts it (a tiny N, one explainer): progress as JSON lines, the table in the cache
    (the run folder cannot be written), then read back as the run's table."""
    from core.progress import read_progress
    from dashboard import background, faithfulness

    run = tmp_path / "read_only"
    shutil.copytree(runs[0], run)
    (run / "faithfulness.json").unlink(missing_ok=True)     # a run without its table (the shipped ones have one)
    access = os.access      # as a read-only mount answers (chmod does not stop root)
    monkeypatch.setattr(os, "access", lambda path, mode: access(path, mode) and not (
        mode & os.W_OK and Path(path).is_relative_to(run)))
    out = faithfulness.output_file(str(run))
    try:
        assert out.parent.name == "faithfulness" and ".cache" in out.parts
        job = background.start_faithfulness(str(run), 1, out, explainers=["occlusion"])
        assert background.faithfulness_job(str(run)) is job
        assert job.wait() == 0, job.log_tail()
        lines = read_progress(job.progress_path)
        assert lines[-1]["done"] == lines[-1]["total"] == 2
        result, note = faithfulness.run_table(str(run))
        assert note is None and set(result["explainers"]) == {"occlusion/attribution"}
        assert not (run / "faithfulness.json").exists()
    finally:
        out.unlink(missing_ok=True)


@pytest.mark.slow   # the whole job through the page: every explainer of the run on three models (~1 min)
def test_the_page_starts_the_job_shows_its_progress_and_then_the_table(runs, tmp_path, monkeypatch):
    run = tmp_path / "page_job"
    shutil.copytree(runs[0], run)
    (run / "faithfulness.json").unlink(missing_ok=True)     # a run without its table (the shipped ones have one)
    at = open_app(listed(monkeypatch, run), "attention", query=2)
    assert "has no faithfulness table yet" in texts(at)
    at.number_input(key="faithfulness_queries").set_value(1).run()
    at.button(key="faithfulness_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    from dashboard import background
    job = background.faithfulness_job(str(run))
    assert job is not None and at.get("progress")                # the bar while it runs
    assert job.wait() == 0, job.log_tail()
    at.run()
    assert (run / "faithfulness.json").exists()
    assert "The run's table (1 test query)" in texts(at)


# ---- a researcher's own model (import-model) --------------------------------------------------------------
from tests.test_import_model import lab, own_run  # noqa: E402,F401  (the import-model run's fixtures)


def test_reranking_works_for_an_imported_model(own_run, monkeypatch):
    """A run of a researcher's own network (ResNet-18 via --factory): hiding the whole query re-ranks the test
    set by that network's embedding of the filled query."""
    from core.run_items import RunItems

    monkeypatch.setenv("METRICLENS_MODE", "full")
    monkeypatch.setenv("METRICLENS_RUNS", str(own_run.parent))
    at = open_app(str(own_run.resolve()), "retrieval", query=1)
    hidden, cells = hidden_count(at)
    assert hidden == 0 and all(r["moved"] == 0 for r in rows(at))
    select(at, "retrieval", range(cells), region=True)
    items = RunItems(own_run)
    side = int(np.sqrt(cells))
    expected = Reranker(items.model, items.image(1), items.embeddings, exclude=1).rerank(np.ones((side, side), bool))
    table = rows(at)
    assert any(r["moved"] != 0 for r in table)
    for r in table:
        assert r["cosine now"] == pytest.approx(float(expected.similarity[r["item"]]), abs=1e-4)
