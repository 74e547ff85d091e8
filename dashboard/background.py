"""The server's background work: its two job boards and the jobs the pages start (see dashboard/jobs.py).

- training (`training_jobs`): each job owned by the browser session that started it, at most
  METRICLENS_MAX_JOBS at once (the Train page); `trained_runs` lists their folders in every session;
- shared work (`shared_jobs`), one job per output for every session: a run's UMAP coordinates (`start_umap`),
  the UMAP of an isolated selection (`start_subset_umap`), the hover thumbnails (`thumbnails`), for a
  large run the all-vs-all retrieval table (`table_in_background`), and a run's faithfulness table
  (`start_faithfulness`, `python -m core faithfulness`).
The shared programs are `python -m dashboard.workers ...` (the faithfulness table's: the core CLI) at lowered
priority. They run as processes, not threads: numba's compilation in a UMAP thread starved the UI's own thread,
and the map waited for it (benchmarks/notes/dashboard_latency.md). Their logs and progress files go to the git-ignored .cache/jobs/,
never into a (possibly shipped) run directory.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import streamlit as st

from core.checkpoint import CheckpointError
from core.run_dir import ARTIFACTS, EMBEDDINGS, coords_file
from dashboard import access, jobs, logic
from dashboard.caching import artifact_stamp, cache_path, digest, weights_stamp
from dashboard.session import data_root_override

REPO = jobs.REPO


# ---- training ---------------------------------------------------------------------------------------------
@st.cache_resource
def training_jobs() -> jobs.JobBoard:
    """Every training job of this server; each belongs to the session that started it."""
    return jobs.JobBoard(access.max_jobs())


def trained_runs() -> list[Path]:
    """The run folders of this server's training jobs, listed in every session wherever they were saved: the
    folder the Train page adds for a run outside the run roots is this session's only, so after a reload or
    in a new tab (a new session) the finished run was missing from the list (issue 13, defect 3)."""
    return [Path(job.run_dir) for job in list(training_jobs().jobs.values())]


# ---- shared work ------------------------------------------------------------------------------------------
@st.cache_resource
def shared_jobs() -> jobs.JobBoard:
    """Jobs that make files every session reads: nobody owns them, and each starts once per output."""
    return jobs.JobBoard()


def _start_shared(kind: str, key: str, arguments: list, output: Path) -> jobs.Job:
    """`python -m dashboard.workers KIND ARGUMENTS`, once per (kind, key) on this server."""
    name = f"{kind}-{digest(key)}"
    log, progress = cache_path("jobs", f"{name}.log"), cache_path("jobs", f"{name}.jsonl")
    command = [sys.executable, "-m", "dashboard.workers", kind, *map(str, arguments), "--progress", str(progress)]
    return shared_jobs().start(jobs.Job(f"{kind}|{key}", command, log, progress, output=output, nice=10))


def start_umap(run_dir: str) -> jobs.Job:
    """Compute a run's UMAP coordinates (artifacts/coords_umap.npy) in the background; the page polls for
    the file. Started again when the file has gone since (the run was retrained)."""
    art = Path(run_dir) / ARTIFACTS
    return _start_shared("umap", run_dir, [art / EMBEDDINGS, art / coords_file("umap")], art / coords_file("umap"))


def subset_umap_file(run_dir: str, ids: np.ndarray) -> Path:
    """Where the UMAP coordinates of some items of a run are kept (.cache/subset_umap/, by run and ids)."""
    key = digest(f"{run_dir}|{artifact_stamp(run_dir)}|{np.asarray(ids).tobytes().hex()}")
    return cache_path("subset_umap", f"{key}.npy")


def start_subset_umap(run_dir: str, ids: np.ndarray, embeddings: np.ndarray) -> jobs.Job:
    """UMAP of some items only (an isolated selection; `embeddings`: theirs), in the background like the
    run's own; the coordinates go to `subset_umap_file(run_dir, ids)`."""
    from core.io import atomic_save_npy

    out = subset_umap_file(run_dir, ids)
    inputs = out.with_name(f"{out.stem}_in.npy")
    if not inputs.exists():
        atomic_save_npy(inputs, np.asarray(embeddings, dtype=np.float32))
    return _start_shared("umap", str(out), [inputs, out], out)


def thumbnail_url(run_dir: str) -> str:
    """The URL folder (relative to the app's root) of the run's thumbnail sheets, <sheet>.jpg inside."""
    return f"app/static/thumbs/{digest(f'{run_dir}|{artifact_stamp(run_dir)}|{data_root_override(run_dir)}')}/"


def thumbnails(run_dir: str) -> jobs.Job:
    """Start writing the run's hover thumbnails (once per server, run and data folder) into static/thumbs/
    (git-ignored; Streamlit's static route serves it): a large run decodes every image, which in a thread
    slowed the page. The hover script shows nothing for a sheet not written yet."""
    url = thumbnail_url(run_dir)
    folder = REPO / url.removeprefix("app/")
    data_root = data_root_override(run_dir)
    return _start_shared("thumbnails", url, [run_dir, folder, *(["--data-root", data_root] if data_root else [])],
                         folder)


def thumbnail_job(run_dir: str) -> jobs.Job | None:
    """The job writing the run's hover thumbnails on this server, if one was started (it is not started here)."""
    return shared_jobs().jobs.get(f"thumbnails|{thumbnail_url(run_dir)}")


def retrieval_file(run_dir: str) -> Path:
    """Where a large run's retrieval table is kept (.cache/retrieval/, by run and artifacts version)."""
    return cache_path("retrieval", f"{digest(f'{run_dir}|{artifact_stamp(run_dir)}')}.npz")


def table_in_background(run_dir: str) -> logic.RetrievalTable:
    """The kept retrieval table, or a nice'd worker's, waited for without holding a core: scoring a large run
    in the server's process took both cores while the browser drew the map, and a restart paid again."""
    path = retrieval_file(run_dir)
    if not path.exists():
        job = _start_shared("retrieval-table", str(path), [Path(run_dir) / ARTIFACTS, path], path)
        if job.wait() != 0:
            raise CheckpointError(f"scoring every item of {Path(run_dir).name} against all others failed: "
                                  f"{job.error()}")
    return logic.load_table(path)


# ---- a run's faithfulness table -----------------------------------------------------------------------------
FAITHFULNESS_JOB = "faithfulness"


def start_faithfulness(run_dir: str, queries: int, out: Path, explainers: list[str] | None = None) -> jobs.Job:
    """`python -m core faithfulness RUN --queries N --out OUT` in the background (the Attention page's run-level
    table; `explainers`: only these), once per run, weights, N and explainers on this server; progress as JSON
    lines for the page's bar. The child sees the modules the server sees (a researcher's own model's code)."""
    key = f"{FAITHFULNESS_JOB}|{run_dir}|{weights_stamp(run_dir)}|{int(queries)}|{','.join(explainers or [])}"
    name = f"{FAITHFULNESS_JOB}-{digest(key)}"
    log, progress = cache_path("jobs", f"{name}.log"), cache_path("jobs", f"{name}.jsonl")
    command = [sys.executable, "-m", "core", "faithfulness", run_dir, "--queries", str(int(queries)),
               "--out", str(out), "--progress", str(progress)] + (["--explainers", ",".join(explainers)] if explainers else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return shared_jobs().start(jobs.Job(key, command, log, progress, output=out, nice=10, env=env))


def faithfulness_job(run_dir: str) -> jobs.Job | None:
    """The run's latest faithfulness job on this server (any session's), or None."""
    mine = [job for key, job in list(shared_jobs().jobs.items())
            if key.startswith(f"{FAITHFULNESS_JOB}|{run_dir}|")]
    return max(mine, key=lambda job: job.started) if mine else None
