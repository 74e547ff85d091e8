"""A run's artifacts (test embeddings, labels, items, 2-D coordinates) and what the pages derive from them:
the retrieval table, the item fields, the search text, the neighbour index.

Each is made once per artifacts version (`caching.artifact_stamp`) and shared read-only by every session
through st.cache_resource, not st.cache_data: cache_data unpickles a copy on every hit, which for a large
run's artifacts and retrieval table cost seconds per rerun (every image lookup reads the items).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from core import checkpoint as ckpt
from core.checkpoint import CheckpointError
from core.item_store import ItemStore, read_items
from core.run_dir import EMBEDDINGS, ITEM_STORE, ITEMS, LABELS, coords_file
from dashboard import background, logic
from dashboard.caching import artifact_stamp, keep_for_good, mtime, read_only
from dashboard.catalog import imported, user_code
from dashboard.model_cache import load_model

# A run written before runs saved their neighbours: past this many items its neighbours are searched by a
# low-priority background process and kept on disk (background.table_in_background), not in the server while
# the browser draws the map.
TABLE_IN_PROCESS_MAX = 20_000


class ItemRows(Sequence):
    """The items as items.json lists them (one dict per item: split, index, path, class_name and any metadata),
    each read from the item store when asked for: a million items are never a million Python dicts in the server.
    Whole columns are `Artifacts.store`'s."""

    def __init__(self, store: ItemStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.store.row(j) for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        return self.store.row(i % len(self))


@dataclass
class Artifacts:
    embeddings: np.ndarray     # N×D, L2-normalised, float32 (memory-mapped, read-only)
    labels: np.ndarray         # N
    items: ItemRows            # per item: split, index, path, class_name (+ an imported run's metadata columns)
    groups: list[slice]        # embedding dims of each group/subspace

    @property
    def store(self) -> ItemStore:
        """The items as columns (core.item_store): what any pass over every item reads."""
        return self.items.store

    @functools.cached_property  # once per cached Artifacts: built from the class column's codes, not item by item
    def class_names(self) -> np.ndarray:
        """Per item its class name (object array of str; the label's number where an item names none)."""
        names = self.store.class_names
        out = np.asarray(names.categories, dtype=object)[names.codes]
        missing = out == ""
        if missing.any():
            out[missing] = np.asarray(self.labels)[missing].astype(str)
        return out

    @functools.cached_property
    def names_files(self) -> bool:
        """Some item names an image file (an imported run's path column)."""
        import pyarrow.compute as pc
        return bool(pc.any(pc.greater(pc.utf8_length(self.store.table.column("path")), 0)).as_py() or False)


@st.cache_resource(show_spinner=False, max_entries=16)
def _artifacts(run_dir: str, stamp: float, groups: tuple[tuple[int, int], ...]) -> Artifacts:
    art = Path(run_dir) / ckpt.ARTIFACTS
    missing = [n for n in (EMBEDDINGS, LABELS) if not (art / n).exists()]
    missing += [] if (art / ITEM_STORE).exists() or (art / ITEMS).exists() else [ITEMS]
    if missing:
        raise CheckpointError(
            f"{art} lacks {', '.join(missing)}: the run has not finished (training writes them at the end). "
            f"Run its training command again to finish it (it resumes), e.g. "
            f"`python -m core train --config {Path(run_dir) / ckpt.CONFIG} --out {run_dir}`.")
    try:
        # memory-mapped: the map and a click need none of it (a click reads the saved neighbours), so a 1M-item
        # run's half gigabyte is read only where a page computes with it, and then stays in the OS's cache
        emb = np.load(art / EMBEDDINGS, mmap_mode="r")
        emb = emb if emb.dtype == np.float32 else emb.astype(np.float32)
        labels = np.load(art / LABELS)
        items = ItemRows(read_items(art))   # items.parquet (an older run's items.json, read once)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{art} holds a damaged file ({err}); retrain the run to rewrite its artifacts") from None
    if not (len(emb) == len(labels) == len(items)):
        raise CheckpointError(f"{art} is inconsistent: {len(emb)} embeddings, {len(labels)} labels, {len(items)} "
                              f"items. Retrain or re-evaluate the run to rewrite its artifacts.")
    slices = [slice(a, b) for a, b in groups] or [slice(0, emb.shape[1])]
    if slices[-1].stop != emb.shape[1]:
        raise CheckpointError(f"{art}/embeddings.npy has {emb.shape[1]} dims but the model embeds into "
                              f"{slices[-1].stop}: the artifacts belong to another model. Retrain the run "
                              f"(or re-run its training command, which rewrites them).")
    read_only(emb, labels)
    keep_for_good()     # what the server keeps until it stops: out of the cyclic collector's walks
    return Artifacts(emb, labels, items, slices)


def artifacts(run_dir: str) -> Artifacts:
    # a researcher's own model embeds into one group: its artifacts open without rebuilding it (whose code may be
    # missing here: the model-free pages then still work, ui.load_or_stop)
    groups = () if imported(run_dir) or user_code(run_dir) else tuple(
        (g.start or 0, g.stop) for g in load_model(run_dir)[0].head.groups)
    return _artifacts(run_dir, artifact_stamp(run_dir), groups)


@st.cache_resource(show_spinner=False, max_entries=16)
def _retrieval(run_dir: str, stamp: float) -> logic.RetrievalTable:
    from core.neighbours import saved_neighbours

    art = artifacts(run_dir)
    saved = saved_neighbours(run_dir)   # written with the run (training, import): read, never searched again
    if saved is not None and len(saved.ids) == len(art.labels):
        table = logic.table_from(saved, art.labels)
    elif len(art.labels) > TABLE_IN_PROCESS_MAX:
        table = background.table_in_background(run_dir)
    else:
        table = logic.retrieval_table(art.embeddings, art.labels)
    read_only(*(value for value in vars(table).values() if isinstance(value, np.ndarray)))
    return table


def retrieval(run_dir: str) -> logic.RetrievalTable:
    """Every item retrieved against all others (logic.RetrievalTable)."""
    return _retrieval(run_dir, artifact_stamp(run_dir))


@st.cache_data(show_spinner=False, max_entries=32)
def _coords(run_dir: str, method: str, stamp: float) -> np.ndarray:
    from core.projection import ensure_coords
    return ensure_coords(run_dir, method)


def coords(run_dir: str, method: str) -> np.ndarray | None:
    """Coordinates if they are on disk (PCA is always computed at once); None while UMAP is missing
    (background.start_umap computes it)."""
    path = Path(run_dir) / ckpt.ARTIFACTS / coords_file(method)
    if method != "pca" and not path.exists():
        return None
    out = _coords(run_dir, method, mtime(path) or artifact_stamp(run_dir))
    n = len(artifacts(run_dir).labels)
    if len(out) != n:
        raise CheckpointError(f"{path} has {len(out)} points for {n} embeddings: it is left from older "
                              f"embeddings. Delete it; the dashboard computes it again.")
    return out


@st.cache_resource(show_spinner=False, max_entries=16)
def _item_fields(run_dir: str, stamp: float) -> dict[str, np.ndarray]:
    art = artifacts(run_dir)
    fields = {name: art.class_names if name == "class" else np.asarray(values.categories, dtype=object)[values.codes]
              for name, values in filter_fields(run_dir).items()}
    read_only(*fields.values())
    return fields


def item_fields(run_dir: str) -> dict[str, np.ndarray]:
    """Field name -> value per item (class, split, metadata columns, attributes in the class names; object arrays of
    str) for 'Colour by', once per artifacts version: filter_fields' categories spread over the items."""
    return _item_fields(run_dir, artifact_stamp(run_dir))


@st.cache_resource(show_spinner=False, max_entries=16)
def _listed_fields(run_dir: str, stamp: float) -> dict[str, np.ndarray]:
    from dashboard.item_rows import listed_fields as listed
    return listed(artifacts(run_dir).store, item_fields(run_dir))


def listed_fields(run_dir: str) -> dict[str, np.ndarray]:
    """Field name -> value per item, as the neighbour, selection and failure tables list them after the label
    (dashboard/item_rows.py), once per artifacts version."""
    return _listed_fields(run_dir, artifact_stamp(run_dir))


def has_images(run_dir: str) -> bool:
    """Whether the run has images to show: a trained or own-model run reads its data set; a run imported from
    embeddings has the files its items name, when the import named any."""
    return not imported(run_dir) or artifacts(run_dir).names_files


def search(run_dir: str, text: str) -> np.ndarray:
    """Ids of the items whose class, split, metadata, file name or folder holds every word of `text` ('#12': item
    12; core.item_store.ItemStore.search, on the columns' distinct values)."""
    return artifacts(run_dir).store.search(text)


@st.cache_resource(show_spinner=False, max_entries=8)
def _neighbour_index(run_dir: str, stamp: float):
    from dashboard import items
    return items.neighbour_index(artifacts(run_dir).embeddings)


def item_neighbours(run_dir: str, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """An item's k nearest other items (ids, cosine similarities), best first: a row of the run's saved neighbours
    (read, never searched: the Retrieval page lists the same), or, for a big run saved before runs kept them, an
    exact search over the embeddings (its all-pairs table would be minutes away)."""
    from core.neighbours import saved_neighbours
    from dashboard import items

    if saved_neighbours(run_dir) is not None or len(artifacts(run_dir).labels) <= TABLE_IN_PROCESS_MAX:
        table = retrieval(run_dir)
        ids, sims = np.asarray(table.neighbours[item, :k]), np.asarray(table.similarities[item, :k])
        return ids[ids >= 0], sims[ids >= 0]
    return items.neighbours(neighbour_index(run_dir), artifacts(run_dir).embeddings, item, k)


def neighbour_index(run_dir: str):
    """The run's exact neighbour search (dashboard.items.neighbour_index), once per artifacts version, shared by
    every session (read-only)."""
    return _neighbour_index(run_dir, artifact_stamp(run_dir))


def item_store(run_dir: str) -> ItemStore:
    """The run's items as columns (core.item_store.ItemStore), once per artifacts version."""
    return artifacts(run_dir).store


@st.cache_resource(show_spinner=False, max_entries=8)
def _filter_fields(run_dir: str, stamp: float):
    from core.item_store import categorical_fields
    from dashboard.figures import NAMED_COLOURS, NAMED_SYMBOLS
    return categorical_fields(item_store(run_dir), {"colour": set(NAMED_COLOURS), "shape": set(NAMED_SYMBOLS)})


def filter_fields(run_dir: str):
    """Field name -> per-item pd.Categorical (class, split, metadata columns, attributes in the class names): what
    Explore's item table filters by, as codes (core.item_store.categorical_fields)."""
    return _filter_fields(run_dir, artifact_stamp(run_dir))
