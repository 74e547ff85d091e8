"""2-D projections of embeddings: PCA (instant) and UMAP (cached on disk next to the run)."""
from __future__ import annotations

import io as io_module
import re
import sys
from pathlib import Path

import numpy as np

from core import io
from core.progress import Progress
from core.run_dir import ARTIFACTS, EMBEDDINGS, coords_file


def pca_2d(emb: np.ndarray) -> np.ndarray:
    x = emb - emb.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:2].T).astype(np.float32)


def umap_2d(emb: np.ndarray, seed: int = 0, n_neighbors: int = 15, progress: bool = False,
            report: Progress | None = None) -> np.ndarray:
    """`progress`: UMAP's own phase log and a tqdm bar (with ETA) over its layout epochs, on stderr/stdout.
    `report`: a progress callback (core.progress) told every layout epoch, e.g. a ProgressLog."""
    import umap  # imported lazily: numba JIT costs seconds on first use

    bar = {"desc": "UMAP layout", "disable": not (progress or report)}
    if report is not None:
        bar["file"] = LayoutEpochs(report, f"UMAP layout of {len(emb)} points", sys.stderr if progress else None)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(emb) - 1), min_dist=0.1,
                        metric="cosine", random_state=seed, verbose=progress, tqdm_kwds=bar)
    return reducer.fit_transform(emb).astype(np.float32)


class LayoutEpochs(io_module.TextIOBase):
    """The stream UMAP's tqdm bar writes to: each drawing tells `report` the epochs done ("205/500 [" in the
    bar), and is passed on to `echo` (the terminal) when there is one. UMAP takes no callback, only tqdm's
    arguments, so the bar is where its layout's progress can be read."""

    DONE = re.compile(r"(\d+)/(\d+) \[")

    def __init__(self, report: Progress, phase: str, echo=None):
        self.report, self.phase, self.echo = report, phase, echo

    def write(self, text: str) -> int:
        found = self.DONE.findall(text)
        if found:
            done, total = found[-1]
            self.report(int(done), int(total), self.phase)
        if self.echo is not None:
            self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()


def ensure_coords(run_dir: str | Path, method: str = "umap", progress: bool = False, report=None) -> np.ndarray:
    """Coordinates from the run's artifacts; computed once and cached atomically when missing. `report`: a
    progress callback (step, total, message) told when the computation starts and ends, and UMAP's layout
    epochs in between."""
    art = Path(run_dir) / ARTIFACTS
    path = art / coords_file(method)
    if path.exists():
        return np.load(path)
    emb = np.load(art / EMBEDDINGS)
    phase = f"{method.upper()} layout of {len(emb)} points"
    if report:
        report(0, 1, phase)
    coords = umap_2d(emb, progress=progress, report=report) if method == "umap" else pca_2d(emb)
    io.atomic_save_npy(path, coords)
    if report:
        report(1, 1, phase)
    return coords
