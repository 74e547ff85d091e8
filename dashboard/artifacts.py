"""A run's artifacts (test embeddings, labels, items, 2-D coordinates) and what the pages derive from them:
the retrieval table, the item fields, the search text, the neighbour index.

Each is made once per artifacts version (`caching.artifact_stamp`) and shared read-only by every session
through st.cache_resource, not st.cache_data: cache_data unpickles a copy on every hit, which for a large
run's artifacts and retrieval table cost seconds per rerun (every image lookup reads the items).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from core import checkpoint as ckpt
from core.checkpoint import CheckpointError
from core.run_dir import EMBEDDINGS, ITEMS, LABELS, coords_file
from dashboard import background, logic
from dashboard.caching import artifact_stamp, keep_for_good, mtime, read_only
from dashboard.catalog import imported, user_code
from dashboard.model_cache import load_model

# A run written before runs saved their neighbours: past this many items its neighbours are searched by a
# low-priority background process and kept on disk (background.table_in_background), not in the server while
# the browser draws the map.
TABLE_IN_PROCESS_MAX = 20_000


@dataclass
class Artifacts:
    embeddings: np.ndarray     # N×D, L2-normalised
    labels: np.ndarray         # N
    items: list[dict]          # per item: split, index, path, class_name
    groups: list[slice]        # embedding dims of each group/subspace

    @functools.cached_property  # once per cached Artifacts: a list built per call was slow on a large run
    def class_names(self) -> list[str]:
        return [it.get("class_name", str(l)) for it, l in zip(self.items, self.labels)]

    @functools.cached_property
    def names_files(self) -> bool:
        """Some item names an image file (an imported run's path column)."""
        return any(it.get("path") for it in self.items)


@st.cache_resource(show_spinner=False, max_entries=16)
def _artifacts(run_dir: str, stamp: float, groups: tuple[tuple[int, int], ...]) -> Artifacts:
    art = Path(run_dir) / ckpt.ARTIFACTS
    missing = [n for n in (EMBEDDINGS, LABELS, ITEMS) if not (art / n).exists()]
    if missing:
        raise CheckpointError(
            f"{art} lacks {', '.join(missing)}: the run has not finished (training writes them at the end). "
            f"Run its training command again to finish it (it resumes), e.g. "
            f"`python -m core train --config {Path(run_dir) / ckpt.CONFIG} --out {run_dir}`.")
    try:
        emb = np.load(art / EMBEDDINGS).astype(np.float32)
        labels = np.load(art / LABELS)
        items = json.loads((art / ITEMS).read_text())
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
    keep_for_good()     # a big run's items are a million objects
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
    from dashboard import items
    art = artifacts(run_dir)
    fields = items.categorical_fields(art.items, art.class_names)
    read_only(*fields.values())
    return fields


def item_fields(run_dir: str) -> dict[str, np.ndarray]:
    """Field name -> value per item (class, split, attributes...), once per artifacts version."""
    return _item_fields(run_dir, artifact_stamp(run_dir))


@st.cache_resource(show_spinner=False, max_entries=16)
def _listed_fields(run_dir: str, stamp: float) -> dict[str, np.ndarray]:
    from dashboard.item_rows import listed_fields as listed
    return listed(artifacts(run_dir).items, item_fields(run_dir))


def listed_fields(run_dir: str) -> dict[str, np.ndarray]:
    """Field name -> value per item, as the neighbour, selection and failure tables list them after the label
    (dashboard/item_rows.py), once per artifacts version."""
    return _listed_fields(run_dir, artifact_stamp(run_dir))


def has_images(run_dir: str) -> bool:
    """Whether the run has images to show: a trained or own-model run reads its data set; a run imported from
    embeddings has the files its items name, when the import named any."""
    return not imported(run_dir) or artifacts(run_dir).names_files


@st.cache_resource(show_spinner="Indexing the item names for search (once per run)…", max_entries=8)
def _search_text(run_dir: str, stamp: float) -> np.ndarray:
    from dashboard import items
    haystack = items.search_text(artifacts(run_dir).items, item_fields(run_dir))
    read_only(haystack)
    return haystack


def search_text(run_dir: str) -> np.ndarray:
    """The text a search reads per item; built on the first search, not before the map is drawn."""
    return _search_text(run_dir, artifact_stamp(run_dir))


@st.cache_resource(show_spinner=False, max_entries=8)
def _neighbour_index(run_dir: str, stamp: float):
    from dashboard import items
    return items.neighbour_index(artifacts(run_dir).embeddings)


def neighbour_index(run_dir: str):
    """The run's faiss index, built once per artifacts version and shared by every session (read-only)."""
    return _neighbour_index(run_dir, artifact_stamp(run_dir))


@st.cache_resource(show_spinner=False, max_entries=8)
def _item_store(run_dir: str, stamp: float):
    from core.item_store import read_items
    return read_items(Path(run_dir) / ckpt.ARTIFACTS)


def item_store(run_dir: str):
    """The run's items as columns (core.item_store.ItemStore), once per artifacts version."""
    return _item_store(run_dir, artifact_stamp(run_dir))


@st.cache_resource(show_spinner=False, max_entries=8)
def _filter_fields(run_dir: str, stamp: float):
    from core.item_store import categorical_fields
    from dashboard.figures import NAMED_COLOURS, NAMED_SYMBOLS
    return categorical_fields(item_store(run_dir), {"colour": set(NAMED_COLOURS), "shape": set(NAMED_SYMBOLS)})


def filter_fields(run_dir: str):
    """Field name -> per-item pd.Categorical (class, split, metadata columns, attributes in the class names): what
    Explore's item table filters by, as codes (core.item_store.categorical_fields)."""
    return _filter_fields(run_dir, artifact_stamp(run_dir))
