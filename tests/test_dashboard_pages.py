"""Every dashboard page under Streamlit's AppTest: renders without exception, shows its key elements,
and reacts to injected plotly selections (AppTest cannot drive plotly; research/dashboard.md §3.5).

Uses the first runs in checkpoints/ (or tiny runs trained into a scratch folder when there are none).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from dashboard.testing import demo_runs

    saved = {k: os.environ.get(k) for k in ("METRICLENS_AUTO_UMAP", "METRICLENS_RUNS")}
    os.environ["METRICLENS_AUTO_UMAP"] = "0"  # never start UMAP's ~40 s numba JIT in a test
    scratch = tmp_path_factory.mktemp("dashboard_runs")
    found = [str(r.resolve()) for r in demo_runs(scratch, 2)]
    os.environ["METRICLENS_RUNS"] = os.pathsep.join(sorted({str(Path(r).parent) for r in found}))
    yield found
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def open_app(run: str, page: str | None = None, **session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["run"] = run
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(f"dashboard/pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "header", "subheader", "title", "info", "error", "warning", "success")
             for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


def artifacts(run: str):
    art = Path(run) / "artifacts"
    return np.load(art / "embeddings.npy"), np.load(art / "labels.npy")


# ---- Explore ------------------------------------------------------------------------------------------
def test_explore_map_is_webgl_with_list_customdata(runs):
    at = open_app(runs[0])
    chart = at.get("plotly_chart")[0]
    spec = json.loads(chart.proto.spec)
    assert spec["layout"]["dragmode"] == "lasso"
    assert all(trace["type"] == "scattergl" for trace in spec["data"])
    ids = [i for trace in spec["data"] for i in trace["customdata"]]
    assert sorted(ids) == list(range(len(artifacts(runs[0])[1])))  # plain lists of every item id
    assert "Lasso or box-select" in texts(at)


def test_explore_selection_shows_grid_and_metrics(runs):
    from dashboard import logic

    emb, labels = artifacts(runs[0])
    picked = [0, 3, 5, 7, 11]
    at = open_app(runs[0])
    at.session_state["explore_map"] = {"selection": {
        "points": [{"customdata": i, "curve_number": 0, "point_index": i} for i in picked[:-1]]
        + [{"customdata": {"0": picked[-1]}}],  # the numpy-backed {'0': v} form decodes too
        "point_indices": picked, "box": [], "lasso": []}}
    at.run()
    assert not at.exception
    assert f"Selection: {len(picked)} of {len(labels)} items" in texts(at)
    assert sum(len(img.proto.imgs) for img in at.get("image")) == len(picked)
    expected = logic.selection_metrics(logic.retrieval_table(emb, labels), np.asarray(picked))
    shown = {m.label: m.value for m in at.metric}
    for name in ("R@1", "MAP@R"):
        assert shown[f"{name} of the selection"] == f"{expected[name][0]:.3f}"


def test_explore_colour_by_correctness_and_open_item(runs):
    at = open_app(runs[0])
    at.selectbox(key="explore_colour").set_value("top-1 neighbour correct").run()
    names = {t["name"] for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}
    assert names <= {"top-1 correct", "top-1 wrong"} and names
    at.session_state["explore_map"] = {"selection": {"points": [{"customdata": 4}], "point_indices": [4],
                                                     "box": [], "lasso": []}}
    at.run()
    at.button(key="explore_to_retrieval").click().run()
    assert not at.exception
    assert at.session_state["query"] == 4
    assert at.title[0].value == "Retrieval"


# ---- Retrieval ----------------------------------------------------------------------------------------
def test_retrieval_neighbours_and_failure_to_attention(runs):
    emb, labels = artifacts(runs[0])
    at = open_app(runs[0], "retrieval", query=2)
    neighbour_caps = [c for img in at.get("image") for c in img.proto.imgs for c in [c.caption] if c[:1] in "✓✗"]
    assert len(neighbour_caps) >= 8
    sims = emb @ emb[2]
    sims[2] = -np.inf
    top1 = int(np.argmax(sims))
    assert f"#{top1} " in neighbour_caps[0]
    assert ("✓" if labels[top1] == labels[2] else "✗") == neighbour_caps[0][0]
    assert "Hardest failures" in texts(at)
    failure_buttons = [b for b in at.button if b.key and b.key.startswith("failure_")]
    assert failure_buttons
    failure_buttons[0].click().run()
    assert not at.exception
    assert at.title[0].value == "Attention"
    assert at.session_state["attention_neighbour"] is not None


def test_retrieval_random_query_and_k(runs):
    at = open_app(runs[0], "retrieval")
    at.slider(key="retrieval_k").set_value(4).run()
    at.button(key="retrieval_random").click().run()
    assert not at.exception
    assert 0 <= at.session_state["query"] < len(artifacts(runs[0])[1])
    assert at.query_params["query"] == str(at.session_state["query"])


# ---- Attention --------------------------------------------------------------------------------------
def test_attention_maps_split_and_attribution(runs):
    at = open_app(runs[0], "attention", query=1)
    body = texts(at)
    assert "Where the model pooled" in body and "What moved the similarity" in body
    assert any("similarity to the target" in c.caption for img in at.get("image") for c in img.proto.imgs)
    at.radio(key="attention_method").set_value("integrated_gradients").run()
    assert not at.exception
    at.slider(key="attention_opacity").set_value(0.8).run()
    assert not at.exception


# ---- Cross-image ------------------------------------------------------------------------------------
def test_cross_image_maps_and_patch_click(runs):
    at = open_app(runs[0], "cross", query=3)
    if any("not available" in w.value for w in at.warning):
        pytest.skip("core.explain.cross_attention is not in this build")
    assert "A → B" in " ".join(c.caption for img in at.get("image") for c in img.proto.imgs)
    picker = next(c for c in at.get("plotly_chart") if c.key and c.key.startswith("cross_patch_picker"))
    grid_w = int(picker.key.rsplit("x", 1)[1])
    at.session_state[picker.key] = {"selection": {"points": [{"customdata": grid_w + 2}], "point_indices": [],
                                                  "box": [], "lasso": []}}
    at.run()
    assert not at.exception
    assert at.session_state["cross_patch"] == (1, 2)
    assert any("row 1, col 2" in c.caption for img in at.get("image") for c in img.proto.imgs)


# ---- Compare ------------------------------------------------------------------------------------------
def test_compare_two_runs(runs):
    at = open_app(runs[0], "compare", compare_run=runs[1])
    body = texts(at)
    assert "The same query in both runs" in body and "disagree most" in body
    assert len(at.dataframe) == 2
    assert {c.key for c in at.get("plotly_chart")} >= {"compare_rank_hist", "compare_jaccard_hist"}
    first = int(at.dataframe[1].value["query"].iloc[0])
    at.session_state["compare_disagreements"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert not at.exception
    assert at.session_state["query"] == first


# ---- Train and Learn ------------------------------------------------------------------------------------
def test_train_form_rejects_bad_input(runs):
    at = open_app(runs[0], "train")
    stem = Path(at.selectbox(key="train_config").value).stem
    at.text_input(key=f"train_name_{stem}").set_value("no spaces allowed!")
    at.button[0].click().run()  # the form's submit button
    assert any("Run name" in e.value for e in at.error)
    at.text_input(key=f"train_name_{stem}").set_value("ok_name")
    at.text_input(key=f"train_extra_{stem}").set_value("train.nonexistent=3")
    at.button[0].click().run()
    assert any("valid config" in e.value for e in at.error)
    assert not at.session_state["run"].endswith("ok_name")


def test_learn_page_knobs(runs):
    at = open_app(runs[0], "learn")
    body = texts(at)
    for method in ("GAP", "Grouping", "GSP", "CSA", "DSL", "CIA"):
        assert method in body
    at.slider(key="learn_mu").set_value(1.0).run()
    at.slider(key="learn_groups").set_value(5).run()
    at.slider(key="learn_bases").set_value(8).run()
    assert not at.exception


# ---- deep links and bad input --------------------------------------------------------------------------
def test_deep_link_sets_page_run_and_query(runs):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = "retrieval"
    at.query_params["run"] = runs[1]
    at.query_params["query"] = "5"
    at.run()
    assert not at.exception
    assert at.title[0].value == "Retrieval"
    assert at.session_state["run"] == runs[1] and at.session_state["query"] == 5
    assert at.query_params["page"] == "retrieval" and at.query_params["query"] == "5"


def test_opens_on_the_opening_run_and_lists_every_run_with_metrics(runs, tmp_path, monkeypatch):
    """With no link, the dashboard opens on OPENING_RUN if present (else the first finished run) and the
    sidebar lists every run with its test metrics."""
    from dashboard.state import OPENING_RUN

    folder = tmp_path / "runs"
    for name in ("a_first", OPENING_RUN):
        shutil.copytree(runs[0], folder / name, ignore=shutil.ignore_patterns("resume.pt"))
    monkeypatch.setenv("METRICLENS_RUNS", str(folder))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    listed = " | ".join(at.sidebar.selectbox[0].options)  # labels: "name · method/backbone · R@1 …"
    assert "a_first" in listed and OPENING_RUN in listed, listed
    assert Path(at.session_state["run"]).name == OPENING_RUN
    recall = json.loads((Path(runs[0]) / "metrics.json").read_text())["test"]["recall@1"]
    assert f"R@1 **{recall:.3f}**" in texts(at)


def test_deep_link_to_a_run_outside_the_listed_folders(runs, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(runs[0], elsewhere, ignore=shutil.ignore_patterns("resume.pt"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = str(elsewhere)
    at.run()
    assert not at.exception
    assert at.session_state["run"] == str(elsewhere.resolve())
    assert at.query_params["run"] == "elsewhere"


def test_damaged_run_gives_clear_error(runs, tmp_path):
    broken = tmp_path / "broken_run"
    shutil.copytree(runs[0], broken, ignore=shutil.ignore_patterns("resume.pt"))
    (broken / "weights.safetensors").write_bytes(b"not safetensors")
    at = open_app(str(broken), extra_runs_root=str(broken))
    assert any("cannot be used" in e.value and "damaged" in e.value for e in at.error)
    config = json.loads((broken / "config.json").read_text())
    config["model"]["embed_dim"] += 8  # weights no longer match the config (still a buildable model)
    (broken / "config.json").write_text(json.dumps(config))
    shutil.copy(Path(runs[0]) / "weights.safetensors", broken / "weights.safetensors")
    at = open_app(str(broken), extra_runs_root=str(broken))
    assert any("does not match its config.json" in e.value for e in at.error)
    shutil.copy(Path(runs[0]) / "config.json", broken / "config.json")
    np.save(broken / "artifacts" / "embeddings.npy", np.zeros((len(artifacts(runs[0])[1]), 3), np.float32))
    at = open_app(str(broken), extra_runs_root=str(broken))
    assert any("belong to another model" in e.value for e in at.error)
    (broken / "artifacts" / "items.json").unlink()
    at = open_app(str(broken), extra_runs_root=str(broken))
    assert any("lacks items.json" in e.value for e in at.error)


def test_moved_dataset_keeps_map_and_explains(runs, tmp_path):
    moved = tmp_path / "moved_run"
    shutil.copytree(runs[0], moved, ignore=shutil.ignore_patterns("resume.pt"))
    config = json.loads((moved / "config.json").read_text())
    config["data"].update(name="folder", root=str(tmp_path / "gone"))
    (moved / "config.json").write_text(json.dumps(config))
    at = open_app(str(moved), extra_runs_root=str(moved))
    assert at.get("plotly_chart"), "the map needs only the artifacts"
    at.switch_page("dashboard/pages/retrieval.py").run()
    assert not at.exception
    assert any("images cannot be read" in e.value and "does not exist" in e.value for e in at.error)
    assert any(t.label == "Data folder for this run" for t in at.text_input)


@pytest.mark.slow
def test_train_page_runs_lists_and_cancels_a_job(runs, tmp_path):
    import time

    from dashboard import state

    at = open_app(runs[0], "train", extra_runs_root=str(tmp_path))
    stem = Path(at.selectbox(key="train_config").value).stem
    at.number_input(key=f"train_epochs_{stem}").set_value(30)
    at.text_input(key=f"train_name_{stem}").set_value("tiny_job")
    at.text_input(key=f"train_root_{stem}").set_value(str(tmp_path))
    at.text_input(key=f"train_extra_{stem}").set_value(
        "data.max_per_class=8 data.shapes.test_per_class=8 data.shapes.train_per_class=8 model.embed_dim=16")
    at.button[0].click().run()
    assert not at.exception and not at.error
    job = state.training_jobs().jobs[str(tmp_path / "tiny_job")]
    deadline = time.time() + 120
    while not (tmp_path / "tiny_job" / "history.csv").exists() and time.time() < deadline:
        assert job.status == "running", job.log_tail()
        time.sleep(0.5)
    at.run()
    assert any("epoch" in (p.proto.text or "") for p in at.get("progress"))
    assert any(o.startswith("tiny_job · ") for o in at.selectbox(key="w_run").options)  # listed while training
    at.button(key=f"cancel_{tmp_path / 'tiny_job'}").click().run()
    assert job.status == "cancelled"
    assert (tmp_path / "tiny_job" / "resume.pt").exists()  # the last completed epoch is kept
    assert any("Cancelled" in w.value and "completed epoch(s) are kept" in w.value for w in at.warning)


@pytest.mark.slow
@pytest.mark.parametrize("config,epochs", [("shapes_grouping.yaml", 0), ("shapes_gsp.yaml", 0),
                                           ("shapes_csa.yaml", 0), ("shapes_cia.yaml", 0), ("shapes_dsl.yaml", 1)])
def test_pages_render_every_method(runs, tmp_path_factory, config, epochs):
    """Maps are rendered generically, whatever their names and channel counts (no page knows a method)."""
    from dashboard.testing import train_tiny

    if not (ROOT / "configs" / config).exists():
        pytest.skip(f"configs/{config} is not in this build")
    run = str(train_tiny(tmp_path_factory.mktemp("method") / Path(config).stem, config=config, epochs=epochs))
    at = open_app(run, extra_runs_root=run)
    assert at.get("plotly_chart")
    for page in ("retrieval", "attention", "cross", "learn"):
        at.switch_page(f"dashboard/pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
    if config == "shapes_dsl.yaml":
        assert at.get("plotly_chart"), "the DSL growth replay is drawn from dsl_events.json"


def test_finished_job_opens_its_run(runs, tmp_path):
    import sys
    import time

    from dashboard import jobs, state

    done = tmp_path / "finished_run"
    shutil.copytree(runs[1], done, ignore=shutil.ignore_patterns("resume.pt"))
    job = jobs.TrainJob.start("finished_run", done, [sys.executable, "-c", "print('epoch 1/1 done')"], owner="me")
    while job.status == "running":
        time.sleep(0.05)
    state.training_jobs().jobs[str(done)] = job
    try:
        at = open_app(runs[0], "train", extra_runs_root=str(tmp_path), _session_owner="me")
        assert any("Done" in s.value for s in at.success)
        at.button(key=f"explore_{done}").click().run()
        assert not at.exception
        assert at.title[0].value == "Explore the embedding"
        assert at.session_state["run"] == str(done.resolve())
    finally:
        state.training_jobs().jobs.pop(str(done), None)


def test_explore_without_umap_shows_pca_at_once(runs, tmp_path):
    bare = tmp_path / "no_umap_run"
    shutil.copytree(runs[0], bare, ignore=shutil.ignore_patterns("resume.pt", "coords_umap.npy"))
    at = open_app(str(bare), extra_runs_root=str(bare))  # METRICLENS_AUTO_UMAP=0 in these tests
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["title"]["text"].startswith("PCA of")
    assert any(b.label == "Compute UMAP" for b in at.button)
    assert not (bare / "artifacts" / "coords_umap.npy").exists()


def test_uploaded_query_on_retrieval_and_attention(runs):
    from PIL import Image

    from core.checkpoint import load_config
    from core.data import build_transform

    image = Image.fromarray((np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8))
    pixels = build_transform(load_config(runs[0]).data, train=False)(image).numpy()  # as ui.upload_widget stores it
    at = open_app(runs[0], upload_query={"name": "mine.png", "size": 1, "run": runs[0], "pixels": pixels})
    at.switch_page("dashboard/pages/retrieval.py").run()
    assert not at.exception
    captions = [c.caption for img in at.get("image") for c in img.proto.imgs]
    assert any("uploaded: mine.png" in c for c in captions)
    assert "query" not in at.query_params  # an upload has no item number to link to
    at.switch_page("dashboard/pages/attention.py").run()
    assert not at.exception and "What moved the similarity" in texts(at)
