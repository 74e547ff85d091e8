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

from dashboard_testing import item_maps  # the item maps are a component, not plotly charts

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from dashboard_testing import demo_runs

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
    at = AppTest.from_file(APP, default_timeout=180)
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
def plotly_list(value) -> list:
    """A figure array from the chart's JSON: a list, or a typed array (numpy arrays are sent as
    {"dtype", "bdata"}: base64 of the raw values)."""
    if isinstance(value, dict) and "bdata" in value:
        import base64
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def test_explore_map_is_webgl_with_item_ids_as_customdata(runs):
    at = open_app(runs[0])
    chart = item_maps(at)[0]
    spec = json.loads(chart.proto.spec)
    assert spec["layout"]["dragmode"] == "lasso"
    assert all(trace["type"] == "scattergl" for trace in spec["data"])
    ids = [i for trace in spec["data"] for i in plotly_list(trace["customdata"])]
    assert sorted(ids) == list(range(len(artifacts(runs[0])[1])))  # every item id once
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
    names = {t["name"] for t in json.loads(item_maps(at)[0].proto.spec)["data"]}
    assert names <= {"top-1 correct", "top-1 wrong"} and names
    at.session_state["explore_map"] = {"selection": {"points": [{"customdata": 4}], "point_indices": [4],
                                                     "box": [], "lasso": []}}
    at.run()
    at.button(key="explore_to_retrieval").click().run()
    assert not at.exception
    assert at.session_state["query"] == 4
    assert at.title[0].value == "Retrieval"


def inject(at: AppTest, ids) -> None:
    """A selection as the browser sends it (AppTest cannot drive plotly; research/dashboard.md §3.5)."""
    at.session_state["explore_map"] = {"selection": {"points": [{"customdata": int(i)} for i in ids],
                                                     "point_indices": list(ids), "box": [], "lasso": []}}
    at.run()
    assert not at.exception


def selected_on_map(at: AppTest) -> set[int]:
    """Item ids the map draws as selected (selectedpoints of each trace, mapped through customdata)."""
    spec = json.loads(item_maps(at)[0].proto.spec)
    return {plotly_list(t["customdata"])[j] for t in spec["data"] for j in (t.get("selectedpoints") or [])}


def test_explore_selection_survives_recolouring_and_projection(runs):
    """Issue 13, defect 2: select, then recolour or re-project: the same items stay selected (grid, metrics
    and the map's highlight), a new selection replaces them, and a double-click (id -1) clears."""
    picked = [2, 9, 30]
    n = len(artifacts(runs[0])[1])
    at = open_app(runs[0])
    inject(at, picked)
    assert f"Selection: {len(picked)} of {n} items" in texts(at)
    at.selectbox(key="explore_colour").set_value("top-1 neighbour correct").run()
    assert not at.exception
    assert f"Selection: {len(picked)} of {n} items" in texts(at)
    assert selected_on_map(at) == set(picked)
    at.radio(key="explore_projection").set_value("PCA").run()
    assert f"Selection: {len(picked)} of {n} items" in texts(at) and selected_on_map(at) == set(picked)
    inject(at, [5])  # a click on one point, passed on by the click bridge
    assert f"Selection: 1 of {n} items" in texts(at) and selected_on_map(at) == {5}
    inject(at, [-1])  # the bridge's double-click
    assert "Selection:" not in texts(at) and "click one" in texts(at)


def test_explore_legend_matches_class_names_and_stays_distinct(runs):
    """Issue 13, defect 6: on shapes the class 'green circle' is a green circle; a generic many-class legend
    uses ten distinct hues times symbols, never 32 near-identical hues."""
    import colorsys

    from dashboard import figures

    hues = {"red": 0, "orange": 30, "yellow": 50, "green": 120, "cyan": 185, "blue": 220, "magenta": 300}
    symbols = {"circle": "circle", "ring": "circle-open", "square": "square", "diamond": "diamond", "cross": "cross",
               "star": "star", "hexagon": "hexagon", "triangle": "triangle-up"}
    at = open_app(runs[0])
    traces = json.loads(item_maps(at)[0].proto.spec)["data"]
    if all(t["name"].split()[0] in {*hues, "white"} for t in traces):  # the shapes data set
        for t in traces:
            colour, shape = t["name"].split()[0], t["name"].split()[-1]
            rgb = [int(t["marker"]["color"][i:i + 2], 16) / 255 for i in (1, 3, 5)]
            hue, _, saturation = colorsys.rgb_to_hls(*rgb)
            if colour == "white":
                assert saturation < 0.15 and sum(rgb) > 2.5, t["name"]
            else:
                assert min(abs(hue * 360 - hues[colour]), 360 - abs(hue * 360 - hues[colour])) < 25, t["name"]
            assert t["marker"].get("symbol") == symbols[shape], t["name"]
    styles = figures.category_styles([f"class {i}" for i in range(32)])
    assert len(set(styles.values())) == 32
    assert {c for c, _ in styles.values()} <= set(figures.DISTINCT)


def test_dominant_channel_reports_progress_and_is_kept_on_disk(runs, tmp_path, monkeypatch):
    """Issue 13, defect 8: "Colour by dominant channel" (a pass over every test image) shows progress and is
    computed once per run: a new server process (empty memory cache) reads it back from .cache/."""
    import streamlit as st

    from dashboard import caching, explanations

    monkeypatch.setattr(caching, "REPO", tmp_path)  # the disk cache goes under tmp_path/.cache
    st.cache_data.clear()  # an earlier test may hold the masses in memory
    multi = next((r for r in runs if any(s[0] > 1 for s in explanations.map_shapes(r).values())), None)
    if multi is None:
        pytest.skip("no run with multi-channel maps")
    calls = []  # one pass over the test images (the page's call below finds it in memory), reporting progress
    first = explanations._map_channel_mass(multi, caching.artifact_stamp(multi), None, caching.weights_stamp(multi),
                                           _progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] == len(artifacts(multi)[1])
    at = open_app(multi)
    option = next(o for o in at.selectbox(key="explore_colour").options if o.startswith("dominant ") and "channel" in o)
    at.selectbox(key="explore_colour").set_value(option).run()
    assert not at.exception
    names = {t["name"] for t in json.loads(item_maps(at)[0].proto.spec)["data"]}
    assert names and all(" channel " in n for n in names)
    files = list((tmp_path / ".cache" / "channel_mass").glob("*.npz"))
    assert len(files) == 1
    calls.clear()
    st.cache_data.clear()  # as a restarted server: only the disk copy is left
    again = explanations._map_channel_mass(multi, caching.artifact_stamp(multi), None, caching.weights_stamp(multi),
                                           _progress=lambda done, total: calls.append((done, total)))
    assert not calls  # read back, not recomputed
    with np.load(files[0]) as saved:
        assert set(saved.files) == set(first) == set(again)


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


def column_rows(at: AppTest) -> list[tuple[int, list[str]]]:
    """Every st.columns row of the page: (number of columns, image captions inside it)."""
    rows = []

    def walk(node):
        kids = getattr(node, "children", None) or {}
        cols = [c for c in kids.values() if type(c).__name__ == "Column"]
        if cols:
            caps = [c.caption for col in cols for el in col.children.values()
                    if getattr(el, "type", "") == "image" for c in el.proto.imgs]
            rows.append((len(cols), caps))
        for child in kids.values():
            walk(child)
    walk(at.main)
    return rows


def test_attention_rows_stay_readable_and_footer_matches_panels(runs, monkeypatch):
    """Issue 13, defect 5: with 8 neighbours the panels wrap into rows of at most 5 (one row of 10 columns broke
    captions mid-word), every map row has a colour bar, and the attribution footer describes the third
    panel only when it is drawn. The third panel reuses the query's attribution towards the target drawn
    in the first: three Captum passes for three panels, not four."""
    import core.attribution
    from dashboard import explanations, logic

    emb, labels = artifacts(runs[0])
    table = logic.retrieval_table(emb, labels)
    correct = int(np.flatnonzero(table.top1_correct)[0])   # its top-1 is its nearest true match: 2 panels
    at = open_app(runs[0], "attention", query=correct)
    at.slider(key="attention_k").set_value(8).run()
    assert not at.exception
    image_rows = [n for n, caps in column_rows(at) if caps]
    assert image_rows and max(image_rows) <= 5, image_rows
    bars = [c.caption for img in at.get("image") for c in img.proto.imgs if c.caption.startswith("colour scale")]
    map_rows = 0 if "exposes no attention maps" in texts(at) else 1
    assert len(bars) >= map_rows + 1 and any("(red)" in b for b in bars), bars  # each map row + the attribution
    footer = next(c.value for c in at.caption if c.value.startswith("Red pushed"))
    assert "third panel" not in footer and "nearest true match" in footer
    wrong = int(np.flatnonzero(~table.top1_correct & (table.relevant > 0))[0])  # target != true match: 3 panels
    passes = []
    attribute = core.attribution.similarity_attribution
    monkeypatch.setattr(core.attribution, "similarity_attribution",
                        lambda *args, **kw: passes.append(1) or attribute(*args, **kw))
    explanations._explain.clear()                               # no attribution cached by earlier tests
    at.session_state["query"] = wrong
    at.run()
    footer = next(c.value for c in at.caption if c.value.startswith("Red pushed"))
    assert "third panel" in footer
    assert len(passes) == 3  # query → target, target → query, query → true match (the difference's other term)


def test_retrieval_k_survives_upload_mode_and_compare_keeps_thumbnails_small(runs):
    """Issue 13, defect 5: k = 1, then upload mode (the slider is not drawn meanwhile), then an upload: the
    slider as sent to the browser reads 1, the k shown. Compare with k = 1 keeps the 8-column grid."""
    from PIL import Image

    from core.checkpoint import load_config
    from core.data import build_transform

    at = open_app(runs[0], "retrieval")
    at.slider(key="retrieval_k").set_value(1).run()
    at.radio(key="retrieval_source").set_value("Upload an image").run()
    assert not at.slider  # no upload yet: the page stops before the slider
    image = Image.fromarray((np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8))
    pixels = build_transform(load_config(runs[0]).data, train=False)(image).numpy()
    at.session_state["upload_query"] = {"name": "mine.png", "size": 1, "run": runs[0], "pixels": pixels}
    at.run()
    slider = at.slider(key="retrieval_k").proto
    shown = list(slider.value) if slider.set_value else list(slider.default)  # what the browser draws
    assert shown == [1]
    neighbour_rows = [caps for _, caps in column_rows(at) if caps and " · " in caps[0]]
    assert len(neighbour_rows[0]) == 1

    at = open_app(runs[0], "compare", compare_run=runs[1])
    at.slider(key="compare_k").set_value(1).run()
    assert not at.exception
    rows = [n for n, caps in column_rows(at) if caps and caps[0][:1] in "✓✗"]
    assert rows and all(n == 8 for n in rows), rows  # one thumbnail in one of 8 columns, not a full-width one


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


def test_train_page_offers_the_real_recipes_for_your_own_folder(runs, tmp_path, monkeypatch):
    """The picker marks the real_<method>.yaml recipes as photo recipes for your own folder or CSV; with a
    folder picked the command trains on it (a folder that does not exist is refused first), and without a
    GPU the frozen backbone is the default (cached features; the quick fine-tuning sets its epochs)."""
    import torch

    from dashboard import jobs

    started = []
    monkeypatch.setattr(jobs.JobBoard, "start", lambda self, job: started.append(job.command))
    at = open_app(runs[0], "train")
    labels = at.selectbox(key="train_config").options
    assert [o for o in labels if o.startswith("real_")] and all(
        "your own folder or CSV" in o for o in labels if o.startswith("real_"))
    assert all("procedural shapes" in o for o in labels if o.startswith("shapes_"))
    at.selectbox(key="train_config").set_value(ROOT / "configs" / "real_gap.yaml").run()
    at.radio(key="train_data_source").set_value("folder").run()
    at.text_input(key="train_data_folder").set_value(str(tmp_path / "nowhere")).run()
    assert any("is not a folder" in e.value for e in at.error)
    at.button[0].click().run()
    assert not started
    photos = tmp_path / "photos"
    photos.mkdir()
    at.text_input(key="train_data_folder").set_value(str(photos)).run()
    assert not at.error and not at.exception
    frozen = not torch.cuda.is_available()
    assert at.radio(key="train_mode").value == ("frozen" if frozen else "full")
    at.button[0].click().run()
    assert not at.error, [e.value for e in at.error]
    command = started[0]
    assert "data.name=folder" in command and f'data.root="{photos.resolve()}"' in command
    assert command[command.index("--epochs") + 1] == "15" and ("model.freeze_backbone=true" in command) == frozen
    at.radio(key="train_mode").set_value("quick").run()
    at.button[0].click().run()
    command = started[1]
    assert command[command.index("--epochs") + 1] == "2" and "data.max_per_class=24" in command
    assert "model.freeze_backbone=true" not in command


def test_learn_page_knobs(runs):
    at = open_app(runs[0], "learn")
    body = texts(at)
    for method in ("GAP", "Grouping", "GSP", "CSA", "DSL", "CIA"):
        assert method in body
    # GSP's knobs start at the trained run's μ and γ (TF's defaults when no shapes_gsp run is found)
    gsp = [Path(r).parent / "shapes_gsp" for r in runs if (Path(r).parent / "shapes_gsp" / "config.json").exists()]
    head_args = json.loads((gsp[0] / "config.json").read_text())["model"]["head_args"] if gsp else None
    gamma = head_args.get("eval_entropy_weight") or head_args["entropy_weight"] if gsp else None
    expected = (round(head_args["transport_ratio"], 2), gamma) if gsp else (0.3, 5.0)
    assert (at.slider(key="learn_mu").value, at.slider(key="learn_gamma").value) == expected
    if gsp and head_args.get("eval_entropy_weight"):   # the lesson says the run embeds with another γ than it trained
        assert f"embeds at γ {head_args['eval_entropy_weight']:g}" in body
    at.slider(key="learn_mu").set_value(1.0).run()
    at.slider(key="learn_groups").set_value(5).run()
    at.slider(key="learn_bases").set_value(8).run()
    assert not at.exception


def test_learn_knobs_show_their_effect_and_dsl_opens_on_the_kept_epoch(runs):
    """Issue 13, defect 7: a small μ's keep map uses the colour range (the fixed 1/μ top left it dark); the
    grouping demo's temperature changes what is drawn (per-panel min–max made every temperature look alike);
    the DSL replay opens on the epoch whose weights the run kept."""
    from dashboard import learn_demos

    pixels = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    pixels[:, 20:40, 20:40] = [[[0.9]], [[0.1]], [[0.1]]]               # a red square on noise
    feats = learn_demos.pixel_features(pixels)
    protos = learn_demos.kmeans(learn_demos.unit(feats.reshape(feats.shape[0], -1), 0).T, 4, seed=1)
    keep, _ = learn_demos.gsp_transport(feats, protos, 0.05, 5.0)
    assert keep.max() / learn_demos.keep_scale(keep) > 0.99             # brightest position at the top
    assert keep.max() * 0.05 < 0.5                                       # on the 1/μ scale it sat below half
    queries = learn_demos.kmeans(learn_demos.unit(feats.reshape(feats.shape[0], -1), 0).T, 3, seed=0)

    def brightest(t):  # the displayed top of each panel on the page's fixed scale
        shown = learn_demos.relative_to_uniform(learn_demos.grouping_attention(feats, queries, t))
        return np.minimum(shown.reshape(3, -1).max(1) / learn_demos.RELATIVE_SCALE, 1.0)
    assert brightest(0.5).max() < 0.5 * brightest(0.02).max()  # min–max scaling drew both at 1

    at = open_app(runs[0], "learn")
    body = texts(at) + " ".join(c.caption for img in at.get("image") for c in img.proto.imgs)
    assert "× uniform" in body and "brightest" in body
    dsl = ROOT / "checkpoints" / "shapes_dsl"
    if not (dsl / "dsl_events.json").exists():
        pytest.skip("no shipped DSL run to replay")
    best = json.loads((dsl / "metrics.json").read_text())["best_epoch"]
    logged = [e["epoch"] for e in json.loads((dsl / "dsl_events.json").read_text())["epochs"]]
    slider = next(s for s in at.slider if s.key.startswith("learn_dsl_epoch"))
    assert logged[slider.value] == best
    assert any(f"Epoch {best} (the kept weights)" in c.value for c in at.caption)


def test_lessons_without_a_run_say_which_config_trains_one(tmp_path, monkeypatch):
    """`LessonContext.first_run`: with no run listed, every lesson with a trained part (all but GAP's) says
    once which config trains one, and the stand-alone demos still draw."""
    from dashboard import access

    monkeypatch.setattr(access, "DEFAULT_RUNS", tmp_path)  # empty folders instead of checkpoints/: no runs at all
    monkeypatch.setenv("METRICLENS_RUNS", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("dashboard/pages/learn.py").run()
    assert not at.exception, [e.value for e in at.exception]
    hints = [i.value for i in at.info if "No finished run of this method" in i.value]
    assert sorted(h.split("(config ")[1].split(")")[0] for h in hints) == [
        f"shapes_{m}.yaml" for m in ("cia", "csa", "dsl", "grouping", "gsp")]
    assert len(at.get("image")) >= 8  # GAP's, grouping's, GSP's and CSA's stand-alone panels


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


@pytest.mark.parametrize("page", ["retrieval", "attention", "cross", "compare"])
def test_out_of_range_query_is_clamped_alike_on_every_page(runs, page):
    """Issue 13, defect 4: `query=999999` shows the last item on every page (not a modulo on some), the
    input box reads the item shown, and a warning says so."""
    n = len(artifacts(runs[0])[1])
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(page=page, run=runs[0], compare=runs[1], query="999999")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["query"] == n - 1
    assert any(f"Showing #{n - 1}" in w.value for w in at.warning)
    if page == "cross":
        assert at.session_state["cross_pair"]["a"] == n - 1
    else:
        box = at.number_input(key=f"{page}_query")
        assert box.value == n - 1
        captions = [c.caption for img in at.get("image") for c in img.proto.imgs]
        assert any(c.startswith((f"#{n - 1} ", f"query #{n - 1} ")) for c in captions), captions[:3]


def test_bad_compare_link_says_so_instead_of_another_run(runs):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(page="compare", run=runs[0], compare="no_such_run")
    at.run()
    assert not at.exception
    assert any("no_such_run" in w.value and "Pick run B" in w.value for w in at.warning)
    assert "The same query in both runs" not in texts(at)  # nothing compared with a run the user did not ask for
    at.selectbox(key="compare_widget").set_value(runs[1]).run()
    assert not at.exception and "The same query in both runs" in texts(at)


def test_opens_on_the_opening_run_and_lists_every_run_with_metrics(runs, tmp_path, monkeypatch):
    """With no link, the dashboard opens on OPENING_RUN if present (else the first finished run) and the
    sidebar lists every run with its test metrics."""
    from dashboard.catalog import OPENING_RUN

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
    assert item_maps(at), "the map needs only the artifacts"
    at.switch_page("dashboard/pages/retrieval.py").run()
    assert not at.exception
    assert any("images cannot be read" in e.value and "does not exist" in e.value for e in at.error)
    assert any(t.label == "Data folder for this run" for t in at.text_input)


@pytest.mark.slow
def test_train_page_runs_lists_and_cancels_a_job(runs, tmp_path):
    import time

    from dashboard import background

    at = open_app(runs[0], "train", extra_runs_root=str(tmp_path))
    stem = Path(at.selectbox(key="train_config").value).stem
    at.number_input(key=f"train_epochs_{stem}").set_value(30)
    at.text_input(key=f"train_name_{stem}").set_value("tiny_job")
    at.text_input(key=f"train_root_{stem}").set_value(str(tmp_path))
    at.text_input(key=f"train_extra_{stem}").set_value(
        "data.max_per_class=8 data.shapes.test_per_class=8 data.shapes.train_per_class=8 model.embed_dim=16")
    at.button[0].click().run()
    assert not at.exception and not at.error
    job = background.training_jobs().jobs[str(tmp_path / "tiny_job")]
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
    """Maps are rendered generically, whatever their names and channel counts (no page knows a method): on
    the shipped run of the config (checkpoints/<config stem>) when there is one, else on a tiny fresh one."""
    from dashboard_testing import is_finished, train_tiny

    if not (ROOT / "configs" / config).exists():
        pytest.skip(f"configs/{config} is not in this build")
    shipped = ROOT / "checkpoints" / Path(config).stem
    if is_finished(shipped) and not os.environ.get("METRICLENS_TEST_FRESH_RUNS"):
        run = str(shipped.resolve())
    else:
        run = str(train_tiny(tmp_path_factory.mktemp("method") / Path(config).stem, config=config, epochs=epochs))
    at = open_app(run, extra_runs_root=run)
    assert item_maps(at)
    for page in ("retrieval", "attention", "cross", "learn"):
        at.switch_page(f"dashboard/pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
    if config == "shapes_dsl.yaml":
        assert at.get("plotly_chart"), "the DSL growth replay is drawn from dsl_events.json"


def _finished_job(run, done, owner):
    """A copy of `run` at `done`, registered on the server's job board as a finished training job of `owner`."""
    import sys
    import time

    from dashboard import background, jobs

    shutil.copytree(run, done, ignore=shutil.ignore_patterns("resume.pt"))
    job = jobs.TrainJob(done.name, done, [sys.executable, "-c", "print('epoch 1/1 done')"], owner=owner).start()
    while job.status == "running":
        time.sleep(0.05)
    background.training_jobs().jobs[str(done)] = job


def test_finished_job_opens_its_run(runs, tmp_path):
    from dashboard import background

    done = tmp_path / "finished_run"
    _finished_job(runs[1], done, owner="me")
    try:
        at = open_app(runs[0], "train", extra_runs_root=str(tmp_path), _session_owner="me")
        assert any("Done" in s.value for s in at.success)
        at.button(key=f"explore_{done}").click().run()
        assert not at.exception
        assert at.title[0].value == "Explore the embedding"
        assert at.session_state["run"] == str(done.resolve())
    finally:
        background.training_jobs().jobs.pop(str(done), None)


def test_run_trained_outside_checkpoints_is_listed_in_a_new_session(runs, tmp_path):
    """Issue 13, defect 3: a run trained from the dashboard into a folder outside the run roots is listed after a
    reload or in a new tab (a new session, without the folder the Train page added), and opening it opens
    exactly that run; a run that vanished is said, not silently swapped."""
    from dashboard import background

    done = tmp_path / "elsewhere" / "trained_here"
    _finished_job(runs[1], done, owner="other tab")
    try:
        at = AppTest.from_file(APP, default_timeout=120).run()  # a fresh session: no extra folder
        assert not at.exception
        listed = at.sidebar.selectbox(key="w_run").options
        assert any(o.startswith("trained_here · ") for o in listed), listed
        at.session_state["run"] = str(done.resolve())  # what "Explore it →" sets
        at.switch_page("dashboard/pages/explore.py").run()
        assert at.session_state["run"] == str(done.resolve())
        assert at.title[0].value == "Explore the embedding" and not at.warning
    finally:
        background.training_jobs().jobs.pop(str(done), None)
    at = open_app(str(tmp_path / "gone_run"))
    assert any("gone_run" in w.value and "not in the run list" in w.value for w in at.sidebar.warning)
    assert at.session_state["run"] != str(tmp_path / "gone_run")


def test_run_picker_label_puts_recall_before_the_method(runs):
    """Issue 13, defect 6: the sidebar's select box cuts long labels; R@1 comes right after the name."""
    at = open_app(runs[0])
    for label in at.sidebar.selectbox(key="w_run").options:
        if "R@1" in label:
            assert label.split(" · ")[1].startswith("R@1 "), label


def test_explore_without_umap_shows_pca_at_once(runs, tmp_path):
    bare = tmp_path / "no_umap_run"
    shutil.copytree(runs[0], bare, ignore=shutil.ignore_patterns("resume.pt", "coords_umap.npy"))
    at = open_app(str(bare), extra_runs_root=str(bare))  # METRICLENS_AUTO_UMAP=0 in these tests
    spec = json.loads(item_maps(at)[0].proto.spec)
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


def test_attention_draws_explanation_extras_as_bars(runs):
    """Issue 12: `extras` of an explanation (GSP's attribute histogram, promised by the README) were dropped on
    the way to the page; every extra is now drawn as a bar chart, the query against its top-1 neighbour."""
    gsp = ROOT / "checkpoints" / "shapes_gsp"
    if not (gsp / "metrics.json").exists():
        pytest.skip("no shipped GSP run")
    at = open_app(str(gsp.resolve()), "attention", query=2, extra_runs_root=str(gsp.resolve()))
    chart = next((c for c in at.get("plotly_chart") if c.key == "attention_extra_learned_attributes"), None)
    assert chart is not None, [c.key for c in at.get("plotly_chart")]
    bars = json.loads(chart.proto.spec)["data"]
    assert len(bars) == 2 and len(bars[0]["y"]) == 64 and abs(sum(bars[0]["y"]) - 1) < 1e-3   # a histogram
    assert "attribute histogram" in texts(at)
