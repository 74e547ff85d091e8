"""2-D projections of embeddings: PCA (instant) and UMAP (cached on disk next to the run).

UMAP and determinism: up to UMAP_SEEDED_MAX items UMAP runs seeded, so a run's map is the same every time
(umap-learn then runs single-threaded: a fixed random_state turns its parallelism off). Larger sets are
fitted on a seeded random sample of UMAP_FIT_SAMPLE items and the rest is placed by `transform` in chunks
(with progress), unseeded and on every core: the map of such a run differs slightly between computations
(which items the fit sees does not), and its cost grows with N through `transform` only.
"""
from __future__ import annotations

import io as io_module
import re
import sys
from pathlib import Path

import numpy as np

from core import io
from core.progress import Progress
from core.run_dir import ARTIFACTS, EMBEDDINGS, coords_file, drawn_file

UMAP_SEEDED_MAX = 20_000      # up to here: seeded and exact to the run; above: fitted on a sample, parallel
UMAP_FIT_SAMPLE = 50_000
TRANSFORM_CHUNK = 100_000
PCA_CHUNK = 100_000
MAP_POINTS = 10_000           # a map draws at most this many points, thinned where they overlap (thinned_sample)


def thinned_sample(coords: np.ndarray, max_points: int, grid: int = 256, seed: int = 0) -> np.ndarray:
    """At most `max_points` indices of 2-D points, sorted, thinned where the points overlap: the plot is cut
    into grid × grid cells and each cell keeps at most k of its points (chosen at random, seeded), k as large
    as the budget allows. Sparse regions and outliers keep every point, and a dense blob looks the same
    drawn with a fraction of its points; the grid is made coarser while one point per cell is too many."""
    coords = np.asarray(coords, dtype=np.float64)
    if len(coords) <= max_points:
        return np.arange(len(coords))
    lo, hi = coords.min(0), coords.max(0)
    scaled = (coords - lo) / np.where(hi > lo, hi - lo, 1.0)
    while True:
        cell_xy = np.minimum((scaled * grid).astype(np.int64), grid - 1)
        cell = cell_xy[:, 0] * grid + cell_xy[:, 1]
        counts = np.bincount(cell)
        counts = counts[counts > 0]
        if len(counts) <= max_points or grid <= 2:
            break
        grid //= 2
    low, high = 1, int(counts.max())            # the largest cap k with sum(min(count, k)) <= max_points
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if np.minimum(counts, mid).sum() <= max_points else (low, mid - 1)
    shuffled = np.random.default_rng(seed).permutation(len(coords))
    order = shuffled[np.argsort(cell[shuffled], kind="stable")]      # by cell, shuffled within each
    by_cell = cell[order]
    first = np.flatnonzero(np.r_[True, by_cell[1:] != by_cell[:-1]])
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    return np.sort(order[rank < low])


def save_coords(art_dir: str | Path, method: str, coords: np.ndarray) -> None:
    """A projection's coordinates and, beside them, the points its map draws (`thinned_sample`, decided here once:
    the dashboard's first visit of a big run then reads a few thousand indices instead of thinning every point)."""
    art = Path(art_dir)
    io.atomic_save_npy(art / coords_file(method), coords)
    io.atomic_save_npy(art / drawn_file(method), thinned_sample(coords, MAP_POINTS).astype(np.int64))


def drawn_points(art_dir: str | Path, method: str, coords: np.ndarray) -> np.ndarray:
    """The indices of `coords` (the run's `method` map) that its map draws: saved with the coordinates, or thinned
    now for coordinates saved before that (or when the saved ones are older than the coordinates)."""
    art = Path(art_dir)
    saved, source = art / drawn_file(method), art / coords_file(method)
    try:
        if saved.stat().st_mtime >= source.stat().st_mtime:
            shown = np.load(saved)
            if len(shown) and shown.max() < len(coords):
                return shown
    except (OSError, ValueError):
        pass
    return thinned_sample(coords, MAP_POINTS)




def pca_2d(emb: np.ndarray) -> np.ndarray:
    """The first two principal components, from the D×D covariance accumulated over chunks (float64): the axes
    an SVD of the centred data gives, without an N×D copy or a decomposition of N rows. Each axis is signed so
    its largest loading is positive (an SVD's signs are arbitrary; this keeps a map from flipping). BLAS runs
    on one thread: these products are thin, and a second BLAS thread spinning for a core that other
    processes hold made them several times slower on a shared machine."""
    from threadpoolctl import threadpool_limits

    n, dim = emb.shape
    with threadpool_limits(1, user_api="blas"):
        mean = np.zeros(dim)
        for start in range(0, n, PCA_CHUNK):
            mean += emb[start:start + PCA_CHUNK].sum(0, dtype=np.float64)
        mean /= n
        cov = np.zeros((dim, dim))
        for start in range(0, n, PCA_CHUNK):
            centred = emb[start:start + PCA_CHUNK] - mean
            cov += centred.T @ centred
        _, vectors = np.linalg.eigh(cov)                                   # ascending eigenvalues
        axes = vectors[:, ::-1][:, :2]
        axes *= np.sign(axes[np.abs(axes).argmax(0), [0, 1]])
        out = np.empty((n, 2), np.float32)
        for start in range(0, n, PCA_CHUNK):
            out[start:start + PCA_CHUNK] = (emb[start:start + PCA_CHUNK] - mean) @ axes
    return out


def umap_2d(emb: np.ndarray, seed: int = 0, n_neighbors: int = 15, progress: bool = False,
            report: Progress | None = None) -> np.ndarray:
    """UMAP coordinates (see the module docstring for sampling and determinism). `progress`: UMAP's own phase
    log and a tqdm bar over its layout epochs, on stderr/stdout; `report(step, total, message)`: a progress
    callback (core.progress) told every layout epoch of a fit on every item, or after the fit and after each
    transformed chunk of a large set."""
    import umap  # imported lazily: numba JIT costs seconds on first use

    n = len(emb)
    seeded = n <= UMAP_SEEDED_MAX
    sampled = n > max(UMAP_SEEDED_MAX, UMAP_FIT_SAMPLE)
    bar = {"desc": "UMAP layout", "disable": not (progress or (report is not None and not sampled))}
    if report is not None and not sampled:
        bar["file"] = LayoutEpochs(report, f"UMAP layout of {n} points", sys.stderr if progress else None)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, n - 1), min_dist=0.1, metric="cosine",
                        random_state=seed if seeded else None, n_jobs=1 if seeded else -1, verbose=progress,
                        tqdm_kwds=bar)
    if not sampled:
        return reducer.fit_transform(np.asarray(emb, dtype=np.float32)).astype(np.float32)
    fit = np.sort(np.random.default_rng(seed).choice(n, UMAP_FIT_SAMPLE, replace=False))
    steps = 1 + -(-n // TRANSFORM_CHUNK)
    phase = f"UMAP of {n} points: fit on {len(fit)}, the rest placed by transform"
    if report:
        report(0, steps, phase)
    out = np.empty((n, 2), np.float32)
    out[fit] = reducer.fit_transform(np.asarray(emb[fit], dtype=np.float32))
    rest = np.ones(n, bool)
    rest[fit] = False
    if report:
        report(1, steps, phase)
    for step, start in enumerate(range(0, n, TRANSFORM_CHUNK), 2):
        rows = np.flatnonzero(rest[start:start + TRANSFORM_CHUNK]) + start
        if len(rows):
            out[rows] = reducer.transform(np.asarray(emb[rows], dtype=np.float32))
        if report:
            report(step, steps, phase)
    return out


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
    progress callback (step, total, message) told when the computation starts and ends, and between UMAP's
    chunks on a large set (UMAP's own bar only reaches the terminal)."""
    art = Path(run_dir) / ARTIFACTS
    path = art / coords_file(method)
    if path.exists():
        return np.load(path)
    emb = np.load(art / EMBEDDINGS, mmap_mode="r")
    phase = f"{method.upper()} layout of {len(emb)} points"
    if report:
        report(0, 1, phase)
    coords = umap_2d(emb, progress=progress, report=report) if method == "umap" else pca_2d(emb)
    save_coords(art, method, coords)
    if report:
        report(1, 1, phase)
    return coords
