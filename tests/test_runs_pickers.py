"""Issue 13 under AppTest: label search in every query picker, and Compare's linked two-run map.

AppTest cannot drive plotly, so a map selection is injected through session_state as the browser
sends it (research/dashboard.md §3.5); the Back button is tested in a real browser (test_runs_browser.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.test_dashboard_pages import item_maps, open_app, plotly_list, runs  # noqa: F401  (runs: the shared module fixture)

ROOT = Path(__file__).resolve().parents[1]


def class_of(run: str) -> list[str]:
    return [it["class_name"] for it in json.loads((Path(run) / "artifacts" / "items.json").read_text())]


# ---- label search in the query pickers -----------------------------------------------------------------
def test_find_items_matches_every_word_of_class_file_and_fields():
    from core.item_store import ItemStore, items_table
    from dashboard.ui import find_items

    items = ItemStore(items_table([{"class_name": "red diamond", "path": "/data/a/img_0001.png"},
                                   {"class_name": "blue diamond", "path": None, "colour": "blue"},
                                   {"class_name": "red circle", "path": "/data/b/IMG_0002.png"}]))
    assert find_items(items, "diamond") == [0, 1]
    assert find_items(items, "Red  DIAMOND") == [0]          # every word, any case, any spacing
    assert find_items(items, "img_0002") == [2]              # the file name
    assert find_items(items, "blue") == [1] and find_items(items, "#2") == [2]
    assert find_items(items, "green") == [] and find_items(items, "  ") == []


@pytest.mark.parametrize("page", ["retrieval", "attention"])
def test_typing_a_label_picks_a_matching_query(runs, page):
    names = class_of(runs[0])
    target = names[-1]                                       # a class far from the opening query 0
    at = open_app(runs[0], page, query=0)
    at.text_input(key=f"{page}_find").input(target).run()
    assert not at.exception
    first = names.index(target)
    assert at.session_state["query"] == first and at.number_input(key=f"{page}_query").value == first
    found = at.selectbox(key=f"{page}_found")
    assert found.options and all(target in o for o in found.options)
    assert len(found.options) == names.count(target)
    found.select_index(2).run()                              # another match from the list
    third = [i for i, n in enumerate(names) if n == target][2]
    assert at.session_state["query"] == third and at.number_input(key=f"{page}_query").value == third
    captions = [c.caption for img in at.get("image") for c in img.proto.imgs]
    assert any(c.startswith((f"#{third} ", f"query #{third} ")) for c in captions), captions[:3]


def test_no_match_says_so_and_keeps_the_query(runs):
    at = open_app(runs[0], "retrieval", query=7)
    at.text_input(key="retrieval_find").input("no such label anywhere").run()
    assert at.session_state["query"] == 7
    assert any("No item matches" in c.value for c in at.caption)


def test_cross_image_label_search_sets_image_a(runs):
    names = class_of(runs[0])
    target = names[-1]
    at = open_app(runs[0], "cross", query=0)
    at.text_input(key="cross_find").input(target).run()
    assert not at.exception
    assert names[at.session_state["cross_pair"]["a"]] == target


# ---- Compare: a linked pair of maps ----------------------------------------------------------------
def inject(at: AppTest, key: str, ids) -> None:
    at.session_state[key] = {"selection": {"points": [{"customdata": [int(i)]} for i in ids],
                                           "point_indices": list(range(len(ids))), "box": [], "lasso": []}}


def map_spec(at: AppTest, key: str) -> dict:
    return json.loads(next(c for c in item_maps(at) if c.key == key).proto.spec)


def highlighted(at, key: str) -> list[int]:
    """The items a Compare map draws as the selection (outlined on top of the faded others)."""
    traces = [t for t in map_spec(at, key)["data"] if t.get("name") == "selection"]
    return sorted(traces[0]["customdata"]) if traces else []


def test_compare_selection_on_one_map_lights_up_on_the_other(runs):
    at = open_app(runs[0], "compare", compare_run=runs[1])
    assert {"compare_map_A", "compare_map_B"} <= {c.key for c in item_maps(at)}
    picked = [3, 50, 400]
    inject(at, "compare_map_A", picked)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    for key in ("compare_map_A", "compare_map_B"):           # highlighted on both maps, the others faded
        assert highlighted(at, key) == picked
    assert any("Selection: 3 items" in m.value for m in at.markdown)
    # the disagreement table looks inside the selection
    assert set(at.dataframe[1].value["query"].tolist()) <= set(picked)
    # switching the colouring keeps the selection (kept by item id, not by the chart's value)
    at.radio(key="compare_measure").set_value("R-precision").run()
    assert highlighted(at, "compare_map_B") == picked
    # a selection made on B's map moves A's highlight
    inject(at, "compare_map_B", [10, 11])
    at.run()
    assert highlighted(at, "compare_map_A") == [10, 11]


def test_compare_colours_each_item_by_its_rank_shift(runs):
    from dashboard.logic import retrieval_table

    at = open_app(runs[0], "compare", compare_run=runs[1])
    tables = []
    for run in runs[:2]:
        art = Path(run) / "artifacts"
        tables.append(retrieval_table(np.load(art / "embeddings.npy").astype(np.float32), np.load(art / "labels.npy")))
    trace = map_spec(at, "compare_map_A")["data"][0]
    ids = np.asarray(plotly_list(trace["customdata"]), dtype=np.int64)
    gained = tables[0].first_match_rank[ids] - tables[1].first_match_rank[ids]
    assert np.allclose(plotly_list(trace["marker"]["color"]), gained)     # blue: B finds the first true match sooner
    assert trace["marker"]["cmin"] == -trace["marker"]["cmax"] != 0


def test_compare_refuses_runs_of_other_items(runs, tmp_path):
    from core.importer import import_run

    art = Path(runs[0]) / "artifacts"
    emb, items = np.load(art / "embeddings.npy"), json.loads((art / "items.json").read_text())
    half = len(emb) // 2
    np.save(tmp_path / "e.npy", emb[:half])
    (tmp_path / "l.csv").write_text("label\n" + "\n".join(it["class_name"] for it in items[:half]) + "\n")
    other = tmp_path / "folder" / "half"
    import_run(tmp_path / "e.npy", tmp_path / "l.csv", other)
    at = open_app(runs[0], "compare", compare_run=str(other.resolve()), extra_runs_root=str(other.parent))
    errors = [e.value for e in at.error]
    assert any("not evaluated on the same test items" in e and f"{len(emb)} and {half}" in e for e in errors), errors
    assert not [c for c in item_maps(at) if c.key == "compare_map_A"]


# ---- Back and Forward (the real browser: test_runs_browser.py) --------------------------------------------
def test_a_url_the_browser_went_back_to_is_followed(runs):
    """On Back, Streamlit reruns with the older URL: the page shows that query instead of writing the newer one
    back; a query picked afterwards is written to the URL as before."""
    at = open_app(runs[0], "retrieval", query=2)
    assert at.query_params["query"] == "2"
    at.query_params["query"] = "7"
    at.run()
    assert at.session_state["query"] == 7 and at.number_input(key="retrieval_query").value == 7
    assert at.query_params["query"] == "7"
    at.number_input(key="retrieval_query").set_value(4).run()
    assert at.session_state["query"] == 4 and at.query_params["query"] == "4"
