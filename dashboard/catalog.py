"""Which runs a session may open, and what each one is: the run roots, finding runs, a run's summary.

The roots are checkpoints/ and METRICLENS_RUNS, fixed at start; outside teaching mode a session may add a
folder (its EXTRA_ROOT), and the runs trained from this dashboard are listed in every session. In teaching
mode `discover_runs` is the allow-list: every run name from a link is resolved against it (app.py), and a
run whose real path leaves its root is not listed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import streamlit as st

from core import checkpoint as ckpt
from core.checkpoint import CheckpointError
from core.run_dir import is_complete
from dashboard import access, background
from dashboard.caching import mtime
from dashboard.session import EXTRA_ROOT, teaching

REPO = access.REPO
DEFAULT_RUNS = access.DEFAULT_RUNS
# The run the dashboard opens on when present: per-group attention gives every page something to show.
OPENING_RUN = os.environ.get("METRICLENS_OPEN_RUN", "shapes_grouping")


def run_roots() -> list[Path]:
    roots = access.configured_roots()
    extra = None if teaching() else st.session_state.get(EXTRA_ROOT)
    if extra:
        roots.append(Path(extra).expanduser().resolve())
    if not teaching():  # runs trained from this dashboard, wherever they were saved (no training when teaching)
        roots += [run.resolve() for run in background.trained_runs()]
    return list(dict.fromkeys(roots))


def candidate_runs(root: Path) -> list[Path]:
    """A folder that is a run, or the runs inside it. A folder with config.json counts even without
    weights, so selecting a half-written run explains itself instead of silently missing."""
    if (root / ckpt.CONFIG).exists():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / ckpt.CONFIG).exists())


def methods_of(cfg) -> list[str]:
    """The methods a run's model is made of, in order: its head, its blocks (a block used twice is named
    twice) and, when it has one, its cross-image training branch."""
    return [cfg.model.head, *(b.name for b in cfg.model.blocks), *(["cia"] if cfg.model.cia is not None else [])]


def method_label(cfg) -> str:
    """How the pages name a run's method: "gap + csa + csa"."""
    return " + ".join(methods_of(cfg))


@st.cache_data(show_spinner=False, max_entries=256)
def _summary(run_dir: str, metrics_mtime: float, config_mtime: float) -> dict:
    from core.importer import is_imported

    path = Path(run_dir)
    out = {"path": run_dir, "name": path.name, "head": "?", "backbone": "?", "complete": False, "metrics": {}}
    try:
        cfg = ckpt.load_config(path)
        out.update(head=cfg.model.head, method=method_label(cfg), backbone=cfg.model.backbone, data=cfg.data.name,
                   description=cfg.description, imported=is_imported(cfg),
                   user_code=cfg.model.user_model is not None)
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


def summary(run_dir: str) -> dict:
    """One run's entry of the run list (name, head, method, test metrics from metrics.json), read once per
    version of its metrics.json and config.json."""
    path = Path(run_dir)
    return _summary(run_dir, mtime(path / ckpt.METRICS), mtime(path / ckpt.CONFIG))


def discover_runs() -> list[dict]:
    """Every run under the roots, with its key metrics. In teaching mode a run whose real path leaves its
    root (a symlink pointing elsewhere) is not listed."""
    seen, runs = set(), []
    strict = teaching()
    for root in run_roots():
        for run in candidate_runs(root):
            key = str(run.resolve())
            if strict and not Path(key).is_relative_to(root):
                continue
            if key not in seen:
                seen.add(key)
                runs.append(summary(key))
    return runs


def imported(run_dir: str) -> bool:
    """A run made by `python -m core import` from embeddings: artifacts and metrics, no model. So is, in teaching
    mode, a run of a researcher's own model (`import-model`): its code is never imported there."""
    found = summary(run_dir)
    return bool(found.get("imported") or (found.get("user_code") and teaching()))


def user_code(run_dir: str) -> bool:
    """A run of a researcher's own model (`import-model`): rebuilding it imports their code."""
    return bool(summary(run_dir).get("user_code"))
