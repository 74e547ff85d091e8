"""2-D projections of embeddings: PCA (instant) and UMAP (cached on disk next to the run)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core import io
from core.run_dir import ARTIFACTS, EMBEDDINGS, coords_file


def pca_2d(emb: np.ndarray) -> np.ndarray:
    x = emb - emb.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:2].T).astype(np.float32)


def umap_2d(emb: np.ndarray, seed: int = 0, n_neighbors: int = 15, progress: bool = False) -> np.ndarray:
    """`progress`: UMAP's own phase log and a tqdm bar (with ETA) over its layout epochs, on stderr/stdout."""
    import umap  # imported lazily: numba JIT costs seconds on first use

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(emb) - 1), min_dist=0.1,
                        metric="cosine", random_state=seed, verbose=progress,
                        tqdm_kwds={"desc": "UMAP layout", "disable": not progress})
    return reducer.fit_transform(emb).astype(np.float32)


def ensure_coords(run_dir: str | Path, method: str = "umap", progress: bool = False, report=None) -> np.ndarray:
    """Coordinates from the run's artifacts; computed once and cached atomically when missing. `report`: a
    progress callback (step, total, message) told when the computation starts and ends (UMAP's own bar
    only reaches the terminal)."""
    art = Path(run_dir) / ARTIFACTS
    path = art / coords_file(method)
    if path.exists():
        return np.load(path)
    emb = np.load(art / EMBEDDINGS)
    phase = f"{method.upper()} layout of {len(emb)} points"
    if report:
        report(0, 1, phase)
    coords = umap_2d(emb, progress=progress) if method == "umap" else pca_2d(emb)
    io.atomic_save_npy(path, coords)
    if report:
        report(1, 1, phase)
    return coords
