"""The columnar item store (core/item_store.py): items.parquet round trip, older runs (items.json only), and the
vectorised fields, search and export giving what the dashboard's per-item versions give (issue 27)."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core import item_store
from core.run_dir import ARTIFACTS, ITEM_STORE, ITEMS, LABELS
from dashboard import items as dashboard_items
from dashboard.figures import NAMED_COLOURS, NAMED_SYMBOLS
from dashboard_testing import demo_runs

WORDS = {"colour": set(NAMED_COLOURS), "shape": set(NAMED_SYMBOLS)}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    return Path(demo_runs(tmp_path_factory.mktemp("runs"), 1)[0])


def imported_like(n: int = 600) -> list[dict]:
    """Items as an import of a CSV with metadata writes them: paths in folders, a site, an id per item."""
    return [{"site": ["north", "south", "east"][i % 3], "uid": f"u{i:04d}", "split": "test", "index": i,
             "class_name": ["red car", "blue car", "red truck", "green truck"][i % 4],
             "path": f"/data/set/{'cars' if i % 2 else 'birds'}/img_{i}.jpg" if i % 7 else None} for i in range(n)]


def test_the_store_round_trips_and_an_older_run_reads_the_same(shipped, tmp_path):
    """A shipped run written before the store (items.json only) reads as the same columns as its items.parquet,
    which `ensure_store` writes once; every row comes back as the dict items.json held."""
    art = tmp_path / "run" / ARTIFACTS
    shutil.copytree(shipped / ARTIFACTS, art)
    (art / ITEM_STORE).unlink(missing_ok=True)
    items = json.loads((art / ITEMS).read_text())
    old = item_store.read_items(art)                                  # from items.json
    assert not (art / ITEM_STORE).exists()
    new = item_store.ensure_store(art)
    assert (art / ITEM_STORE).exists() and item_store.read_items(art).table.equals(new.table)
    assert new.table.equals(old.table) and len(new) == len(items)
    for i in (0, 17, len(items) - 1):
        assert new.row(i) == {**items[i], "path": items[i].get("path")}
    assert list(new.class_names[:5]) == [it["class_name"] for it in items[:5]]


def test_imported_metadata_round_trips_through_parquet(tmp_path):
    items = imported_like()
    item_store.write_store(tmp_path, item_store.items_table(items))
    store = item_store.read_items(tmp_path)
    assert store.metadata_columns == ["site", "uid"]
    assert [store.row(i) for i in (0, 7, 599)] == [items[0], items[7], items[599]]
    assert store.column("path")[7] is None and store.column("index").dtype == np.int64


def test_fields_match_the_per_item_version(shipped):
    for items in (json.loads((shipped / ARTIFACTS / ITEMS).read_text()), imported_like()):
        store = item_store.ItemStore(item_store.items_table(items))
        expected = dashboard_items.categorical_fields(items, [it["class_name"] for it in items])
        fields = item_store.categorical_fields(store, WORDS)
        assert list(fields) == list(expected)
        for name, values in expected.items():
            assert np.asarray(fields[name]).tolist() == values.tolist(), name


@pytest.mark.parametrize("text, expected", [("red TRUCK", list(range(2, 600, 4))), ("img_8.jpg", [8]), ("img_7.jpg", []),
                                            ("cars blue", [i for i in range(1, 600, 4) if i % 7]), ("data", []), ("#3", [3]),
                                            ("#3 blue", []), ("#9999", []), ("  ", []), ("north red", None)])
def test_search_reads_every_word_in_class_metadata_and_file(text, expected):
    items = imported_like()
    store = item_store.ItemStore(item_store.items_table(items))
    found = store.search(text).tolist()
    fields = dashboard_items.categorical_fields(items, [it["class_name"] for it in items])
    assert found == dashboard_items.search(dashboard_items.search_text(items, fields), text).tolist()
    if expected is not None:
        assert found == expected
    else:
        assert found and all(i % 3 == 0 and "red" in items[i]["class_name"] for i in found)


def test_search_on_a_shipped_run_finds_what_the_dashboard_finds(shipped):
    items = json.loads((shipped / ARTIFACTS / ITEMS).read_text())
    store = item_store.read_items(shipped / ARTIFACTS)
    fields = dashboard_items.categorical_fields(items, [it["class_name"] for it in items])
    haystack = dashboard_items.search_text(items, fields)
    for text in (items[5]["class_name"], items[5]["class_name"].split()[0], "#12", "circle"):
        found = store.search(text)
        assert len(found) and found.tolist() == dashboard_items.search(haystack, text).tolist(), text


def test_selection_csv_has_the_columns_and_values_of_the_items(shipped):
    items = imported_like()
    store = item_store.ItemStore(item_store.items_table(items))
    labels = np.arange(600) % 4
    x = np.linspace(0, 1, 600)
    rows = list(csv.DictReader(io.StringIO(item_store.selection_csv(store, [14, 3], labels, {"x": x}))))
    assert [r["item"] for r in rows] == ["14", "3"]
    assert rows[1] == {"item": "3", "label": "3", "class": "green truck", "split": "test", "index": "3",
                       "path": "/data/set/cars/img_3.jpg", "site": "north", "uid": "u0003", "x": str(x[3])}
    assert rows[0]["path"] == ""                                     # no image: an empty cell
    mask = item_store.ids_mask([3, 14, 3], 600)
    assert mask.sum() == 2 and np.flatnonzero(mask).tolist() == [3, 14]
    shipped_items = json.loads((shipped / ARTIFACTS / ITEMS).read_text())
    shipped_labels = np.load(shipped / ARTIFACTS / LABELS)
    old = [{"item": str(i), "label": str(shipped_labels[i]), "class": shipped_items[i]["class_name"],   # items.json
            "split": shipped_items[i]["split"], "index": str(shipped_items[i]["index"]),
            "path": shipped_items[i].get("path") or ""} for i in (4, 7)]
    new = list(csv.DictReader(io.StringIO(item_store.selection_csv(item_store.read_items(shipped / ARTIFACTS),
                                                                   [4, 7], shipped_labels))))
    assert [{k: r[k] for k in ("item", "label", "class", "split", "index", "path")} for r in new] == \
           [{k: r[k] for k in ("item", "label", "class", "split", "index", "path")} for r in old]
