"""Artifacts a run ships for the dashboard: test embeddings, labels, image references, 2-D maps.

PCA coordinates are written with the run (instant); UMAP coordinates are computed once by
`core.projection.ensure_coords` and cached in the same folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core import checkpoint as ckpt
from core.evaluate import embed_dataset


def write_artifacts(run_dir: Path, model, splits, device="cpu") -> None:
    from core.projection import pca_2d

    out = Path(run_dir) / ckpt.ARTIFACTS
    out.mkdir(parents=True, exist_ok=True)
    datasets = [("test", splits.test)] if splits.test is not None else [("query", splits.query), ("gallery", splits.gallery)]
    embs, labels, refs = [], [], []
    for part, ds in datasets:
        e, l = embed_dataset(model, ds, device=device)
        embs.append(e); labels.append(l)
        refs += [{"split": part, "index": i, "path": ds.path(i), "class_name": ds.class_names.get(int(l[i]), str(l[i]))}
                 for i in range(len(ds))]
    emb, lab = np.concatenate(embs).astype(np.float32), np.concatenate(labels)
    ckpt.atomic_save_npy(out / "embeddings.npy", emb)
    ckpt.atomic_save_npy(out / "labels.npy", lab)
    ckpt.atomic_save_npy(out / "coords_pca.npy", pca_2d(emb))
    ckpt.atomic_write_text(out / "items.json", json.dumps(refs))
