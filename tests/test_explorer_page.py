"""Issue 13, Explore features under AppTest (the logic; tests/test_explorer_browser.py drives the real page):
click -> neighbours listed and ringed, search by label or attribute, colour and size by any field,
isolate and re-project, export, the selection and colouring in the link (hostile values refused),
next/previous query. Plotly cannot be driven here, so clicks and lassos are injected as the browser sends them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.test_dashboard_pages import APP, inject, item_maps, open_app, plotly_list, runs, selected_on_map, texts  # noqa: F401 (fixture)


def art(run: str):
    folder = Path(run) / "artifacts"
    return (np.load(folder / "embeddings.npy"), np.load(folder / "labels.npy"),
            json.loads((folder / "items.json").read_text()))


def spec(at: AppTest) -> dict:
    """The map's figure, its typed arrays decoded to lists."""
    fig = json.loads(item_maps(at)[0].proto.spec)
    for trace in fig["data"]:
        for key in ("x", "y", "customdata"):
            trace[key] = plotly_list(trace[key])
        for key in ("color", "size", "opacity"):
            if isinstance(trace["marker"].get(key), (dict, list)):
                trace["marker"][key] = plotly_list(trace["marker"][key])
    return fig


def focus(at: AppTest) -> dict:
    """The clicked item and its neighbours as the page hands them to the map's browser side."""
    import html
    import re
    (body,) = [h.proto.body for h in at.get("html") if h.proto.body.startswith("<div class=\"metriclens-focus\"")]
    return json.loads(html.unescape(re.search(r'data-focus="([^"]*)"', body).group(1)))


def spec_point(at: AppTest, item: int) -> tuple[float, float]:
    for trace in spec(at)["data"]:
        if item in trace["customdata"]:
            k = trace["customdata"].index(item)
            return trace["x"][k], trace["y"][k]
    raise AssertionError(f"#{item} is not on the map")


def kept_ids(at: AppTest) -> list[int]:
    return sorted(at.session_state["explore_selection"]["ids"])


def test_click_lists_neighbours_and_rings_them_on_the_map(runs):
    emb, labels, _ = art(runs[0])
    at = open_app(runs[0])
    inject(at, [5])
    sims = emb @ emb[5]
    sims[5] = -np.inf
    expected = np.argsort(-sims, kind="stable")[:8]
    assert "Nearest neighbours of #5" in texts(at)
    marks = focus(at)   # drawn above the map by its browser side (map_bridge.js): the star, then the rings
    assert marks["item"] == 5 and marks["ids"] == [5, *expected.tolist()]   # the exact top 8 by cosine, best first
    assert marks["name"] == "8 nearest of #5" and marks["text"][1].startswith(f"#{expected[0]} ")
    assert marks["x"][0] == pytest.approx(spec_point(at, 5)[0], abs=1e-4)    # where the map draws the item
    captions = [c.caption for img in at.get("image") for c in img.proto.imgs]
    assert f"{sims[expected[0]]:.3f}" in captions[1]         # similarities listed with the neighbour images
    assert at.session_state["query"] == 5                      # the clicked item is the query


def test_search_selects_by_class_attribute_and_number(runs):
    _, _, items = art(runs[0])
    names = np.asarray([it["class_name"] for it in items])
    at = open_app(runs[0])
    at.text_input(key="explore_find").set_value("red diamond").run()
    assert kept_ids(at) == np.flatnonzero(names == "red diamond").tolist() and len(kept_ids(at))
    assert selected_on_map(at) == set(kept_ids(at))
    at.text_input(key="explore_find").set_value("Diamond").run()   # an attribute, any case
    assert kept_ids(at) == np.flatnonzero(np.char.endswith(names, "diamond")).tolist()
    at.text_input(key="explore_find").set_value("#12").run()
    assert kept_ids(at) == [12]
    at.text_input(key="explore_find").set_value("purple hexagon").run()
    assert kept_ids(at) == [12] and "No item matches 'purple hexagon'" in texts(at)
    at.button(key="explore_clear").click().run()    # clears the search box too, so the same search works again
    assert kept_ids(at) == [] and at.text_input(key="explore_find").value == ""
    at.text_input(key="explore_find").set_value("#12").run()
    assert kept_ids(at) == [12]


def test_colour_and_size_by_any_field_keep_the_selection(runs):
    from dashboard import logic

    emb, labels, items = art(runs[0])
    at = open_app(runs[0])
    options = at.selectbox(key="explore_colour").options
    for wanted in ("class", "colour", "shape", "top-1 neighbour correct", "R-precision", "MAP@R", "similarity to the query"):
        assert wanted in options
    inject(at, [2, 9, 30])
    at.selectbox(key="explore_colour").set_value("shape").run()
    shapes = {it["class_name"].split()[-1] for it in items}
    assert {t["name"] for t in spec(at)["data"]} == shapes
    at.selectbox(key="explore_colour").set_value("MAP@R").run()
    assert not at.exception
    (trace,) = [t for t in spec(at)["data"] if t["name"] == "MAP@R"]  # one trace on a continuous scale
    table = logic.retrieval_table(emb, labels)
    by_id = dict(zip(trace["customdata"], trace["marker"]["color"]))
    assert all(abs(by_id[i] - table.map_at_r[i]) < 1e-3 for i in (0, 100, 500))
    assert trace["marker"]["colorbar"]["title"]["text"] == "MAP@R"
    assert selected_on_map(at) == {2, 9, 30} and kept_ids(at) == [2, 9, 30]
    at.selectbox(key="explore_size").set_value("R-precision").run()
    sizes = {i: s for t in spec(at)["data"] for i, s in zip(t["customdata"], t["marker"]["size"])}
    best, worst = np.nanargmax(table.r_precision), np.nanargmin(table.r_precision)
    assert sizes[best] == 14 and sizes[worst] == 4
    at.selectbox(key="explore_opacity").set_value("R-precision").run()
    opacity = {i: a for t in spec(at)["data"] for i, a in zip(t["customdata"], t["marker"]["opacity"])}
    assert opacity[best] == pytest.approx(1.0) and opacity[worst] == pytest.approx(0.15)
    assert selected_on_map(at) == {2, 9, 30}
    at.selectbox(key="explore_colour").set_value("similarity to the query").run()
    (trace,) = [t for t in spec(at)["data"] if t["name"] == "similarity to the query"]
    q = at.session_state["query"]
    assert dict(zip(trace["customdata"], trace["marker"]["color"]))[q] == pytest.approx(1.0, abs=1e-3)


def test_isolate_reprojects_the_selection_and_exports_it(runs):
    from core.projection import pca_2d

    emb, _, _ = art(runs[0])
    picked = list(range(40, 60))
    at = open_app(runs[0])
    # PCA: re-projected at once (a UMAP of these ids may be cached in .cache/ by an earlier run of the suite)
    at.radio(key="explore_projection").set_value("PCA").run()
    inject(at, picked)
    assert at.get("download_button")[0].proto.label == "Export 20 as CSV"
    at.button(key="explore_isolate").click().run()
    data = spec(at)["data"]
    assert sorted(i for t in data for i in t["customdata"]) == picked
    assert spec(at)["layout"]["title"]["text"].startswith("PCA of 20 isolated")
    xy = {i: (x, y) for t in data for i, x, y in zip(t["customdata"], t["x"], t["y"])}
    assert np.allclose([xy[i] for i in picked], pca_2d(emb[picked]), atol=1e-4)   # projected anew
    inject(at, [41, 42, 43])   # a sub-selection inside the isolated view
    assert kept_ids(at) == [41, 42, 43] and "Show every item" in at.button(key="explore_unisolate").label
    at.button(key="explore_unisolate").click().run()
    assert len({i for t in spec(at)["data"] for i in t["customdata"]}) == len(emb)


def test_link_keeps_selection_and_colouring_and_refuses_hostile_values(runs):
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["run"] = runs[0]
    at.query_params.update({"sel": "2,9,30-32", "colour": "top-1 neighbour correct", "size": "MAP@R",
                            "opacity": "R-precision"})
    at.run()
    assert not at.exception
    assert kept_ids(at) == [2, 9, 30, 31, 32]
    assert at.selectbox(key="explore_colour").value == "top-1 neighbour correct"
    assert at.selectbox(key="explore_size").value == "MAP@R"
    assert at.selectbox(key="explore_opacity").value == "R-precision" and at.query_params["opacity"] == "R-precision"
    assert at.query_params["sel"] == "2,9,30-32" and at.query_params["colour"] == "top-1 neighbour correct"
    inject(at, [7])
    assert at.query_params["sel"] == "7"

    hostile = AppTest.from_file(APP, default_timeout=120)
    hostile.session_state["run"] = runs[0]
    hostile.query_params.update({"sel": "../../../etc/passwd", "colour": "![x](http://evil.example/a.png)",
                                 "size": "__class__"})
    hostile.run()
    assert not hostile.exception
    warnings = " ".join(w.value for w in hostile.warning)
    assert "not a list of item numbers" in warnings and "is not offered for this run" in warnings
    assert "http://" not in warnings and "(" not in warnings.split("choose from")[0].split("colour=")[1][:40]
    assert hostile.selectbox(key="explore_colour").value == "class"
    assert "Selection:" not in texts(hostile)
    n = len(art(runs[0])[1])
    out = AppTest.from_file(APP, default_timeout=120)
    out.session_state["run"] = runs[0]
    out.query_params.update({"sel": f"0-{n}"})
    out.run()
    assert not out.exception and f"outside this run's 0–{n - 1}" in " ".join(w.value for w in out.warning)


def test_next_and_previous_query_select_it(runs):
    at = open_app(runs[0], query=10)
    at.button(key="explore_next").click().run()
    assert at.session_state["query"] == 11 and kept_ids(at) == [11]
    assert "Nearest neighbours of #11" in texts(at)
    at.button(key="explore_prev").click().run()
    at.button(key="explore_prev").click().run()
    assert at.session_state["query"] == 9 and kept_ids(at) == [9]
