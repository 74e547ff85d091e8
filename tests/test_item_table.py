"""Issue 27, items 2 and 3 on Explore under AppTest: the item table linked to the map (every item's label, split,
top-1 ✓/✗, R-precision, MAP@R, first true match's rank and fields; filters as chips; rows to the map and a map
selection to the table), saved selections (named safely, kept with the run or, read-only, on the server, reopened),
Back/Forward restoring the selection and neighbours, zoom to the selection and to the neighbours, and the CSV export
with coordinates, scores and neighbour ids. tests/test_explore_history_browser.py drives Back/Forward in Chromium.

Real input: a shapes run's test embeddings with a labels CSV of two extra fields (colour, site), imported with
`core.importer.import_run`; every score and neighbour is checked against a brute-force search over those embeddings.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.test_dashboard_pages import APP, inject, item_maps, open_app, selected_on_map, texts

SITES = ("north", "south", "east")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A shapes run's embeddings + labels.csv (label, colour, site), imported without images; brute-force truth."""
    from core.importer import import_run
    from dashboard_testing import demo_runs

    scratch = tmp_path_factory.mktemp("item_table")
    source = demo_runs(scratch / "runs", 1)[0]
    art = Path(source) / "artifacts"
    emb, items = np.load(art / "embeddings.npy"), json.loads((art / "items.json").read_text())
    np.save(scratch / "embeddings.npy", emb)
    colours = [it["class_name"].split()[0] for it in items]
    sites = [SITES[i % 3] for i in range(len(items))]
    (scratch / "labels.csv").write_text("label,colour,site\n" + "".join(
        f"{it['class_name']},{c},{s}\n" for it, c, s in zip(items, colours, sites)))
    run = scratch / "imported" / "table_run"
    import_run(scratch / "embeddings.npy", scratch / "labels.csv", run, log=lambda *a: None)
    saved = {k: os.environ.get(k) for k in ("METRICLENS_AUTO_UMAP", "METRICLENS_RUNS")}
    os.environ.update(METRICLENS_AUTO_UMAP="0", METRICLENS_RUNS=str(run.parent))
    stored = np.load(run / "artifacts" / "embeddings.npy").astype(np.float64)
    labels = np.asarray([it["class_name"] for it in items])
    yield {"run": str(run.resolve()), "emb": stored, "labels": labels, "site": np.asarray(sites),
           **brute_force(stored, labels)}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def brute_force(emb: np.ndarray, labels: np.ndarray, k: int = 32) -> dict:
    """Every item's neighbours by a full sort of its cosines, and its top-1 ✓/✗, R-precision, MAP@R and first true
    match's rank (k + 1 when not among its k nearest)."""
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :-1]
    same = labels[order] == labels[:, None]
    r = same.sum(1)
    rp, mapr = np.full(len(labels), np.nan), np.full(len(labels), np.nan)
    for q in np.flatnonzero(r):
        hits = same[q, :r[q]]
        rp[q] = hits.mean()
        mapr[q] = (np.cumsum(hits) / np.arange(1, r[q] + 1) * hits).sum() / r[q]
    first = np.where(same[:, :k].any(1), same[:, :k].argmax(1) + 1, k + 1)
    return {"order": order, "top1": same[:, 0], "rp": rp, "mapr": mapr, "first": first}


def item_rows(at: AppTest):
    (found,) = [d.value for d in at.dataframe if (d.key or "").startswith("explore_items_")]
    return found


def table_key(at: AppTest) -> str:
    return next(d.key for d in at.dataframe if (d.key or "").startswith("explore_items_"))


def kept_ids(at: AppTest) -> list[int]:
    return sorted(at.session_state["explore_selection"]["ids"])


def filter_key(at: AppTest, kind: str, name: str) -> str:
    from dashboard.caching import digest
    return f"explore_{kind}_{name}_{digest(at.session_state['run'])}"


def test_the_table_lists_every_item_with_its_scores_and_fields(imported):
    at = open_app(imported["run"])
    rows = item_rows(at)
    n = len(imported["labels"])
    assert rows["item"].tolist() == list(range(n))     # nothing selected: every item (fewer than a page)
    for column in ("label", "split", "same class", "R-precision", "MAP@R", "first match rank", "colour", "site"):
        assert column in rows, column
    assert rows["label"].tolist() == imported["labels"].tolist()
    assert rows["site"].tolist() == imported["site"].tolist()
    assert rows["top-1"].tolist() == imported["order"][:, 0].tolist()
    assert rows["same class"].tolist() == ["✓" if ok else "✗" for ok in imported["top1"]]
    assert np.allclose(rows["R-precision"].to_numpy(float), imported["rp"], atol=1e-5, equal_nan=True)
    assert np.allclose(rows["MAP@R"].to_numpy(float), imported["mapr"], atol=1e-5, equal_nan=True)
    assert rows["first match rank"].tolist() == imported["first"].tolist()
    # sorted over every item by a score, worst first
    at.selectbox(key="explore_sort").set_value("MAP@R").run()
    listed = item_rows(at)["MAP@R"].to_numpy(float)
    assert listed[0] == pytest.approx(np.nanmin(imported["mapr"]), abs=1e-6) and (np.diff(listed[~np.isnan(listed)]) >= 0).all()
    at.toggle(key="explore_sort_descending").set_value(True).run()
    assert item_rows(at)["MAP@R"].iloc[0] == pytest.approx(np.nanmax(imported["mapr"]), abs=1e-6)


def test_filter_chips_keep_exactly_the_matching_items(imported):
    labels, rp, site = imported["labels"], imported["rp"], imported["site"]
    wrong = ~imported["top1"]
    assert 0 < wrong.sum() < len(labels)                 # the run has both: the filter can be seen to work
    at = open_app(imported["run"])
    at.session_state["explore_filter_chips"] = ["wrong at top-1"]
    at.run()
    assert not at.exception
    assert item_rows(at)["item"].tolist() == np.flatnonzero(wrong).tolist()
    at.session_state["explore_filter_chips"] = ["wrong at top-1", "R-precision"]
    at.run()
    at.slider(key=filter_key(at, "range", "R-precision")).set_value((0.0, 0.5)).run()
    assert item_rows(at)["item"].tolist() == np.flatnonzero(wrong & (rp <= 0.5)).tolist()
    assert f"**{int((wrong & (rp <= 0.5)).sum())}** of {len(labels)} items kept" in texts(at)
    # class in {two classes} and site in {north}: every chosen filter holds
    two = sorted(set(labels))[:2]
    at.session_state["explore_filter_chips"] = ["class", "site"]
    at.run()
    at.multiselect(key=filter_key(at, "values", "class")).set_value(two).run()
    at.multiselect(key=filter_key(at, "values", "site")).set_value(["north"]).run()
    expected = np.flatnonzero(np.isin(labels, two) & (site == "north"))
    assert len(expected) and item_rows(at)["item"].tolist() == expected.tolist()


def test_rows_select_on_the_map_and_a_map_selection_filters_the_table(imported):
    wrong = np.flatnonzero(~imported["top1"])
    at = open_app(imported["run"])
    at.session_state["explore_filter_chips"] = ["wrong at top-1"]
    at.run()
    at.button(key="explore_table_select").click().run()
    assert kept_ids(at) == wrong.tolist() and selected_on_map(at) == set(wrong.tolist())
    # the map's selection is what the table lists
    at.session_state["explore_filter_chips"] = []
    at.run()
    inject(at, [3, 17, 250, 600])
    assert item_rows(at)["item"].tolist() == [3, 17, 250, 600]
    # ticked rows alone go to the map; one ticked row is the item the buttons open
    at.session_state[table_key(at)] = {"selection": {"rows": [2], "columns": [], "cells": []}}
    at.run()
    assert at.selectbox(key="explore_open").value == 250
    at.session_state[table_key(at)] = {"selection": {"rows": [0, 2], "columns": [], "cells": []}}
    at.run()
    at.button(key="explore_table_select").click().run()
    assert kept_ids(at) == [3, 250] and selected_on_map(at) == {3, 250}
    assert item_rows(at)["item"].tolist() == [3, 250]


def test_saved_selections_are_named_safely_kept_with_the_run_and_reopened(imported):
    run = Path(imported["run"])
    shutil.rmtree(run / "selections", ignore_errors=True)
    at = open_app(str(run))
    inject(at, [5, 6, 7, 99])
    at.text_input(key="explore_save_name").input("../../escape/me").run()
    at.button(key="explore_save").click().run()
    assert not at.exception
    saved = list((run / "selections").iterdir())
    assert [p.name for p in saved] == ["escape_me.json"]             # one file, inside the run's folder
    assert not (run.parent / "escape").exists() and not (run.parent.parent / "escape").exists()
    assert json.loads(saved[0].read_text())["ids"] == [5, 6, 7, 99]
    assert "escape_me" in " ".join(s.value for s in at.success)
    at.button(key="explore_clear").click().run()
    assert kept_ids(at) == []
    at.selectbox(key="explore_saved").set_value("escape_me").run()
    at.button(key="explore_open_saved").click().run()
    assert kept_ids(at) == [5, 6, 7, 99] and selected_on_map(at) == {5, 6, 7, 99}
    # a file saved for other embeddings is refused with a reason, the selection kept
    (run / "selections" / "old.json").write_text(json.dumps({"name": "old", "items": 3, "ids": [0, 1]}))
    at.run()
    at.selectbox(key="explore_saved").set_value("old").run()
    at.button(key="explore_open_saved").click().run()
    assert "saved for a run of 3 items" in " ".join(e.value for e in at.error)
    assert kept_ids(at) == [5, 6, 7, 99]
    shutil.rmtree(run / "selections")


def test_teaching_mode_keeps_saved_selections_out_of_the_run_folder(imported, monkeypatch):
    from dashboard.explore.saved_selections import fallback_folder

    run = Path(imported["run"])
    shutil.rmtree(run / "selections", ignore_errors=True)
    shutil.rmtree(fallback_folder(str(run)), ignore_errors=True)
    monkeypatch.setenv("METRICLENS_MODE", "demo")
    at = open_app(str(run))
    inject(at, [11, 12])
    at.text_input(key="explore_save_name").input("lesson one").run()
    at.button(key="explore_save").click().run()
    assert not (run / "selections").exists()
    kept = fallback_folder(str(run)) / "lesson one.json"
    try:
        assert json.loads(kept.read_text())["ids"] == [11, 12]
        assert str(run) not in " ".join(s.value for s in at.success)     # a visitor sees no server paths
        assert at.selectbox(key="explore_saved").options == ["lesson one"]
    finally:
        shutil.rmtree(fallback_folder(str(run)), ignore_errors=True)


def test_saved_selection_names_cannot_leave_the_folder(tmp_path):
    from core.selections import SelectionError, list_selections, read_selection, save_selection, selection_name

    for hostile in ("../x", "..", "/etc/passwd", "a/../../b", ".hidden", "x\\..\\y", "nul\x00byte"):
        try:
            name = selection_name(hostile)
        except SelectionError:
            continue
        assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
    with pytest.raises(SelectionError):
        selection_name("../..")
    path = save_selection(tmp_path / "run", "../../up", [4, 2, 2], 10)
    assert path == tmp_path / "run" / "selections" / "up.json" and list(list_selections(tmp_path / "run")) == ["up"]
    assert read_selection(path, 10).tolist() == [2, 4]
    with pytest.raises(SelectionError):
        save_selection(tmp_path / "run", "big", [10], 10)                   # not an item of the run
    path.write_text("{not json")
    with pytest.raises(SelectionError, match="not a saved selection"):
        read_selection(path, 10)


def test_csv_export_has_coordinates_scores_and_neighbour_ids(imported):
    from core.projection import ensure_coords
    from dashboard.explore.selection import export_csv

    run, picked = imported["run"], [3, 17, 250]
    coords = ensure_coords(run, "pca")
    n = len(imported["labels"])
    rows = list(csv.DictReader(io.StringIO(export_csv(run, np.asarray(picked), (np.arange(n), coords, "PCA")))))
    assert [int(r["item"]) for r in rows] == picked
    for row, q in zip(rows, picked):
        assert row["class"] == imported["labels"][q] and row["site"] == imported["site"][q]
        assert (float(row["x"]), float(row["y"])) == pytest.approx(tuple(coords[q]), abs=1e-5)
        assert row["top1_correct"] == ("true" if imported["top1"][q] else "false")
        assert float(row["r_precision"]) == pytest.approx(imported["rp"][q], abs=1e-5)
        assert float(row["map_at_r"]) == pytest.approx(imported["mapr"][q], abs=1e-5)
        assert int(row["first_match_rank"]) == imported["first"][q]
        assert [int(row[f"neighbour_{j}"]) for j in range(1, 11)] == imported["order"][q, :10].tolist()
    # an isolated map's coordinates: items off it have none
    isolated = (np.asarray([3, 250]), coords[[3, 250]] * 2, "PCA")
    rows = list(csv.DictReader(io.StringIO(export_csv(run, np.asarray(picked), isolated))))
    assert float(rows[2]["x"]) == pytest.approx(coords[250, 0] * 2, abs=1e-5) and rows[1]["x"] == "nan"


def test_zoom_to_the_selection_and_to_the_neighbours(imported):
    from core.projection import ensure_coords

    run = imported["run"]
    at = open_app(run)
    at.radio(key="explore_projection").set_value("PCA").run()
    coords = ensure_coords(run, "pca")

    def ranges():
        layout = json.loads(item_maps(at)[0].proto.spec)["layout"]
        return layout["xaxis"].get("range"), layout["yaxis"].get("range")

    def covers(ids, x, y):
        return all(x[0] <= coords[i, 0] <= x[1] and y[0] <= coords[i, 1] <= y[1] for i in ids)

    assert ranges() == (None, None)
    picked = np.flatnonzero(imported["labels"] == imported["labels"][0])   # one class: a part of the map
    inject(at, picked)
    at.button(key="explore_zoom_selection").click().run()
    x, y = ranges()
    assert covers(picked, x, y) and (x[1] - x[0]) < np.ptp(coords[:, 0])
    assert not covers(range(len(coords)), x, y)                             # narrower than the whole map
    assert selected_on_map(at) == set(picked.tolist())                      # the selection stays
    inject(at, [5])
    at.button(key="explore_zoom_neighbours").click().run()
    x, y = ranges()
    assert covers([5, *imported["order"][5, :8]], x, y)
    at.button(key="explore_zoom_reset").click().run()
    assert ranges() == (None, None)


def test_back_and_forward_restore_the_selection_and_neighbours(imported):
    """The URL gone back to is the state: its selection, its query's neighbours (not the last clicked item's)."""
    at = open_app(imported["run"])
    inject(at, [5])
    first = dict(at.query_params)
    assert at.query_params["sel"] == "5"
    inject(at, [40])
    assert "Nearest neighbours of #40" in texts(at)
    second = dict(at.query_params)
    at.query_params.clear()
    at.query_params.update(first)        # Back: the browser's URL of the first click
    at.run()
    assert not at.exception
    assert kept_ids(at) == [5] and at.session_state["query"] == 5
    assert "Nearest neighbours of #5" in texts(at) and "Nearest neighbours of #40" not in texts(at)
    at.query_params.clear()
    at.query_params.update(second)       # Forward
    at.run()
    assert kept_ids(at) == [40] and "Nearest neighbours of #40" in texts(at)
