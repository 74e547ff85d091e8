"""Where the Explore map's points lie: the run's stored UMAP, PCA or own coordinates, or an isolated selection
projected anew (PCA at once, UMAP in a background job), with UMAP's progress while it is computed."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import streamlit as st

from core.run_dir import ARTIFACTS, coords_file
from dashboard import artifacts, background, ui
from dashboard.jobs import Job
from dashboard.explore.selection import ISOLATED, kept


def umap_progress_ui(job: Job, what: str) -> None:
    """UMAP's own progress (the share of its layout epochs done) or, before it starts them, the time spent."""
    elapsed = time.time() - job.started
    share = job.fraction()
    text = (f"Computing the UMAP of {what} in the background: layout {share:.0%} ({elapsed:.0f} s). "
            if share is not None else
            f"Computing the UMAP of {what} in the background ({elapsed:.0f} s; a fresh process also compiles "
            f"numba code, ~40 s). ")
    st.progress(min(share if share is not None else elapsed / 60.0, 0.95),
                text=text + "Showing PCA meanwhile; the map switches by itself.")


@st.fragment(run_every=1.0)
def wait_for_umap(run_dir: str) -> None:
    """Polls the background UMAP process; the full page reruns once the coordinates are on disk."""
    job = background.start_umap(run_dir)
    if (Path(run_dir) / ARTIFACTS / coords_file("umap")).exists():
        st.rerun(scope="app")
    if job.error():
        st.error(f"UMAP failed; the PCA map below still works. Run `python -m core umap {run_dir}` to see why. "
                 f"Last output: {job.error()}")
        return
    umap_progress_ui(job, "every item")


@st.fragment(run_every=1.0)
def wait_for_subset_umap(run_dir: str, ids: tuple[int, ...]) -> None:
    """Polls the background UMAP of the isolated items; the full page reruns once their coordinates are kept."""
    ids = np.asarray(ids)
    job = background.start_subset_umap(run_dir, ids, artifacts.artifacts(run_dir).embeddings[ids])
    if background.subset_umap_file(run_dir, ids).exists():
        st.rerun(scope="app")
    if job.error():
        st.error(f"UMAP of the isolated items failed; their PCA map still works. Last output: {job.error()}")
        return
    umap_progress_ui(job, f"the {len(ids)} isolated items")


def view_ui(run: str, art: artifacts.Artifacts, projection: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(item ids on the map, their 2-D coordinates, projection shown): every item, or the isolated ones
    re-projected (PCA at once, UMAP in the background)."""
    from core.projection import pca_2d

    isolated = kept(ISOLATED, run)
    if isolated is not None and len(isolated) >= 3:
        if projection == "UMAP":
            kept_coords = background.subset_umap_file(run, isolated)
            if kept_coords.exists():
                return isolated, np.load(kept_coords), "UMAP"
            wait_for_subset_umap(run, tuple(isolated.tolist()))
        return isolated, pca_2d(art.embeddings[isolated]), "PCA"
    all_ids = np.arange(len(art.labels))
    coords = artifacts.coords(run, ui.PROJECTION_FILES[projection])
    if coords is not None:
        return all_ids, coords, projection
    if os.environ.get("METRICLENS_AUTO_UMAP", "1") != "0" or st.session_state.get(f"umap_requested_{run}"):
        wait_for_umap(run)
    elif st.button("Compute UMAP", help="in the background; cached next to the run in artifacts/coords_umap.npy"):
        st.session_state[f"umap_requested_{run}"] = True
        st.rerun()
    return all_ids, artifacts.coords(run, "pca"), "PCA"
