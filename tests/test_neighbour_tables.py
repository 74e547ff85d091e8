"""Issue 24, item 2: a run imported from embeddings alone (no image column) lists its neighbours as text: rank,
item, label, cosine, ✓/✗ and the CSV's fields, on Explore (clicked item, selection) and Retrieval (top-k, hardest
failures); a picked row moves to that item. Item 4: such a run offers nothing that needs a model, and the messages
name the pages as the navigation does. Item 3: a failed hover-thumbnail job says so on Explore.

Real input: the test embeddings of a shipped (or tiny) shapes run with a labels CSV of two extra fields, imported
with `core.importer.import_run`; every listed neighbour is checked against a brute-force top-k over those embeddings.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.test_dashboard_pages import APP, inject, open_app, texts

K = 8


@pytest.fixture(scope="module")
def embeddings_only(tmp_path_factory):
    """A shapes run's embeddings + labels.csv (label, colour, note: one value per item), imported without images."""
    from core.importer import import_run
    from dashboard_testing import demo_runs

    scratch = tmp_path_factory.mktemp("embeddings_only")
    source = demo_runs(scratch / "runs", 1)[0]
    art = Path(source) / "artifacts"
    emb, items = np.load(art / "embeddings.npy"), json.loads((art / "items.json").read_text())
    np.save(scratch / "embeddings.npy", emb)
    colours = [it["class_name"].split()[0] for it in items]
    notes = [f"n{i:04d}" for i in range(len(items))]
    (scratch / "labels.csv").write_text("label,colour,note\n" + "".join(
        f"{it['class_name']},{c},{n}\n" for it, c, n in zip(items, colours, notes)))
    run = scratch / "imported" / "no_images"
    import_run(scratch / "embeddings.npy", scratch / "labels.csv", run)
    saved = {k: os.environ.get(k) for k in ("METRICLENS_AUTO_UMAP", "METRICLENS_RUNS")}
    os.environ.update(METRICLENS_AUTO_UMAP="0", METRICLENS_RUNS=os.pathsep.join(
        sorted({str(run.parent), str(Path(source).resolve().parent)})))
    stored = np.load(run / "artifacts" / "embeddings.npy")   # unit rows, as the dashboard reads them
    labels = np.asarray([it["class_name"] for it in items])
    yield {"run": str(run.resolve()), "source": str(Path(source).resolve()), "emb": stored, "labels": labels,
           "colour": np.asarray(colours), "note": np.asarray(notes)}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def brute_force(emb: np.ndarray, query: int) -> np.ndarray:
    """Cosine of the query to every item, the query itself at -inf."""
    sims = emb.astype(np.float64) @ emb[query].astype(np.float64)
    sims[query] = -np.inf
    return sims


def table(at: AppTest, prefix: str):
    (found,) = [d.value for d in at.dataframe if (d.key or "").startswith(prefix)]
    return found


def assert_true_top_k(rows, data: dict, query: int, k: int) -> None:
    """Rank 0 is the query's own row; then exactly the brute-force top-k, best first, with their cosines, ✓/✗ and
    CSV fields. A list in another order, or with another item, fails."""
    sims = brute_force(data["emb"], query)
    assert rows["rank"].tolist() == list(range(k + 1))
    assert int(rows["item"].iloc[0]) == query and rows["same class"].iloc[0] == "query"
    listed, cosines = rows["item"].to_numpy()[1:].astype(int), rows["cosine"].to_numpy()[1:].astype(float)
    assert np.allclose(cosines, np.sort(sims)[::-1][:k], atol=1e-5)     # the k best cosines, best first
    assert np.allclose(sims[listed], cosines, atol=1e-5)                  # each one is that item's own cosine
    assert len(set(listed.tolist())) == k and query not in listed
    labels = data["labels"]
    assert rows["label"].tolist() == labels[[query, *listed]].tolist()
    assert rows["same class"].tolist()[1:] == ["✓" if labels[i] == labels[query] else "✗" for i in listed]
    for field in ("colour", "note"):                                      # the CSV's columns, of each item
        assert rows[field].tolist() == data[field][[query, *listed]].tolist()


def test_retrieval_lists_the_true_top_k_as_text(embeddings_only):
    at = open_app(embeddings_only["run"], "retrieval", query=7)
    assert not at.get("image") and "No images to show" not in texts(at)   # nothing drawn that is not there
    assert_true_top_k(table(at, "retrieval_neighbours_"), embeddings_only, 7, K)
    at.number_input(key="retrieval_query").set_value(301).run()
    at.slider(key="retrieval_k").set_value(5).run()
    assert not at.exception
    assert_true_top_k(table(at, "retrieval_neighbours_"), embeddings_only, 301, 5)
    # a picked row makes that neighbour the query
    rows = table(at, "retrieval_neighbours_")
    key = next(d.key for d in at.dataframe if d.key.startswith("retrieval_neighbours_"))
    at.session_state[key] = {"selection": {"rows": [3], "columns": [], "cells": []}}
    at.run()
    assert at.session_state["query"] == int(rows["item"].iloc[3])
    assert_true_top_k(table(at, "retrieval_neighbours_"), embeddings_only, int(rows["item"].iloc[3]), 5)


def test_hardest_failures_are_listed_as_text(embeddings_only):
    emb, labels = embeddings_only["emb"], embeddings_only["labels"]
    at = open_app(embeddings_only["run"], "retrieval", query=0)
    rows = table(at, "retrieval_failures_")
    assert len(rows) == 8
    r_precision = {}
    for q in range(len(labels)):       # brute force: every query's R-precision
        same = labels == labels[q]
        r = int(same.sum()) - 1
        r_precision[q] = float(same[np.argsort(-brute_force(emb, q), kind="stable")[:r]].mean()) if r else np.nan
    wrong_top1 = [q for q in range(len(labels)) if labels[np.argmax(brute_force(emb, q))] != labels[q]]
    for _, row in rows.iterrows():
        q = int(row["query"])
        sims = brute_force(emb, q)
        assert int(row["top-1"]) == int(np.argmax(sims)) and row["top-1 label"] != row["label"] == labels[q]
        same = np.flatnonzero((labels == labels[q]) & (np.arange(len(labels)) != q))
        true = int(same[np.argmax(sims[same])])
        assert int(row["true match"]) == true and int(row["true match rank"]) == int((sims > sims[true]).sum()) + 1
        assert row["R-precision"] == pytest.approx(r_precision[q], abs=1e-6)
        assert row["note"] == embeddings_only["note"][q]
    listed = rows["R-precision"].to_numpy()
    assert (np.diff(listed) >= -1e-9).all()                                 # worst first
    others = [r_precision[q] for q in wrong_top1 if q not in set(rows["query"].astype(int))]
    assert not others or min(others) >= listed.max() - 1e-9               # and no harder failure left out
    # a picked failure becomes the query
    key = next(d.key for d in at.dataframe if d.key.startswith("retrieval_failures_"))
    at.session_state[key] = {"selection": {"rows": [2], "columns": [], "cells": []}}
    at.run()
    assert at.session_state["query"] == int(rows["query"].iloc[2])


def test_explore_click_lists_the_items_neighbours_and_fields(embeddings_only):
    at = open_app(embeddings_only["run"])
    inject(at, [42])
    assert not at.exception, [e.value for e in at.exception]
    assert "Nearest neighbours of #42" in texts(at) and not at.get("image")
    rows = table(at, "explore_neighbours_")
    assert_true_top_k(rows, embeddings_only, 42, K)
    # a picked neighbour becomes the clicked item: its own neighbours are listed
    key = next(d.key for d in at.dataframe if d.key.startswith("explore_neighbours_"))
    at.session_state[key] = {"selection": {"rows": [2], "columns": [], "cells": []}}
    at.run()
    moved = int(rows["item"].iloc[2])
    assert at.session_state["query"] == moved and at.session_state["explore_selection"]["ids"] == [moved]
    assert_true_top_k(table(at, "explore_neighbours_"), embeddings_only, moved, K)


def test_explore_selection_lists_each_item_with_its_top1_and_offers_no_attention(embeddings_only):
    emb, labels = embeddings_only["emb"], embeddings_only["labels"]
    picked = [3, 17, 250, 600]
    at = open_app(embeddings_only["run"])
    inject(at, picked)
    rows = table(at, "explore_items_")
    assert rows["item"].tolist() == picked
    top1 = [int(np.argmax(brute_force(emb, q))) for q in picked]
    assert rows["top-1"].tolist() == top1
    assert rows["same class"].tolist() == ["✓" if labels[t] == labels[q] else "✗" for q, t in zip(picked, top1)]
    assert rows["colour"].tolist() == embeddings_only["colour"][picked].tolist()
    keys = {b.key for b in at.button}
    assert "explore_to_retrieval" in keys and "explore_to_attention" not in keys   # no model: nothing to attend to
    key = next(d.key for d in at.dataframe if d.key.startswith("explore_items_"))
    at.session_state[key] = {"selection": {"rows": [2], "columns": [], "cells": []}}
    at.run()
    assert at.selectbox(key="explore_open").value == 250       # the picked row is the item the buttons open


@pytest.mark.parametrize("page, title", [("attention", "Attention"), ("cross", "Cross-image")])
def test_a_page_that_needs_a_model_is_named_as_in_the_navigation(embeddings_only, page, title):
    at = open_app(embeddings_only["run"], page)
    said = " ".join(i.value for i in at.info)
    assert f"the {title} page cannot work on it" in said, said


def test_a_failed_thumbnail_job_is_said_on_explore(embeddings_only, tmp_path):
    """A trained run whose data folder is gone: the job writing its hover thumbnails fails (DatasetError), and
    Explore says so with the end of the job's log instead of showing grey squares silently."""
    run = tmp_path / "runs" / "data_moved"
    shutil.copytree(embeddings_only["source"], run)
    config = json.loads((run / "config.json").read_text())
    config["data"].update(name="folder", root=str(tmp_path / "gone"))
    (run / "config.json").write_text(json.dumps(config))

    def start_thumbnails(run_dir: str) -> None:   # as Explore does after the browser drew its map
        from dashboard import background
        background.thumbnails(run_dir).wait()
    AppTest.from_function(start_thumbnails, args=(str(run.resolve()),), default_timeout=120).run()
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["run"] = str(run.resolve())
    at.session_state["extra_runs_root"] = str(run.parent)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Hover thumbnails could not be made" in w.value for w in at.warning), [w.value for w in at.warning]
    assert any("does not exist" in c.value and str(tmp_path / "gone") in c.value for c in at.code)


def test_compare_lists_the_imported_runs_neighbours_of_the_same_query(embeddings_only):
    """Compare against the run the embeddings came from (same items): the side without images lists its top-k."""
    at = open_app(embeddings_only["run"], "compare", compare_run=embeddings_only["source"], query=9)
    assert not at.exception and not at.error, [e.value for e in at.exception]
    rows = table(at, "compare_neighbours_A_")
    sims = brute_force(embeddings_only["emb"], 9)
    assert np.allclose(rows["cosine"].to_numpy(float), np.sort(sims)[::-1][:K], atol=1e-5)
    assert np.allclose(sims[rows["item"].to_numpy(int)], rows["cosine"].to_numpy(float), atol=1e-5)
