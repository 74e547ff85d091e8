"""A run's items as columns: `items.parquet` beside `items.json`, read into vectorised columns.

Every run writer (training's core.artifacts, the importer) writes the store. Runs written before it have only
items.json: `read_items` reads that too (one JSON list of dicts, slow for large runs) and `ensure_store` writes
the store once. The functions below work on whole columns (pyarrow compute, numpy), never item by item:

- `categorical_fields`: what "Colour by" offers (class, split, metadata columns, attributes in class names);
- `search`: the items whose text holds every word of a query ('#12' is item 12);
- `selection_csv`: the chosen rows and any extra per-item columns as CSV;
- `ids_mask`: a selection of ids as a boolean mask (np.flatnonzero turns it back).
"""
from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from core import io
from core.run_dir import ITEM_STORE, ITEMS

BASE_COLUMNS = ("split", "index", "path", "class_name")     # every run's items have these


def items_table(items: list[dict], labels=None) -> pa.Table:
    """A list of item dicts as a table: the base columns first (class_name from `labels` where an item has
    none), then every other key in order of first appearance, as text (None stays empty): the metadata
    columns of an imported CSV, whatever types a JSON list held."""
    n = len(items)
    keys = list(dict.fromkeys(k for it in items for k in it))
    names = [it.get("class_name") for it in items]
    if labels is not None:
        names = [str(label) if name is None else name for name, label in zip(names, np.asarray(labels).tolist())]
    columns = {"split": pa.array([str(it.get("split", "test")) for it in items]).dictionary_encode(),
               "index": pa.array([int(it.get("index", i)) for i, it in enumerate(items)], pa.int64()),
               "path": pa.array([None if it.get("path") is None else str(it["path"]) for it in items], pa.string()),
               "class_name": pa.array([None if v is None else str(v) for v in names], pa.string()).dictionary_encode()}
    for key in keys:
        if key not in BASE_COLUMNS:
            columns[key] = pa.array([None if it.get(key) is None else str(it[key]) for it in items], pa.string())
    return pa.table(columns) if n else pa.table({k: pa.array([], pa.string()) for k in columns})


def write_store(art_dir: str | Path, table: pa.Table) -> None:
    """items.parquet, atomically (text columns dictionary-encoded on disk: a million items take megabytes)."""
    io.atomic_write(Path(art_dir) / ITEM_STORE, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


class ItemStore:
    """A run's items, column by column. `table` holds split, index, path, class_name and the metadata columns."""

    def __init__(self, table: pa.Table):
        self.table = table.combine_chunks()

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def metadata_columns(self) -> list[str]:
        return [name for name in self.table.column_names if name not in BASE_COLUMNS]

    def row(self, i: int) -> dict:
        """One item as a dict (what items.json held for it)."""
        return self.table.slice(int(i), 1).to_pylist()[0]

    def column(self, name: str) -> np.ndarray:
        """A column as numpy (text: an object array of str, missing values None)."""
        return self.table.column(name).to_numpy(zero_copy_only=False)

    def take(self, name: str, ids) -> np.ndarray:
        """A text column's values of the items `ids`, in that order (object array of str, '' for missing)."""
        rows = self.table.column(name).take(pa.array(np.asarray(ids, dtype=np.int64)))
        return pc.fill_null(rows.cast(pa.string()), "").to_numpy(zero_copy_only=False).astype(object)

    def categorical(self, name: str) -> pd.Categorical:
        """A text column as codes into its distinct values ('' for missing), without a Python loop."""
        column = pc.fill_null(self.table.column(name).cast(pa.string()), "").combine_chunks().dictionary_encode()
        return pd.Categorical.from_codes(column.indices.to_numpy(zero_copy_only=False),
                                         pd.Index(column.dictionary.to_numpy(zero_copy_only=False), dtype=object))

    @cached_property
    def class_names(self) -> pd.Categorical:
        return self.categorical("class_name")

    @cached_property
    def _search_columns(self) -> list[tuple[np.ndarray, pa.Array]]:
        """(codes, lower-cased distinct values) of every text column a search reads: class, split, metadata."""
        out = []
        for name in ("class_name", "split", *self.metadata_columns):
            cat = self.class_names if name == "class_name" else self.categorical(name)
            out.append((cat.codes, pc.utf8_lower(pa.array(cat.categories.to_numpy(), pa.string()))))
        return out

    @cached_property
    def _file_text(self) -> pa.Array:
        """Per item 'folder/file' of its path, lower-cased: never the rest of the path ('/work/shared/...'
        would match 'red')."""
        path = pc.fill_null(self.table.column("path").cast(pa.string()), "").combine_chunks()
        last_two = pc.struct_field(pc.extract_regex(path, r"(?P<file>[^/]*/[^/]*)$"), "file")
        return pc.utf8_lower(pc.coalesce(last_two, path))

    def search(self, text: str) -> np.ndarray:
        """Ids of the items whose class, split, metadata, file name or folder holds every word of `text` (any
        case; '#12' is item 12). Each word is matched against each column's distinct values, then spread to
        the items by their codes."""
        words = [w for w in re.split(r"[\s,]+", str(text).lower().strip()) if w]
        if not words:
            return np.zeros(0, int)
        keep = np.ones(len(self), bool)
        for word in words:
            if re.fullmatch(r"#\d+", word):
                keep &= ids_mask([int(word[1:])], len(self)) if int(word[1:]) < len(self) else False
                continue
            found = pc.match_substring(self._file_text, word).to_numpy(zero_copy_only=False)
            for codes, values in self._search_columns:
                found |= pc.match_substring(values, word).to_numpy(zero_copy_only=False)[codes]
            keep &= found
        return np.flatnonzero(keep)


def read_items(art_dir: str | Path) -> ItemStore:
    """The items of a run's artifacts folder: items.parquet, or an older run's items.json."""
    art = Path(art_dir)
    if (art / ITEM_STORE).exists():
        return ItemStore(pq.read_table(art / ITEM_STORE))
    return ItemStore(items_table(json.loads((art / ITEMS).read_text())))


def ensure_store(art_dir: str | Path) -> ItemStore:
    """The items, with items.parquet written first for a run that has only items.json."""
    art = Path(art_dir)
    store = read_items(art)
    if not (art / ITEM_STORE).exists():
        write_store(art, store.table)
    return store


# ---- fields to colour by ----------------------------------------------------------------------------
def name_attributes(class_names: pd.Categorical, vocabularies: dict[str, set[str]]) -> dict[str, pd.Categorical]:
    """Attributes spelled in the class names themselves, when every name carries one: for each field (e.g.
    colour) the first word of a name in its vocabulary ("green circle" -> green). The shapes set names its
    classes so; a folder of "red_car" / "blue_car" gets a colour too. Read on the distinct names only."""
    names = list(class_names.categories)
    out = {}
    for field, words in vocabularies.items():
        found = []
        for name in names if len(names) > 1 else []:
            found.append(next((t for t in name.lower().replace("_", " ").split() if t in words), None))
            if found[-1] is None:   # every name must carry one: stop at the first without (SOP: at once)
                break
        if found and found[-1] is not None and len(set(found)) > 1:
            out[field] = pd.Categorical(np.asarray(found, dtype=object)[class_names.codes])
    return out


def categorical_fields(store: ItemStore, vocabularies: dict[str, set[str]] | None = None) -> dict[str, pd.Categorical]:
    """Field name -> per-item values, for 'Colour by' and filters: class, split (when there are several), every
    metadata column and the attributes in the class names (`vocabularies`, e.g. {"colour": colour words}). A
    field with one value, or a distinct value for at least every other item (an id, a file name), colours
    nothing and is left out."""
    n = len(store)
    out = {"class": store.class_names}
    split = store.categorical("split")
    if len(split.categories) > 1:
        out["split"] = split
    for name in store.metadata_columns:
        values = store.categorical(name)
        if 1 < len(values.categories) < max(2, n // 2):
            out[name] = values
    for name, values in name_attributes(store.class_names, vocabularies or {}).items():
        out.setdefault(name, values)
    return out


# ---- selections -------------------------------------------------------------------------------------------
def ids_mask(ids, n: int) -> np.ndarray:
    """A selection of item ids as a boolean mask over n items."""
    mask = np.zeros(n, bool)
    mask[np.asarray(ids, dtype=np.int64)] = True
    return mask


def selection_csv(store: ItemStore, ids, labels, columns: dict[str, np.ndarray] | None = None) -> str:
    """CSV of the chosen items, in the order given: item, label, class, split, index, path, every metadata
    column, then `columns` (name -> one value per item of the run, e.g. coordinates, scores, neighbour ids)."""
    ids = np.asarray(ids, dtype=np.int64)
    rows = store.table.take(pa.array(ids))
    table = pa.table({"item": ids, "label": np.asarray(labels)[ids], "class": rows.column("class_name"),
                      **{name: rows.column(name) for name in ("split", "index", "path", *store.metadata_columns)},
                      **{name: np.asarray(values)[ids] for name, values in (columns or {}).items()}})
    table = table.cast(pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                                  for f in table.schema]))
    buffer = pa.BufferOutputStream()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(quoting_style="needed"))
    return buffer.getvalue().to_pybytes().decode()

