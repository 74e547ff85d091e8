"""The Explore page's item logic (dashboard/items.py): fields, search, neighbours, export, link values."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from dashboard import items, logic


def test_fields_from_class_names_and_metadata():
    metas = [{"split": "test", "index": i, "path": f"/data/set/{'cars' if i % 2 else 'birds'}/img_{i}.jpg",
              "class_name": ["red car", "blue car", "red truck", "green truck"][i % 4], "site": "ab"[i % 2],
              "uid": f"u{i}"} for i in range(40)]
    fields = items.categorical_fields(metas, [m["class_name"] for m in metas])
    assert list(fields) == ["class", "site", "colour"]            # one value per item ('uid') colours nothing
    assert fields["colour"][:4].tolist() == ["red", "blue", "red", "green"]
    assert "shape" not in fields                                  # 'car' / 'truck' are not shape words
    haystack = items.search_text(metas, fields)
    assert items.search(haystack, "red TRUCK").tolist() == list(range(2, 40, 4))
    assert items.search(haystack, "img_7.jpg").tolist() == [7]    # the file name
    assert items.search(haystack, "cars blue").tolist() == list(range(1, 40, 4))   # its folder
    assert items.search(haystack, "data").tolist() == []          # never the rest of the path
    assert items.search(haystack, "#3").tolist() == [3] and items.search(haystack, "  ").tolist() == []


def test_neighbours_are_the_exact_cosine_top_k():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(500, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids, sims = items.neighbours(items.neighbour_index(emb), emb, 17, 5)
    brute = emb @ emb[17]
    brute[17] = -np.inf
    assert ids.tolist() == np.argsort(-brute)[:5].tolist()
    assert np.allclose(sims, brute[ids], atol=1e-5) and 17 not in ids


def test_selection_csv_has_items_labels_paths_and_fields():
    from core.item_store import ItemStore, items_table, selection_csv

    metas = [{"split": "test", "index": i, "path": f"/d/{i}.png", "class_name": f"c{i % 3}"} for i in range(10)]
    labels = np.arange(10) % 3
    extra = {"shape": np.asarray(["circle"] * 10)}
    rows = list(csv.DictReader(io.StringIO(selection_csv(ItemStore(items_table(metas, labels)), [4, 7], labels, extra))))
    assert rows == [{"item": "4", "label": "1", "class": "c1", "split": "test", "index": "4", "path": "/d/4.png", "shape": "circle"},
                    {"item": "7", "label": "1", "class": "c1", "split": "test", "index": "7", "path": "/d/7.png", "shape": "circle"}]


def test_ids_in_a_link_round_trip_and_refuse_anything_else():
    ids = [0, 1, 2, 5, 9, 10, 11, 40]
    assert items.encode_ids(ids) == "0-2,5,9-11,40"
    assert items.decode_ids("0-2,5,9-11,40", 41).tolist() == ids
    for bad in ["../../etc/passwd", "1;2", "1,,2", "-1", "3-1", "0-41", "1e3", "", " 1 2", "x" * 5000]:
        with pytest.raises(items.LinkError):
            items.decode_ids(bad, 41)
    assert len(items.decode_ids(",".join(["0-40"] * 300), 41)) == 41   # repeats cost no more than once
    assert items.shown_safely("![a](http://x)<b>") == "??a??http???x??b?"   # no markdown, link or HTML survives


def test_stratified_sample_and_interleave_scale_to_many_classes():
    labels = np.repeat(np.arange(12_000), 10)                    # SOP-like: 120k items, 12k classes
    keep = logic.stratified_sample(labels, 20_000)
    assert 12_000 <= len(keep) <= 24_000 and len(np.unique(labels[keep])) == 12_000
    assert (np.diff(keep) > 0).all()
    order = logic.interleave_classes(np.arange(0, 120_000, 7), labels)
    assert len(np.unique(labels[order[:1000]])) == 1000          # the first of a big selection: all different


def test_thinned_sample_keeps_sparse_points_and_thins_dense_ones():
    from core.projection import thinned_sample

    rng = np.random.default_rng(0)
    blob = rng.normal(scale=0.05, size=(100_000, 2))                 # 100k points on a few pixels
    sparse = rng.uniform(-10, 10, size=(2_000, 2))                   # 2k spread out: each its own cell
    keep = thinned_sample(np.concatenate([blob, sparse]), 10_000)
    assert len(keep) <= 10_000 and (np.diff(keep) > 0).all()
    assert (keep >= 100_000).sum() >= 1_900                          # (almost) every sparse point stays
    assert 100 <= (keep < 100_000).sum() <= 8_100                    # the blob is still drawn, thinned
    assert thinned_sample(sparse, 10_000).tolist() == list(range(2_000))
    many = thinned_sample(rng.uniform(size=(50_000, 2)), 1_000)  # more occupied cells than the budget
    assert 500 <= len(many) <= 1_000


def test_the_points_a_map_draws_are_saved_with_its_coordinates_and_thinned_anew_when_stale(tmp_path):
    """save_coords writes the draw sample beside the coordinates; drawn_points reads it, and thins the coordinates
    itself where there is none or it is older than them (coordinates written by an older version)."""
    import os

    from core.projection import MAP_POINTS, drawn_points, save_coords, thinned_sample
    from core.run_dir import coords_file, drawn_file

    rng = np.random.default_rng(1)
    coords = np.concatenate([rng.normal(scale=0.05, size=(30_000, 2)), rng.uniform(-9, 9, (500, 2))]).astype(np.float32)
    save_coords(tmp_path, "pca", coords)
    expected = thinned_sample(coords, MAP_POINTS)
    saved = np.load(tmp_path / drawn_file("pca"))
    assert saved.tolist() == expected.tolist() and len(saved) <= MAP_POINTS
    np.save(tmp_path / drawn_file("pca"), saved[::2])                # what is on disk is what is read
    assert drawn_points(tmp_path, "pca", coords).tolist() == saved[::2].tolist()
    stale = os.stat(tmp_path / coords_file("pca")).st_mtime - 10
    os.utime(tmp_path / drawn_file("pca"), (stale, stale))           # older than the coordinates: not used
    assert drawn_points(tmp_path, "pca", coords).tolist() == expected.tolist()
    (tmp_path / drawn_file("pca")).unlink()
    assert drawn_points(tmp_path, "pca", coords).tolist() == expected.tolist()


UMAP_BAR = "{desc}: {percentage:3.0f}%| {bar} {n_fmt}/{total_fmt} [{elapsed}]"   # umap-learn's own bar_format


def test_umap_layout_epochs_reach_the_jobs_bar_as_json_lines(tmp_path):
    """UMAP takes no progress callback, only tqdm's arguments: its bar is read into JSON progress lines
    (core.projection.LayoutEpochs), which the job's bar shows: the share of layout epochs done, None before
    the first."""
    from tqdm.auto import tqdm

    from core.progress import ProgressLog
    from core.projection import LayoutEpochs
    from dashboard import jobs

    job = jobs.Job("umap", [], tmp_path / "umap.log", tmp_path / "umap.jsonl")
    assert job.fraction() is None
    stream = LayoutEpochs(ProgressLog(job.progress_path, min_interval=0), "UMAP layout of 9 points")
    for epoch in tqdm(range(300), desc="UMAP layout", file=stream, bar_format=UMAP_BAR, mininterval=0):
        if epoch == 201:
            break
    assert job.fraction() == pytest.approx(201 / 300)
    bar = job.progress_bars()[-1]
    assert bar.label == "UMAP layout of 9 points" and bar.text.startswith("UMAP layout of 9 points: 201/300")


@pytest.mark.slow
def test_umap_reports_its_layout_epochs(tmp_path):
    """The same through umap-learn itself: its epochs reach the callback, the last one at the end."""
    from core.projection import umap_2d

    calls = []
    points = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    coords = umap_2d(points, report=lambda done, total, phase: calls.append((done, total, phase)))
    assert coords.shape == (60, 2) and len(calls) >= 2
    assert calls[-1][0] == calls[-1][1] > 1 and calls[-1][2] == "UMAP layout of 60 points"


def test_the_pages_read_a_runs_saved_neighbours_instead_of_searching(tmp_path, monkeypatch):
    """A run written with its neighbours (every shipped, trained and imported run) gives the pages its table
    without any search: the saved lists and scores, read as they are; a run without them is searched."""
    import shutil
    from pathlib import Path

    import core.neighbours
    from dashboard import artifacts

    run = tmp_path / "shapes_gsp"
    shutil.copytree(Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_gsp", run)
    saved = core.neighbours.read_neighbours(run)
    assert saved is not None
    monkeypatch.setattr(core.neighbours, "all_neighbours", lambda *a, **k: pytest.fail("searched again"))
    table = artifacts.retrieval(str(run))
    assert (table.neighbours == saved.ids).all() and (table.map_at_r == saved.scores["map_at_r"]).all()
    labels = np.load(run / "artifacts" / "labels.npy")
    assert (table.top1_correct == (labels[saved.ids[:, 0]] == labels)).all()
    (run / "artifacts" / "neighbours.json").unlink()                  # an older run: searched once
    monkeypatch.undo()
    again = artifacts.retrieval(str(run))
    assert (again.neighbours == saved.ids).all()


def test_a_large_runs_retrieval_table_comes_from_a_kept_background_process(tmp_path, monkeypatch):
    """Past TABLE_IN_PROCESS_MAX items the all-vs-all table is scored by a low-priority process (not on the
    server's cores while the browser draws the map) and kept on disk: the same table as in process, and a
    second server reads it instead of scoring again."""
    from dashboard import artifacts, background, caching, jobs

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 40, 300)
    emb = rng.normal(size=(40, 16))[labels] + rng.normal(scale=0.8, size=(300, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    (tmp_path / "run" / "artifacts").mkdir(parents=True)
    np.save(tmp_path / "run" / "artifacts" / "embeddings.npy", emb)
    np.save(tmp_path / "run" / "artifacts" / "labels.npy", labels)
    monkeypatch.setattr(caching, "REPO", tmp_path)      # its .cache/ in the test's folder
    run = str(tmp_path / "run")
    assert len(labels) < artifacts.TABLE_IN_PROCESS_MAX   # called directly here: the page does so past it

    table = background.table_in_background(run)
    expected = logic.retrieval_table(emb, labels)
    for name, value in vars(expected).items():
        assert np.array_equal(getattr(table, name), value, equal_nan=value.dtype.kind == "f"), name
    assert background.retrieval_file(run).exists()
    monkeypatch.setattr(jobs, "spawn", lambda *a, **k: pytest.fail("scored again instead of read"))
    again = background.table_in_background(run)
    assert np.array_equal(again.neighbours, expected.neighbours)


def test_loaded_artifacts_are_kept_out_of_the_garbage_collectors_walks(tmp_path):
    """A run's artifacts (a big run's items: a million objects) are frozen out of the cyclic garbage collector
    once loaded: its full collections walked them with the GIL held, 0.3-0.8 s pauses in the middle of clicks."""
    import gc
    import json

    from dashboard import artifacts

    folder = tmp_path / "run" / "artifacts"
    folder.mkdir(parents=True)
    np.save(folder / "embeddings.npy", np.eye(4, dtype=np.float32))
    np.save(folder / "labels.npy", np.arange(4))
    (folder / "items.json").write_text(json.dumps([{"split": "test", "index": i, "class_name": f"c{i}"} for i in range(4)]))
    gc.unfreeze()
    art = artifacts._artifacts(str(tmp_path / "run"), 0.0, ())
    assert gc.get_freeze_count() > 0
    walked = {id(o) for o in gc.get_objects()}       # what a collection walks: not the frozen objects
    assert id(art.items) not in walked and id(art.store) not in walked and id(art.store.table) not in walked

