"""Named selections of a run's items: `RUN_DIR/selections/<name>.json`, each a small JSON of item ids.

Saved from the dashboard's Explore page and opened there again. Where the run folder may not be written (a
read-only folder, or teaching mode, whose runs are the host's), the caller gives another folder (`fallback`)
and the selections are kept there instead; listing reads both. A name comes from a user: `selection_name`
keeps letters (any script), digits, spaces and `_.-` only, so a name is always one file inside the folder (no path).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from core import io
from core.run_dir import SELECTIONS

MAX_NAME = 60
SUFFIX = ".json"


class SelectionError(ValueError):
    """A name or a saved selection that cannot be used; the message says why and what to do."""


def selection_name(text: str) -> str:
    """A user's name for a selection as a safe file stem: other characters (slashes, dots leading, control
    characters) become '_', runs of them one; cut to MAX_NAME. SelectionError when nothing is left."""
    name = re.sub(r"[^\w .-]+", "_", str(text).strip())
    name = re.sub(r"\.{2,}", "_", name).strip(" ._")[:MAX_NAME].strip(" ._")
    if not name:
        raise SelectionError(f"{str(text)[:MAX_NAME]!r} is not a usable name: give letters or digits "
                             f"(spaces and _ . - are kept too)")
    return name


def _path(folder: Path, name: str) -> Path:
    path = folder / f"{selection_name(name)}{SUFFIX}"
    assert path.parent == folder      # selection_name leaves no separator: one file inside the folder
    return path


def save_selection(run_dir: str | Path, name: str, ids, n_items: int, fallback: str | Path | None = None,
                   run_writable: bool = True) -> Path:
    """Save the ids as `name` in the run folder, or in `fallback` when the run folder may not be written
    (`run_writable` False) or refuses the write (OSError). Returns the file written; saving the same name again
    replaces it."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if len(ids) and (ids[0] < 0 or ids[-1] >= n_items):
        raise SelectionError(f"the selection names items outside this run's 0–{n_items - 1}")
    record = {"name": selection_name(name), "items": int(n_items), "ids": ids.tolist(), "saved": time.time()}
    folders = ([Path(run_dir) / SELECTIONS] if run_writable else []) + ([Path(fallback)] if fallback else [])
    if not folders:
        raise SelectionError("the run folder may not be written here and no other folder was given")
    for folder in folders[:-1]:
        try:
            io.write_json(_path(folder, name), record)
            return _path(folder, name)
        except OSError:     # e.g. a read-only run folder: the next folder keeps it
            pass
    io.write_json(_path(folders[-1], name), record)
    return _path(folders[-1], name)


def list_selections(run_dir: str | Path, fallback: str | Path | None = None) -> dict[str, Path]:
    """Name -> file of every saved selection, the run folder's first; a name in both is the run folder's."""
    found: dict[str, Path] = {}
    for folder in (Path(run_dir) / SELECTIONS, *([Path(fallback)] if fallback else [])):
        for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def read_selection(path: str | Path, n_items: int) -> np.ndarray:
    """The saved ids (sorted), checked against the run: SelectionError for a damaged file or one saved for
    another number of items (older embeddings)."""
    try:
        record = io.read_json(path)
        ids = np.asarray(record["ids"], dtype=np.int64)
        saved_for = int(record["items"])
    except (OSError, KeyError, TypeError, ValueError, io.FileFormatError) as err:
        raise SelectionError(f"{Path(path).name} is not a saved selection ({err}); delete it and save again") from None
    if saved_for != n_items or ids.ndim != 1 or (len(ids) and (ids.min() < 0 or ids.max() >= n_items)):
        raise SelectionError(f"{Path(path).name} was saved for a run of {saved_for} items, this run has {n_items}: "
                             f"its embeddings changed since; select the items again and save")
    return np.unique(ids)
