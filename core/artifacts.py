"""Artifacts a run ships for the dashboard: test embeddings, labels, the items (items.json and the columnar
items.parquet), 2-D maps, and every item's nearest neighbours with its retrieval scores (core.neighbours).

PCA coordinates and the neighbours are written with the run; UMAP coordinates are computed once by
`core.projection.ensure_coords` (or `python -m core umap RUN_DIR`) and cached in the same folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core import io
from core.evaluate import embed_dataset, score
from core.item_store import items_table, write_store
from core.neighbours import all_neighbours, write_neighbours
from core.projection import pca_2d, save_coords
from core.run_dir import ARTIFACTS, EMBEDDINGS, ITEMS, LABELS, NEIGHBOURS_INFO, coords_file, load_config


def eval_parts(splits) -> list[tuple[str, object]]:
    """The parts scored and explored: the test set, or query + gallery (In-Shop protocol)."""
    if splits.test is not None:
        return [("test", splits.test)]
    return [("query", splits.query), ("gallery", splits.gallery)]


def embed_and_score(model, splits, device="cpu", recall_ks=(1, 2, 4, 8), progress=None):
    """Embed the evaluation parts once; return (metrics, {part: (dataset, emb, labels)})."""
    parts = {name: (ds, *embed_dataset(model, ds, device=device, progress=progress,
                                       label=f"{name}: embedding {len(ds)} images"))
             for name, ds in eval_parts(splits)}
    return score(parts, recall_ks, progress, "test"), parts


def write_artifacts(run_dir: Path, parts: dict, progress=None) -> None:
    """Every part's items as one set (the dashboard explores query and gallery together); `progress` is told
    how the neighbour search goes."""
    out = Path(run_dir) / ARTIFACTS
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for name, (ds, emb, lab) in parts.items():
        items += [{"split": name, "index": i, "path": ds.path(i), "class_name": ds.class_names.get(int(l), str(l))}
                  for i, l in enumerate(lab)]
    emb = np.concatenate([p[1] for p in parts.values()]).astype(np.float32)
    lab = np.concatenate([p[2] for p in parts.values()])
    (out / NEIGHBOURS_INFO).unlink(missing_ok=True)   # the saved neighbours count as absent until rewritten
    io.atomic_save_npy(out / EMBEDDINGS, emb)
    io.atomic_save_npy(out / LABELS, lab)
    save_coords(out, "pca", pca_2d(emb))
    (out / coords_file("umap")).unlink(missing_ok=True)  # stale after new embeddings
    write_neighbours(out, all_neighbours(emb, lab, progress=progress))
    write_store(out, items_table(items, lab))
    io.atomic_write_text(out / ITEMS, json.dumps(items))


def item_images(run_dir: str | Path, data_root: str | None = None):
    """`image(i)` -> item i of the run's items.json as a 3×H×W float array in [0, 1]. A trained (or own-model) run
    reads its data set at the test-time transform (`data_root`: where its data moved); a run imported from
    embeddings reads the file its item names (centre crop; FileNotFoundError when it names none or it is gone)."""
    from core.data import build_datasets
    from core.importer import is_imported, load_image

    cfg = load_config(run_dir)
    items = json.loads((Path(run_dir) / ARTIFACTS / ITEMS).read_text())
    if is_imported(cfg):
        return lambda i: load_image(items[i].get("path"))
    data = build_datasets(cfg.with_overrides([f"data.root={data_root}"]).data if data_root else cfg.data,
                          seed=cfg.train.seed)
    return lambda i: getattr(data, items[i].get("split", "test"))[int(items[i]["index"])][0].numpy()
