"""`python -m core import`: your own embeddings + a labels CSV become a run the dashboard opens (issue 13).

Real input: the test embeddings of a shipped shapes run and the procedural test images they came from,
written out as embeddings.npy + labels.csv + PNG files, imported, then opened on every page.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from core import checkpoint as ckpt
from core.importer import ImportRunError, import_run
from tests.test_dashboard_pages import item_maps, open_app, plotly_list

ROOT = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path, source: Path, images: bool = True) -> tuple[Path, Path]:
    """embeddings.npy + labels.csv (label, file, colour) from a run's artifacts; PNGs of its test images."""
    from PIL import Image

    art = source / ckpt.ARTIFACTS
    emb, items = np.load(art / "embeddings.npy"), json.loads((art / "items.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", emb)
    with open(folder / "labels.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["label", "file", "colour"])
        for i, item in enumerate(items):
            out.writerow([item["class_name"], f"img/{i:04d}.png", item["class_name"].split()[0]])
    if images:
        from core.data import build_datasets
        from dashboard.logic import to_uint8
        cfg = ckpt.load_config(source)
        test = build_datasets(cfg.data, seed=cfg.train.seed).test
        (folder / "img").mkdir(exist_ok=True)
        for i, item in enumerate(items):
            Image.fromarray(to_uint8(test[int(item["index"])][0])).save(folder / "img" / f"{i:04d}.png")
    return folder / "embeddings.npy", folder / "labels.csv"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from dashboard_testing import demo_runs

    scratch = tmp_path_factory.mktemp("import")
    source = demo_runs(scratch / "runs", 2)
    emb, labels = write_inputs(scratch / "inputs", Path(source[0]))
    run = scratch / "imported" / "my_embeddings"
    record = import_run(emb, labels, run, path_column="file")
    saved = {k: os.environ.get(k) for k in ("METRICLENS_AUTO_UMAP", "METRICLENS_RUNS")}
    os.environ["METRICLENS_AUTO_UMAP"] = "0"
    os.environ["METRICLENS_RUNS"] = os.pathsep.join(sorted({str(Path(r).resolve().parent) for r in source}
                                                           | {str(run.parent)}))
    yield {"run": str(run.resolve()), "record": record, "source": [str(Path(r).resolve()) for r in source],
           "inputs": scratch / "inputs"}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_import_writes_a_run_with_the_sources_metrics(imported):
    run, source = Path(imported["run"]), Path(imported["source"][0])
    art = run / ckpt.ARTIFACTS
    assert {p.name for p in art.iterdir()} == {"embeddings.npy", "labels.npy", "items.json", "items.parquet",
                                               "coords_pca.npy", "coords_pca_drawn.npy", "neighbours_ids.npy",
                                               "neighbours_sims.npy",
                                               "item_scores.npy", "neighbours.json"}
    metrics = json.loads((run / ckpt.METRICS).read_text())
    shipped = json.loads((source / ckpt.METRICS).read_text())["test"]
    for key in ("recall@1", "map_at_r", "r_precision"):  # the same embeddings score the same
        assert metrics["test"][key] == pytest.approx(shipped[key], abs=1e-6)
    assert metrics["model"] is None and metrics["imported"]["images"] == metrics["imported"]["items"]
    cfg = ckpt.load_config(run)
    assert cfg.data.name == "imported" and not (run / ckpt.WEIGHTS).exists()
    items = json.loads((art / "items.json").read_text())
    assert items[5]["colour"] == items[5]["class_name"].split()[0] and Path(items[5]["path"]).is_file()
    emb = np.load(art / "embeddings.npy")
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.load(art / "coords_pca.npy").shape == (len(emb), 2)


def test_own_coordinates_and_cli(imported, tmp_path, capsys):
    from core.__main__ import main

    emb = np.load(imported["inputs"] / "embeddings.npy")
    xy = np.random.default_rng(0).normal(size=(len(emb), 2))
    np.save(tmp_path / "xy.npy", xy)
    out = tmp_path / "with_coords"
    assert main(["import", "--embeddings", str(imported["inputs"] / "embeddings.npy"), "--labels",
                 str(imported["inputs"] / "labels.csv"), "--coords", str(tmp_path / "xy.npy"), "--out", str(out)]) == 0
    assert np.allclose(np.load(out / ckpt.ARTIFACTS / "coords_own.npy"), xy, atol=1e-6)
    assert json.loads(capsys.readouterr().out)["imported"]["coords"] == "own"
    # a second import into the same folder is refused, with the way out in the message
    assert main(["import", "--embeddings", str(imported["inputs"] / "embeddings.npy"), "--labels",
                 str(imported["inputs"] / "labels.csv"), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def _bad(tmp_path: Path, inputs: Path, case: str) -> tuple[Path, Path, dict]:
    emb = np.load(inputs / "embeddings.npy")
    rows = (inputs / "labels.csv").read_text().splitlines()
    kwargs = {}
    if case == "rows":
        np.save(tmp_path / "e.npy", emb[:-3])
    elif case == "nan":
        emb = emb.copy()
        emb[17, 3] = np.nan
        np.save(tmp_path / "e.npy", emb)
    elif case == "missing":
        return tmp_path / "nowhere.npy", inputs / "labels.csv", kwargs
    elif case == "text":
        np.save(tmp_path / "e.npy", emb.astype(str))
    elif case == "column":
        np.save(tmp_path / "e.npy", emb)
        kwargs["label_column"] = "species"
    elif case == "empty_label":
        np.save(tmp_path / "e.npy", emb)
        rows[10] = "," + rows[10].split(",", 1)[1]
    elif case == "coords":
        np.save(tmp_path / "e.npy", emb)
        np.save(tmp_path / "xy.npy", np.zeros((len(emb), 3)))
        kwargs["coords"] = tmp_path / "xy.npy"
    elif case == "coords_nan":
        np.save(tmp_path / "e.npy", emb)
        xy = np.zeros((len(emb), 2))
        xy[5, 1] = np.inf
        np.save(tmp_path / "xy.npy", xy)
        kwargs["coords"] = tmp_path / "xy.npy"
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "e.npy", tmp_path / "l.csv", kwargs


@pytest.mark.parametrize("case, says", [
    ("rows", ["957 rows", "960 data rows", "same order"]),
    ("nan", ["NaN", "row 17"]),
    ("missing", ["nowhere.npy does not exist"]),
    ("text", ["not numbers", "float"]),
    ("column", ["no column 'species'", "--label-column", "label, file, colour"]),
    ("empty_label", ["row 10", "empty 'label'"]),
    ("coords", ["expected 960×2"]),
    ("coords_nan", ["NaN or infinite", "row 5", "--coords"]),
])
def test_bad_inputs_say_what_is_wrong_and_write_nothing(imported, tmp_path, case, says):
    emb, labels, kwargs = _bad(tmp_path, imported["inputs"], case)
    out = tmp_path / "out" / "run"
    with pytest.raises(ImportRunError) as err:
        import_run(emb, labels, out, **kwargs)
    for phrase in says:
        assert phrase in str(err.value), str(err.value)
    assert not out.exists() and not any((tmp_path / "out").glob(".*")) if (tmp_path / "out").exists() else True


# ---- the dashboard on an imported run ------------------------------------------------------------------
def test_imported_run_is_listed_and_explore_draws_its_map_and_images(imported):
    at = open_app(imported["run"])
    picker = at.selectbox(key="w_run")
    r1 = imported["record"]["test"]["recall@1"]
    assert f"my_embeddings · R@1 {r1:.3f} · imported embeddings" in picker.options
    assert picker.value == imported["run"]
    chart = next(c for c in item_maps(at) if c.key == "explore_map")
    assert sum(len(plotly_list(trace["x"])) for trace in json.loads(chart.proto.spec)["data"]) >= 960
    # a selection shows the imported images with their labels
    at.session_state["explore_map"] = {"selection": {"points": [{"customdata": [i]} for i in (0, 1, 2)],
                                                     "point_indices": [0, 1, 2], "box": [], "lasso": []}}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [c.caption for img in at.get("image") for c in img.proto.imgs]
    assert len(captions) == 3, captions


@pytest.mark.parametrize("page", ["attention", "cross"])
def test_pages_that_need_a_model_say_so(imported, page):
    at = open_app(imported["run"], page)
    assert any("imported from embeddings; it has no model" in i.value for i in at.info), [i.value for i in at.info]
    assert not at.error


def test_retrieval_by_item_works_and_upload_says_no_model(imported):
    at = open_app(imported["run"], "retrieval", query=4)
    captions = [c.caption for img in at.get("image") for c in img.proto.imgs]
    assert any(c.startswith("#4 ") for c in captions) and sum("✓" in c or "✗" in c for c in captions) >= 8
    at.radio(key="retrieval_source").set_value("Upload an image").run()
    assert not at.exception
    assert any("uploaded image" in i.value and "no model" in i.value for i in at.info)


def test_compare_an_imported_run_with_its_source(imported):
    at = open_app(imported["run"], "compare", compare_run=imported["source"][0])
    body = "\n".join(str(e.value) for kind in ("markdown", "subheader", "caption") for e in at.get(kind))
    assert "The same query in both runs" in body
    # the same embeddings: every query's first true match sits at the same rank in both
    assert "later for 0" in body and "sooner for 0" in body


def test_explore_offers_the_imported_coordinates(imported, tmp_path):
    emb = np.load(imported["inputs"] / "embeddings.npy")
    xy = np.random.default_rng(1).normal(size=(len(emb), 2)).astype(np.float32)
    np.save(tmp_path / "xy.npy", xy)
    out = tmp_path / "own_map"
    import_run(imported["inputs"] / "embeddings.npy", imported["inputs"] / "labels.csv", out, coords=tmp_path / "xy.npy")
    at = open_app(str(out.resolve()), extra_runs_root=str(out))
    radio = at.radio(key="explore_projection")
    assert "Own 2-D" in radio.options
    radio.set_value("Own 2-D").run()
    assert not at.exception, [e.value for e in at.exception]
    trace = json.loads(next(c for c in item_maps(at) if c.key == "explore_map").proto.spec)["data"][0]
    ids = np.asarray(plotly_list(trace["customdata"])).ravel()
    assert np.allclose(plotly_list(trace["x"]), xy[ids, 0]) and np.allclose(plotly_list(trace["y"]), xy[ids, 1])


def test_a_path_column_is_found_by_name_and_read_relative_to_the_csv(tmp_path):
    from core.importer import build_items, read_table

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "l.csv").write_text("label,path,note\n3,a.png,first\n3,b.png,\n7,,x\n")
    labels, items, found = build_items(read_table(tmp_path / "l.csv"), tmp_path / "l.csv", "label", None, None)
    assert labels.tolist() == [3, 3, 7] and [it["class_name"] for it in items] == ["3", "3", "7"]
    assert items[0]["path"] == str((tmp_path / "a.png").resolve()) and items[2]["path"] is None and found == 1
    assert items[0]["note"] == "first" and "label" not in items[0] and "path" in items[1]


def test_image_paths_that_do_not_exist_are_refused_unless_some_exist_and_that_is_allowed(imported, tmp_path):
    inputs = imported["inputs"]
    emb = inputs / "embeddings.npy"
    with pytest.raises(ImportRunError) as err:    # every path missing: a wrong root, almost surely
        import_run(emb, inputs / "labels.csv", tmp_path / "none", path_column="file", image_root=tmp_path,
                   allow_missing=True)
    assert "none of the 960 image paths exists" in str(err.value) and "--image-root" in str(err.value)
    rows = (inputs / "labels.csv").read_text().splitlines()
    gone = (3, 10, 11)
    for i in gone:                                 # data row i is line i + 1
        rows[i + 1] = rows[i + 1].replace(".png", "_gone.png")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ImportRunError, match=r"3 of the 960 image paths do not exist .*--allow-missing"):
        import_run(emb, tmp_path / "labels.csv", tmp_path / "some", path_column="file", image_root=inputs)
    assert not (tmp_path / "some").exists()
    said = []
    record = import_run(emb, tmp_path / "labels.csv", tmp_path / "some", path_column="file", image_root=inputs,
                        allow_missing=True, log=said.append)
    assert record["imported"]["images"] == 957 and "3 of 960 image paths do not exist" in said[0]

    # hover thumbnails of an imported run: the files its items name (issue 24, item 3); a missing one stays grey
    from PIL import Image

    from dashboard.workers import SHEET_SIDE, THUMB_SIDE, thumbnails
    thumbnails(str(tmp_path / "some"), str(tmp_path / "thumbs"), lambda *_: None)
    sheet = np.asarray(Image.open(tmp_path / "thumbs" / "0.jpg").convert("RGB"), dtype=float)
    assert len(list((tmp_path / "thumbs").glob("*.jpg"))) == -(-960 // SHEET_SIDE ** 2)

    def cell(i):
        r, c = divmod(i, SHEET_SIDE)
        return sheet[r * THUMB_SIDE:(r + 1) * THUMB_SIDE, c * THUMB_SIDE:(c + 1) * THUMB_SIDE]
    for i in gone:
        assert np.abs(cell(i)[4:-4, 4:-4] - 128).max() < 8           # JPEG bleeds a little across a cell's edge
    own = np.asarray(Image.open(inputs / "img" / "0000.png").convert("RGB").resize((THUMB_SIDE,) * 2), dtype=float)
    assert np.abs(cell(0) - own).mean() < 12 and cell(0).std() > 10     # item 0's own image, not grey
