"""How the dashboard caches: what every cache key is made of, and how shared objects are kept.

What is cached where (each in the module that derives it):
- models: one copy per run for every session, in a least-recently-used cache bounded by
  METRICLENS_MODEL_BUDGET_MB (`dashboard.model_cache`); models are read-only and keep no per-request state;
- `st.cache_resource`: data sets, a run's artifacts and what is derived from them (`dashboard.artifacts`),
  the background jobs (`dashboard.background`): shared objects, never mutated (arrays are made read-only);
- `st.cache_data`: per-request arrays (model inputs, explanations, maps: `dashboard.dataset`,
  `dashboard.explanations`).
Every cache key carries the run directory plus the mtime of the file it derives from (`artifact_stamp`,
`weights_stamp`), so a retrained run invalidates its entries. What outlives the server (retrieval tables,
UMAP of a selection, map masses, job logs) is kept in the git-ignored .cache/ (`cache_path`). Errors are raised as `CheckpointError` /
`DatasetError` with a message saying what to do; `dashboard/ui.py` turns them into `st.error`.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import streamlit as st

from core import checkpoint as ckpt
from core.run_dir import EMBEDDINGS
from dashboard.access import REPO


def digest(text: str) -> str:
    """A stable short name for a path (file names, widget keys): `hash()` of a str is salted per process."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def cache_path(folder: str, name: str) -> Path:
    """A file kept in the git-ignored .cache/ (whoever writes it makes its folder)."""
    return REPO / ".cache" / folder / name


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def artifact_stamp(run_dir: str) -> float:
    """The version of a run's artifacts: the mtime of its embeddings (0 when there are none)."""
    return mtime(Path(run_dir) / ckpt.ARTIFACTS / EMBEDDINGS)


def weights_stamp(run_dir: str) -> float:
    """The version of a run's weights: the mtime of weights.safetensors (0 when there are none)."""
    return mtime(Path(run_dir) / ckpt.WEIGHTS)


def read_only(*arrays: np.ndarray) -> None:
    """Arrays shared by every session through st.cache_resource: a write raises instead of leaking."""
    for array in arrays:
        array.setflags(write=False)


def keep_for_good() -> None:
    """Take every object alive now out of the cyclic garbage collector's reach (gc.freeze): the modules, models
    and run artifacts a server keeps until it stops. Each full collection walked those millions of objects with
    the GIL held, a pause that a click or lasso meeting it waited for (benchmarks/notes/dashboard_latency.md).
    Called after the big loads; what dies later in a cycle of these few objects is never freed."""
    import gc
    gc.freeze()


@st.cache_resource
def warm_up() -> threading.Thread:
    """Import what the first interactions need (faiss and scikit-learn for retrieval, Captum for
    attribution) in the background once the first page is drawn, so no click pays for it."""
    def work():
        import captum.attr  # noqa: F401
        import core.data  # noqa: F401
        import core.evaluate  # noqa: F401
        keep_for_good()
    thread = threading.Thread(target=work, name="warm-up", daemon=True)
    thread.start()
    return thread
