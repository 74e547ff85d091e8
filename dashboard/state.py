"""The only place that caches, and the names of the session-state keys every page shares.

- models: one copy per run for every session, in a least-recently-used cache bounded by
  METRICLENS_MODEL_BUDGET_MB (see `ModelCache`); models are read-only and keep no per-request state;
- `st.cache_resource`: data sets, background jobs (shared objects, never mutated);
- `st.cache_data`: derived arrays (artifacts, retrieval tables, maps, attributions).
Every cache key carries the run directory plus the mtime of the file it derives from, so a
retrained run invalidates its entries. Errors are raised as `CheckpointError` / `DatasetError`
with a message saying what to do; `dashboard/ui.py` turns them into `st.error`.
Which runs a session may open (teaching mode: only those under the run roots fixed at start) is
decided here too: `discover_runs` is the allow-list every run name from a link is resolved against.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from core import checkpoint as ckpt
from core.checkpoint import CheckpointError
from core.run_dir import EMBEDDINGS, ITEMS, LABELS, coords_file, is_complete
from core.explain import EXPLAINERS, Explanation
from dashboard import access, jobs, logic

REPO = access.REPO
DEFAULT_RUNS = access.DEFAULT_RUNS
# The run the dashboard opens on when present: per-group attention gives every page something to show.
OPENING_RUN = os.environ.get("METRICLENS_OPEN_RUN", "shapes_grouping")

# session-state keys (plain values, not widget keys, so they survive page switches)
RUN, COMPARE, QUERY, UPLOAD = "run", "compare_run", "query", "upload_query"
EXTRA_ROOT, DATA_ROOTS, PAIR = "extra_runs_root", "data_root_overrides", "cross_pair"


def digest(text: str) -> str:
    """A stable short name for a path (file names, widget keys): `hash()` of a str is salted per process."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def session_owner() -> str:
    """This browser session's id, for the jobs it starts (kept in its session state)."""
    return st.session_state.setdefault("_session_owner", uuid.uuid4().hex)


# ---- teaching mode and finding runs -------------------------------------------------------------
def teaching() -> bool:
    """Read-only teaching mode: METRICLENS_MODE=demo, or by default whenever the server is shared."""
    return access.mode(st.get_option("server.address")) == "demo"


def run_roots() -> list[Path]:
    roots = access.configured_roots()
    extra = None if teaching() else st.session_state.get(EXTRA_ROOT)
    if extra:
        roots.append(Path(extra).expanduser().resolve())
    if not teaching():  # runs trained from this dashboard, wherever they were saved (no training when teaching)
        roots += [run.resolve() for run in trained_runs()]
    return list(dict.fromkeys(roots))


def _candidate_runs(root: Path) -> list[Path]:
    """A folder that is a run, or the runs inside it. A folder with config.json counts even without
    weights, so selecting a half-written run explains itself instead of silently missing."""
    if (root / ckpt.CONFIG).exists():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / ckpt.CONFIG).exists())


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False, max_entries=256)
def _summary(run_dir: str, metrics_mtime: float, config_mtime: float) -> dict:
    path = Path(run_dir)
    out = {"path": run_dir, "name": path.name, "head": "?", "backbone": "?", "complete": False, "metrics": {}}
    try:
        cfg = ckpt.load_config(path)
        method = " + ".join([cfg.model.head, *(b.name for b in cfg.model.blocks), *(["cia"] if cfg.model.cia else [])])
        out.update(head=cfg.model.head, method=method, backbone=cfg.model.backbone, data=cfg.data.name,
                   description=cfg.description, imported=is_imported_config(cfg), user_code=cfg.model.user_model is not None)
    except CheckpointError as err:
        out["problem"] = str(err)
    if metrics_mtime:
        try:
            metrics = json.loads((path / ckpt.METRICS).read_text())
            out["metrics"] = metrics.get("test", {})
            out["best_epoch"] = metrics.get("best_epoch")
        except (OSError, ValueError):
            out["problem"] = f"{path / ckpt.METRICS} is damaged"
    out["complete"] = bool(metrics_mtime) and is_complete(path)
    return out


def discover_runs() -> list[dict]:
    """Every run under the roots, with its key metrics (read once per metrics.json version). In teaching
    mode a run whose real path leaves its root (a symlink pointing elsewhere) is not listed."""
    seen, runs = set(), []
    strict = teaching()
    for root in run_roots():
        for run in _candidate_runs(root):
            key = str(run.resolve())
            if strict and not Path(key).is_relative_to(root):
                continue
            if key not in seen:
                seen.add(key)
                runs.append(_summary(key, _mtime(run / ckpt.METRICS), _mtime(run / ckpt.CONFIG)))
    return runs


def is_imported_config(cfg) -> bool:
    from core.importer import is_imported
    return is_imported(cfg)


def imported(run_dir: str) -> bool:
    """A run made by `python -m core import` from embeddings: artifacts and metrics, no model. So is, in teaching
    mode, a run of a researcher's own model (`import-model`): its code is never imported there."""
    found = summary(run_dir)
    return bool(found.get("imported") or (found.get("user_code") and teaching()))


def summary(run_dir: str) -> dict:
    """One run's entry of the run list (name, head, test metrics from metrics.json)."""
    path = Path(run_dir)
    return _summary(run_dir, _mtime(path / ckpt.METRICS), _mtime(path / ckpt.CONFIG))


def keep_for_good() -> None:
    """Take every object alive now out of the cyclic garbage collector's reach (gc.freeze): the modules, models
    and run artifacts a server keeps until it stops. Each full collection walked those millions of objects with
    the GIL held, 0.3-0.8 s every few seconds on this 2-core machine, and a click or lasso that met one waited
    for it. Called after the big loads; what dies later in a cycle of these few objects is never freed."""
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


# ---- models and artifacts ---------------------------------------------------------------------
class ModelCache:
    """One loaded copy per run for every session: run_dir -> (weights mtime, model, cfg, bytes). A
    retrained run replaces its own entry; past `budget` bytes of parameters and buffers the least
    recently used runs are dropped (the newest always stays, whatever its size). Two sessions asking
    for the same missing run wait for one load instead of loading it twice."""

    def __init__(self, budget: int):
        self.budget = budget
        self.entries: OrderedDict[str, tuple] = OrderedDict()
        self.lock = threading.Lock()
        self.loading: dict[str, threading.Lock] = {}

    def _hit(self, run_dir: str, stamp: float):
        entry = self.entries.get(run_dir)
        if entry is None or entry[0] != stamp:
            return None
        self.entries.move_to_end(run_dir)
        return entry[1], entry[2]

    def has(self, run_dir: str, stamp: float) -> bool:
        with self.lock:
            return self._hit(run_dir, stamp) is not None

    def get(self, run_dir: str, stamp: float, load):
        with self.lock:
            hit = self._hit(run_dir, stamp)
            if hit:
                return hit
            gate = self.loading.setdefault(run_dir, threading.Lock())
        with gate:
            with self.lock:  # loaded by another session while this one waited
                hit = self._hit(run_dir, stamp)
            if hit:
                return hit
            model, cfg = load()
            keep_for_good()
            size = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
            with self.lock:
                self.entries[run_dir] = (stamp, model, cfg, size)
                self.entries.move_to_end(run_dir)
                while len(self.entries) > 1 and self.loaded_bytes() > self.budget:
                    self.entries.popitem(last=False)
        return model, cfg

    def loaded_bytes(self) -> int:
        return sum(entry[3] for entry in self.entries.values())


def model_budget_mb() -> int:
    """METRICLENS_MODEL_BUDGET_MB (default 1024): parameter memory of the models kept loaded at once.
    The shipped shapes runs take about 5 MB each, a ResNet-50 run about 100 MB."""
    return int(os.environ.get("METRICLENS_MODEL_BUDGET_MB", "1024"))


@st.cache_resource
def model_cache() -> ModelCache:
    return ModelCache(model_budget_mb() * 2**20)


def load_model(run_dir: str):
    """(model in eval mode, RunConfig); one copy shared by every session, so treat it as read-only."""
    if imported(run_dir):  # say what the run is rather than "weights.safetensors is missing"
        from core.importer import NoModelError, no_model_message
        raise NoModelError(no_model_message(run_dir, "anything that needs the network"))
    cache, stamp = model_cache(), _mtime(Path(run_dir) / ckpt.WEIGHTS)
    load = (lambda: ckpt.load_run(run_dir, allow_code=not teaching()))  # a run's own code: full mode only
    if cache.has(run_dir, stamp):
        return cache.get(run_dir, stamp, load)
    with st.spinner("Loading the model…"):
        return cache.get(run_dir, stamp, load)


@dataclass
class Artifacts:
    embeddings: np.ndarray     # N×D, L2-normalised
    labels: np.ndarray         # N
    items: list[dict]          # per item: split, index, path, class_name
    groups: list[slice]        # embedding dims of each group/subspace

    @functools.cached_property  # computed once per cached Artifacts (120k items: a list built per call was slow)
    def class_names(self) -> list[str]:
        return [it.get("class_name", str(l)) for it, l in zip(self.items, self.labels)]


def _artifact_stamp(run_dir: str) -> float:
    return _mtime(Path(run_dir) / ckpt.ARTIFACTS / EMBEDDINGS)


def read_only(*arrays: np.ndarray) -> None:
    """Arrays shared by every session through st.cache_resource: a write raises instead of leaking."""
    for array in arrays:
        array.setflags(write=False)


# cache_resource, not cache_data: cache_data unpickles a copy on every hit, and a 120k-item run's
# artifacts and retrieval table took seconds per rerun to copy (every image lookup reads the items)
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
    groups = () if imported(run_dir) else tuple((g.start or 0, g.stop) for g in load_model(run_dir)[0].head.groups)
    return _artifacts(run_dir, _artifact_stamp(run_dir), groups)


# Past this many items the all-vs-all table is computed in a background process at low priority and kept
# on disk: at 60k-120k items faiss took both cores for 10-70 s right after the map was sent, while the
# browser was still building it (the map's first paint slowed by seconds), and a server restart paid again.
TABLE_IN_PROCESS_MAX = 20_000
RETRIEVAL_TABLE = """import sys, numpy as np
from dashboard import logic
art = sys.argv[1]
logic.save_table(logic.retrieval_table(np.load(art + "/embeddings.npy"), np.load(art + "/labels.npy")), sys.argv[2])
"""


def retrieval_file(run_dir: str) -> Path:
    """Where a large run's retrieval table is kept (git-ignored .cache/, by run and artifacts version)."""
    return REPO / ".cache" / "retrieval" / f"{digest(f'{run_dir}|{_artifact_stamp(run_dir)}')}.npz"


def _table_in_background(run_dir: str) -> logic.RetrievalTable:
    """The kept table, or a nice'd `RETRIEVAL_TABLE` process's, waited for without holding a core."""
    import sys

    path = retrieval_file(run_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".log"), "w") as fh:
            process = jobs.spawn([sys.executable, "-c", RETRIEVAL_TABLE, str(Path(run_dir) / ckpt.ARTIFACTS),
                                  str(path)], fh, nice=10)
        while process.poll() is None:
            time.sleep(0.1)
        if process.returncode != 0:
            raise CheckpointError(f"scoring every item of {Path(run_dir).name} against all others failed: "
                                  f"{_log_tail(path.with_suffix('.log'))}")
    return logic.load_table(path)


@st.cache_resource(show_spinner=False, max_entries=16)
def _retrieval(run_dir: str, stamp: float) -> logic.RetrievalTable:
    art = artifacts(run_dir)
    if len(art.labels) > TABLE_IN_PROCESS_MAX:
        table = _table_in_background(run_dir)
    else:
        table = logic.retrieval_table(art.embeddings, art.labels)
    read_only(*(value for value in vars(table).values() if isinstance(value, np.ndarray)))
    return table


def retrieval(run_dir: str) -> logic.RetrievalTable:
    return _retrieval(run_dir, _artifact_stamp(run_dir))


# ---- 2-D coordinates and the background UMAP job -----------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def _coords(run_dir: str, method: str, stamp: float) -> np.ndarray:
    from core.projection import ensure_coords
    return ensure_coords(run_dir, method)


def coords(run_dir: str, method: str) -> np.ndarray | None:
    """Coordinates if they are on disk (PCA is always computed at once); None while UMAP is missing."""
    path = Path(run_dir) / ckpt.ARTIFACTS / coords_file(method)
    if method != "pca" and not path.exists():
        return None
    out = _coords(run_dir, method, _mtime(path) or _artifact_stamp(run_dir))
    n = len(artifacts(run_dir).labels)
    if len(out) != n:
        raise CheckpointError(f"{path} has {len(out)} points for {n} embeddings: it is left from older "
                              f"embeddings. Delete it; the dashboard computes it again.")
    return out


@st.cache_resource
def _umap_jobs() -> dict:
    return {}


def start_umap(run_dir: str) -> dict:
    """Compute a run's UMAP coordinates in a background *process* (`python -m core umap RUN_DIR`,
    lowered priority) and return its record {started, process, log, error}. The page polls for the
    file. A thread was tried first: numba's ~40 s of compilation then starved the UI's own thread
    (the PCA map took 38 s to appear on the busy 2-core machine); a nice'd process does not."""
    import sys

    umap_jobs = _umap_jobs()
    job = umap_jobs.get(run_dir)
    finished = job is not None and job["process"].poll() is not None
    stale = finished and job["process"].returncode == 0 and coords(run_dir, "umap") is None  # retrained since
    if job is None or stale:
        # the log goes to the git-ignored cache, never into a (possibly shipped) run directory
        log = REPO / ".cache" / "umap_logs" / f"{digest(run_dir)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:  # jobs.spawn reaps the process when it ends, whether polled or not
            process = jobs.spawn([sys.executable, "-m", "core", "umap", run_dir], fh, nice=10)
        job = umap_jobs[run_dir] = {"started": time.time(), "process": process, "log": log, "error": None}
    elif finished and job["process"].returncode != 0 and not job["error"]:
        job["error"] = _log_tail(job["log"])
    return job


def _log_tail(path: Path, chars: int = 600) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:].strip()
    except OSError:
        return "(no log)"


# ---- the Explore page: item fields, neighbour index, thumbnails, re-projecting a selection -----------
@st.cache_resource(show_spinner=False, max_entries=16)
def _item_fields(run_dir: str, stamp: float) -> dict[str, np.ndarray]:
    from dashboard import items
    art = artifacts(run_dir)
    fields = items.categorical_fields(art.items, art.class_names)
    read_only(*fields.values())
    return fields


def item_fields(run_dir: str) -> dict[str, np.ndarray]:
    """Field name -> value per item (class, split, attributes...), once per artifacts version."""
    return _item_fields(run_dir, _artifact_stamp(run_dir))


@st.cache_resource(show_spinner="Indexing the item names for search (once per run)…", max_entries=8)
def _search_text(run_dir: str, stamp: float) -> np.ndarray:
    from dashboard import items
    haystack = items.search_text(artifacts(run_dir).items, item_fields(run_dir))
    read_only(haystack)
    return haystack


def search_text(run_dir: str) -> np.ndarray:
    """The text a search reads per item; built on the first search, not before the map is drawn."""
    return _search_text(run_dir, _artifact_stamp(run_dir))


@st.cache_resource(show_spinner=False, max_entries=8)
def _neighbour_index(run_dir: str, stamp: float):
    from dashboard import items
    return items.neighbour_index(artifacts(run_dir).embeddings)


def neighbour_index(run_dir: str):
    """The run's faiss index, built once per artifacts version and shared by every session (read-only)."""
    return _neighbour_index(run_dir, _artifact_stamp(run_dir))


def thumbnail_url(run_dir: str) -> str:
    """The URL folder (relative to the app's root) of the run's thumbnail sheets, <sheet>.jpg inside."""
    return f"app/static/thumbs/{digest(f'{run_dir}|{_artifact_stamp(run_dir)}|{data_root_override(run_dir)}')}/"


def thumbnails(run_dir: str) -> dict:
    """Start writing the run's hover thumbnails (once per server, run and data folder) into static/thumbs/
    (git-ignored; Streamlit's static route serves it) in a background process: a 120k-item run decodes
    every image, which in a thread slowed the page. The hover script shows nothing for a sheet not
    written yet. Returns the job record."""
    import sys

    url = thumbnail_url(run_dir)
    umap_jobs = _umap_jobs()
    if url not in umap_jobs:
        log = REPO / ".cache" / "thumbnail_logs" / f"{digest(url)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            process = jobs.spawn([sys.executable, "-m", "dashboard.items", run_dir, str(REPO / url.removeprefix("app/")),
                                  data_root_override(run_dir) or ""], fh, nice=10)
        umap_jobs[url] = {"started": time.time(), "process": process, "log": log, "error": None}
    return umap_jobs[url]


SUBSET_UMAP = """import os, sys, numpy as np
from core.projection import umap_2d
np.save(sys.argv[2] + ".tmp.npy", umap_2d(np.load(sys.argv[1]), progress=True))
os.replace(sys.argv[2] + ".tmp.npy", sys.argv[2])  # whole or absent
"""


def start_subset_umap(run_dir: str, ids: np.ndarray) -> dict:
    """UMAP of some items only (an isolated selection), in a background process like the run's own UMAP;
    {started, process, log, out, error}. The coordinates are kept in .cache/subset_umap/ by run and ids."""
    import sys

    key = digest(f"{run_dir}|{_artifact_stamp(run_dir)}|{np.asarray(ids).tobytes().hex()}")
    folder = REPO / ".cache" / "subset_umap"
    umap_jobs = _umap_jobs()
    job = umap_jobs.get(key)
    out = folder / f"{key}.npy"
    if job is None and not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{key}_in.npy", artifacts(run_dir).embeddings[np.asarray(ids)])
        log = folder / f"{key}.log"
        with open(log, "w") as fh:
            process = jobs.spawn([sys.executable, "-c", SUBSET_UMAP, str(folder / f"{key}_in.npy"), str(out)], fh, nice=10)
        job = umap_jobs[key] = {"started": time.time(), "process": process, "log": log, "error": None}
    if job is None:
        return {"out": out, "error": None, "started": time.time(), "log": None}
    if job["process"].poll() not in (None, 0) and not job["error"]:
        job["error"] = _log_tail(job["log"])
    return job | {"out": out}


def umap_progress(job: dict) -> float | None:
    """The share of UMAP's layout epochs done, read from its tqdm bar in the job's log (None before)."""
    import re
    try:
        found = re.findall(r"(\d+)%\|", Path(job["log"]).read_text(errors="replace")[-2000:])
    except (OSError, TypeError):
        return None
    return int(found[-1]) / 100 if found else None


# ---- data, images and explanations --------------------------------------------------------------
@st.cache_resource(show_spinner="Preparing the data set…", max_entries=8)
def _splits(run_dir: str, data_root: str | None):
    from core.data import build_datasets

    _, cfg = load_model(run_dir)
    data_cfg = cfg.with_overrides([f"data.root={data_root}"]).data if data_root else cfg.data
    return build_datasets(data_cfg, seed=cfg.train.seed)


def data_root_override(run_dir: str) -> str | None:
    """The data folder this session gave for a run whose data moved (never in teaching mode)."""
    return None if teaching() else (st.session_state.get(DATA_ROOTS) or {}).get(run_dir)


def splits(run_dir: str):
    """The run's data splits (raises DatasetError when the data folder moved)."""
    if imported(run_dir):
        from core.data.folders import DatasetError
        raise DatasetError(f"{Path(run_dir).name} was imported from embeddings: its images are the files named in "
                           f"its items, it has no data set")
    return _splits(run_dir, data_root_override(run_dir))


@st.cache_data(show_spinner=False, max_entries=4096)
def _model_input(run_dir: str, item: int, stamp: float, data_root: str | None) -> np.ndarray:
    meta = artifacts(run_dir).items[item]
    dataset = getattr(splits(run_dir), meta.get("split", "test"))
    return dataset[int(meta["index"])][0].numpy()


def model_input(run_dir: str, item: int) -> np.ndarray:
    """Item `item` of the artifacts as the model sees it: 3×H×W float in [0, 1]."""
    if imported(run_dir):
        return _imported_image(run_dir, int(item), _artifact_stamp(run_dir))
    return _model_input(run_dir, int(item), _artifact_stamp(run_dir), data_root_override(run_dir))


@st.cache_data(show_spinner=False, max_entries=4096)
def _imported_image(run_dir: str, item: int, stamp: float) -> np.ndarray:
    from core.data.folders import DatasetError
    from core.importer import load_image
    path = artifacts(run_dir).items[item].get("path")
    try:
        return load_image(path)
    except (OSError, ValueError) as err:
        raise DatasetError(f"item {item} of imported run {Path(run_dir).name} has no readable image "
                           f"({path or 'no path column was imported'}: {err})") from None


def image(run_dir: str, item: int) -> np.ndarray:
    return logic.to_uint8(model_input(run_dir, item))


def upload_input(run_dir: str, pil_image) -> np.ndarray:
    from core.data import build_transform
    _, cfg = load_model(run_dir)
    return build_transform(cfg.data, train=False)(pil_image).numpy()


@st.cache_data(show_spinner=False, max_entries=512)
def _explanation(run_dir: str, stamp: float, explainer: str, query: np.ndarray, reference: np.ndarray | None,
                 options: tuple) -> Explanation:
    from core.explain import explain
    model, _ = load_model(run_dir)
    return explain(model, query, reference, explainer=explainer, **dict(options))


def explanation(run_dir: str, query: np.ndarray, reference: np.ndarray | None = None, explainer: str = "learned",
                **options) -> Explanation:
    """`core.explain.explain` on the run's shared model, cached per weights version (query and reference:
    model inputs 3×H×W, or an embedding as reference; see core/explain.py for what each kind takes)."""
    if EXPLAINERS.get(explainer).kind in ("attribution", "contrast"):  # Captum runs backward passes: say so
        with st.spinner("Attributing the similarity…"):
            return _explanation(run_dir, weights_stamp(run_dir), explainer, query, reference,
                                tuple(sorted(options.items())))
    return _explanation(run_dir, weights_stamp(run_dir), explainer, query, reference, tuple(sorted(options.items())))


def explain_input(run_dir: str, pixels: np.ndarray, stamp: float | None = None) -> dict:
    """Embedding, every learned map (K×h×w numpy), extras and group slices for one model input."""
    out = explanation(run_dir, pixels)
    return {"embedding": out.embedding, "maps": out.maps, "extras": out.extras,
            "groups": [(g.start or 0, g.stop) for g in out.groups]}


def explain_item(run_dir: str, item: int, explainer: str = "learned", **options) -> Explanation:
    return explanation(run_dir, model_input(run_dir, item), explainer=explainer, **options)


@st.cache_data(show_spinner=False, max_entries=32)
def _map_shapes(run_dir: str, stamp: float) -> dict[str, tuple[int, int, int]]:
    """name -> (K, h, w) of every map the model exposes, from a blank input (needs no data set)."""
    model, cfg = load_model(run_dir)
    size = cfg.data.image_size
    with torch.inference_mode():
        maps = model.explain(torch.full((1, 3, size, size), 0.5)).maps
    return {name: tuple(m.shape[1:]) for name, m in maps.items()}


def map_shapes(run_dir: str) -> dict[str, tuple[int, int, int]]:
    if imported(run_dir):  # no model, no maps
        return {}
    return _map_shapes(run_dir, weights_stamp(run_dir))


@st.cache_data(show_spinner=False, max_entries=8)
def _map_channel_mass(run_dir: str, stamp: float, data_root: str | None, weights: float,
                      _progress=None) -> dict[str, np.ndarray]:
    """Per item and map with K > 1 channels: the mass of each channel (N×K), for 'dominant channel'.
    A full pass over the test images (seconds to tens of seconds), so it reports progress and is kept on
    disk in the git-ignored .cache/, keyed by the run and the mtimes of its weights and embeddings."""
    import hashlib

    key = hashlib.sha1(f"{run_dir}|{stamp}|{weights}|{data_root}".encode()).hexdigest()[:16]
    cached = REPO / ".cache" / "channel_mass" / f"{key}.npz"
    try:
        with np.load(cached) as saved:
            return {name: saved[name] for name in saved.files}
    except (OSError, ValueError):
        pass
    model, _ = load_model(run_dir)
    n = len(artifacts(run_dir).items)
    out: dict[str, list] = {}
    with torch.inference_mode():
        for start in range(0, n, 64):
            batch = torch.from_numpy(np.stack([model_input(run_dir, i) for i in range(start, min(n, start + 64))]))
            for name, m in model.explain(batch).maps.items():
                if m.shape[1] > 1:
                    out.setdefault(name, []).append(m.float().flatten(2).sum(-1).numpy())
            if _progress is not None:
                _progress(min(n, start + 64), n)
    result = {name: np.concatenate(parts) for name, parts in out.items()}
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, **result)
        tmp.replace(cached)  # whole or absent, never half-written
    except OSError:
        pass  # a read-only checkout recomputes next time
    return result


def map_channel_mass(run_dir: str, progress=None) -> dict[str, np.ndarray]:
    """`progress(done, total)` is called while the maps are computed (not on a cache hit)."""
    return _map_channel_mass(run_dir, _artifact_stamp(run_dir), data_root_override(run_dir),
                             weights_stamp(run_dir), _progress=progress)


@st.cache_data(show_spinner=False, max_entries=64)
def features(run_dir: str, items: tuple[int, ...], stamp: float) -> np.ndarray:
    """Backbone features at the pooled stage for some items, B×C×h×w (for the Learn page's demos)."""
    model, _ = load_model(run_dir)
    batch = torch.from_numpy(np.stack([model_input(run_dir, i) for i in items]))
    with torch.inference_mode():
        return model.forward_features(batch).float().numpy()


def annotation(run_dir: str, item: int) -> dict:
    """The data set's annotation of an item (shapes: class, attributes, target mask and box)."""
    meta = artifacts(run_dir).items[item]
    return getattr(splits(run_dir), meta.get("split", "test")).annotation(int(meta["index"]))


@st.cache_data(show_spinner="Drawing a shapes image…")
def shapes_demo_image() -> np.ndarray:
    """A fixed image of the procedural shapes set, 3×H×W in [0, 1], for when no run is loaded."""
    from core.data import shapes
    data = shapes.load(shapes.ShapesSpec(test_per_class=2), "test")
    return (data.images[0].astype(np.float32) / 255.0).transpose(2, 0, 1)


def weights_stamp(run_dir: str) -> float:
    return _mtime(Path(run_dir) / ckpt.WEIGHTS)


# ---- training jobs (subprocesses that outlive a rerun) -----------------------------------------
@st.cache_resource
def training_jobs() -> jobs.JobBoard:
    """Every training job of this server; each belongs to the session that started it."""
    return jobs.JobBoard(access.max_jobs())


def trained_runs() -> list[Path]:
    """The run folders of this server's training jobs, listed in every session wherever they were saved: the
    folder the Train page adds for a run outside the run roots is this session's only, so after a reload or
    in a new tab (a new session) the finished run was missing from the list (issue 13, defect 3)."""
    return [Path(job.run_dir) for job in list(training_jobs().jobs.values())]
