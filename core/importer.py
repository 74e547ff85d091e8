"""Your own embeddings as a run: `python -m core import --embeddings emb.npy --labels labels.csv --out DIR`.

The run directory has the usual artifacts (embeddings.npy, labels.npy, items.json and items.parquet,
coords_pca.npy, optionally coords_own.npy, and every item's neighbours and retrieval scores: core.neighbours) and
metrics.json, but no weights: config.json names data "imported" and model "none", and
metrics.json says `"model": null`. The dashboard's pages that need no model (Explore, Retrieval by item, Compare)
read it like any run; the others say that it has no model (`NoModelError`).

Large imports: above core.neighbours.EXACT_MAX_ITEMS items the metrics are estimated on a
sample of queries (with standard errors, metrics.json's "evaluation" says how) and the neighbours come from an
IVF index (its recall@10 in "neighbours"); NMI's k-means trains on a sample (core.evaluate.kmeans_points).

Inputs are checked before anything is written (shapes, rows, NaN, labels, paths) and the run is written into
a temporary folder moved into place at the end, so a failed import leaves nothing half-written behind.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from core import checkpoint as ckpt
from core import io
from core import run_dir as rd
from core.run_dir import NoModelError  # noqa: F401  (re-exported: the dashboard catches it from here)

IMPORTED = "imported"        # config.json's data.name (and model.head) of an imported run
# items.json keys every run's items have; a CSV column of the same name would be ambiguous
RESERVED = ("split", "index", "class_name")
THUMB_SIDE = 128             # images of an imported run are shown centre-cropped to this square


class ImportRunError(ValueError):
    """Input that cannot become a run; the message says what is wrong and how to fix it."""


def no_model_message(run_dir: str | Path, what: str = "this page") -> str:
    """Why a run opens as embeddings only: imported from embeddings, or (teaching mode) its model is user code."""
    try:
        spec = ckpt.load_config(run_dir).model.user_model
    except ckpt.CheckpointError:
        spec = None
    needs = "(attention maps, attributions, cross-image maps and uploaded queries all need the network)"
    if spec:
        return (f"Run {Path(run_dir).name!r} is a researcher's own model ({spec.get('factory') or spec.get('arch')}); "
                f"teaching mode never imports code from a run, so {what} cannot work on it here {needs}. Explore, "
                f"Retrieval by item and Compare use its embeddings; on the host's own dashboard (full mode) every "
                f"page explains it.")
    return (f"Run {Path(run_dir).name!r} was imported from embeddings; it has no model, so {what} cannot work "
            f"on it {needs}. Explore, Retrieval by item and Compare use its embeddings.")


def is_imported(cfg) -> bool:
    return cfg.data.name == IMPORTED


# ---- reading and checking the inputs ----------------------------------------------------------
def read_array(path: str | Path, what: str, shape_ok, expected: str, fix: str) -> np.ndarray:
    """A .npy array of finite numbers, as float32, checked in the order one fixes it: the file exists, is a
    .npy, holds numbers, `shape_ok(shape)` (else "expected {expected}"), and has no NaN/inf row (else `fix`)."""
    path = Path(path)
    if not path.is_file():
        raise ImportRunError(f"{what} file {path} does not exist; give the .npy written by np.save(path, array)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ImportRunError(f"{path} is not a NumPy .npy array ({err}); save your {what} with "
                             f"np.save('{path.name}', array)") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise ImportRunError(f"{path} holds {getattr(array, 'dtype', type(array))!s} values, not numbers; save a "
                             f"float array (e.g. array.astype('float32'))")
    if not shape_ok(array.shape):
        raise ImportRunError(f"{path} has shape {array.shape}; expected {expected}")
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ImportRunError(f"{path} has NaN or infinite values in {len(rows)} rows (first: row {rows[0]}); {fix}")
    return array.astype(np.float32, copy=False)


def read_embeddings(path: str | Path) -> np.ndarray:
    emb = read_array(path, "embeddings", lambda shape: len(shape) == 2 and min(shape) >= 2,
                     "N×D with one row per item (N ≥ 2, D ≥ 2). Reshape it, e.g. embeddings.reshape(len(embeddings), -1)",
                     "drop or recompute those rows, and the matching rows of the labels CSV")
    norms = np.linalg.norm(emb, axis=1)
    if (norms == 0).any():
        raise ImportRunError(f"{path} row {int(np.flatnonzero(norms == 0)[0])} is all zeros, which has no direction "
                             f"for cosine similarity; drop it (and its CSV row)")
    emb /= norms[:, None].astype(np.float32)  # the dashboard compares by cosine: unit rows, as trained runs store them
    return emb


def read_table(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise ImportRunError(f"labels file {path} does not exist; give a CSV with a header row and one row per "
                             f"embedding row")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ImportRunError(f"{path} is not a readable UTF-8 CSV ({err})") from None
    if not rows:
        raise ImportRunError(f"{path} has no data rows under its header")
    return rows


def read_coords(path: str | Path, n: int) -> np.ndarray:
    return read_array(path, "coordinates", lambda shape: shape == (n, 2), f"{n}×2 numbers (x, y of each embedding row)",
                      "give every row finite x, y (or leave out --coords)")


def build_items(rows: list[dict], labels_path: Path, label_column: str, path_column: str | None,
                image_root: str | Path | None) -> tuple[np.ndarray, list[dict], int]:
    """(label ids, items, images found). Integer labels keep their values; others are numbered in sorted order."""
    columns = list(rows[0])
    path_column = path_column or ("path" if "path" in columns else None)  # a column named path is one
    if label_column not in columns:
        raise ImportRunError(f"{labels_path} has no column {label_column!r} (columns: {', '.join(columns)}); "
                             f"name the label column with --label-column")
    if path_column and path_column not in columns:
        raise ImportRunError(f"{labels_path} has no column {path_column!r} for image paths (columns: "
                             f"{', '.join(columns)}); name it with --path-column, or leave it out")
    clash = [c for c in columns if c in RESERVED and c != label_column]
    if clash:
        raise ImportRunError(f"{labels_path} has column(s) {', '.join(clash)}, which name fields every run has; "
                             f"rename them in the CSV")
    names = [(row.get(label_column) or "").strip() for row in rows]
    empty = [i for i, name in enumerate(names) if not name]
    if empty:
        raise ImportRunError(f"{labels_path} data row {empty[0] + 1} (line {empty[0] + 2} of the file) has an empty "
                             f"{label_column!r}; every item needs a label ({len(empty)} row(s) lack one)")
    if all(name.lstrip("-").isdigit() for name in names):
        labels = np.asarray([int(name) for name in names], dtype=np.int64)
    else:
        labels = np.searchsorted(np.asarray(sorted(set(names))), np.asarray(names)).astype(np.int64)
    root = Path(image_root) if image_root else labels_path.parent
    items, found = [], 0
    for i, (row, name) in enumerate(zip(rows, names)):
        item = {k: v for k, v in row.items() if k not in (label_column, path_column) and k is not None}
        item.update(split="test", index=i, class_name=name, path=None)
        if path_column and (row.get(path_column) or "").strip():
            image = Path(row[path_column].strip()).expanduser()
            image = image if image.is_absolute() else (root / image)
            item["path"] = str(image.resolve())
            found += image.is_file()
        items.append(item)
    return labels, items, found


def check_images(items: list[dict], found: int, root: Path, allow_missing: bool, log=print) -> None:
    """Refuse image paths that do not exist: all of them always (a wrong root, almost surely), some of them unless
    `allow_missing` (then warn with the count)."""
    with_paths = sum(it["path"] is not None for it in items)
    missing = with_paths - found
    if not missing:
        return
    first = next(it["path"] for it in items if it["path"] and not Path(it["path"]).is_file())
    where = f"relative paths are read from {root} (set --image-root to the folder they start from)"
    if not found:
        raise ImportRunError(f"none of the {with_paths} image paths exists (e.g. {first}); {where}. To import without "
                             f"images, leave the path column out (a column named 'path' is read as one: rename it)")
    if not allow_missing:
        raise ImportRunError(f"{missing} of the {with_paths} image paths do not exist (e.g. {first}); {where}, or pass "
                             f"--allow-missing to import anyway (those items then show no image)")
    log(f"warning: {missing} of {with_paths} image paths do not exist (e.g. {first}); those items show no image")


# ---- writing the run --------------------------------------------------------------------------
def import_run(embeddings: str | Path, labels_csv: str | Path, out: str | Path, label_column: str = "label",
               path_column: str | None = None, coords: str | Path | None = None, image_root: str | Path | None = None,
               umap: bool = False, overwrite: bool = False, name: str | None = None, allow_missing: bool = False,
               log=print) -> dict:
    """Check the inputs, then write a run directory at `out` (all at once). Returns its metrics.json.
    `allow_missing`: accept image paths that do not exist (those items show no image) while some do exist."""
    from core.config import RunConfig
    from core.item_store import items_table, write_store
    from core.neighbours import write_neighbours
    from core.projection import pca_2d, save_coords, umap_2d

    out, labels_csv = Path(out), Path(labels_csv)
    if out.exists() and not overwrite:
        raise ImportRunError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    emb = read_embeddings(embeddings)
    rows = read_table(labels_csv)
    if len(rows) != len(emb):
        raise ImportRunError(f"{embeddings} has {len(emb)} rows but {labels_csv} has {len(rows)} data rows; row i "
                             f"of the CSV must describe row i of the array (same order, same count)")
    labels, items, found = build_items(rows, labels_csv, label_column, path_column, image_root)
    del rows   # a million CSV rows as dicts: memory the rest of the import needs
    _, counts = np.unique(labels, return_counts=True)
    if counts.max() < 2:
        raise ImportRunError(f"every label in {labels_csv} occurs once, so no item has a same-class neighbour and "
                             f"retrieval metrics are undefined; give a label column shared by several items")
    own = read_coords(coords, len(emb)) if coords else None
    check_images(items, found, Path(image_root) if image_root else labels_csv.parent, allow_missing, log)

    report = progress_log(log)
    metrics, neighbours, evaluation = score_items(emb, labels, report)
    cfg = RunConfig()
    cfg.name = name or out.name
    cfg.data.name, cfg.data.root = IMPORTED, str(Path(image_root).resolve()) if image_root else None
    cfg.model.backbone, cfg.model.head, cfg.model.embed_dim, cfg.model.pretrained = "none", IMPORTED, emb.shape[1], False
    cfg.description = (f"imported from {Path(embeddings).name} + {labels_csv.name} ({len(emb)} items × "
                       f"{emb.shape[1]} dims, {len(counts)} classes); no model")
    info = {"embeddings": str(Path(embeddings).resolve()), "labels": str(labels_csv.resolve()), "items": len(emb),
            "dims": int(emb.shape[1]), "classes": int(len(counts)), "images": found,
            "coords": "own" if own is not None else None}
    record = {"test": metrics, "model": None, "imported": info, "best_epoch": None, "neighbours": neighbours.info}
    if evaluation:
        record["evaluation"] = evaluation

    with io.atomic_dir(out, overwrite=True) as tmp:  # --overwrite: the old run goes only once the new one is complete
        art = tmp / rd.ARTIFACTS
        art.mkdir()
        np.save(art / rd.EMBEDDINGS, emb)
        np.save(art / rd.LABELS, labels)
        report(0, 1, "writing the run: PCA map, items, neighbours")
        save_coords(art, "pca", pca_2d(emb))
        if own is not None:
            save_coords(art, "own", own)
        write_neighbours(art, neighbours)
        write_store(art, items_table(items))
        (art / rd.ITEMS).write_text(json.dumps(items))   # what the dashboard reads until it reads items.parquet
        if umap:
            save_coords(art, "umap", umap_2d(emb, progress=True, report=report))
        (tmp / rd.CONFIG).write_text(cfg.to_json())
        io.write_json(tmp / rd.METRICS, record)
    return record


def score_items(emb: np.ndarray, labels: np.ndarray, report=None) -> tuple[dict, object, dict | None]:
    """(metrics, every item's neighbours (core.neighbours.Neighbours), how the metrics were estimated or None).
    One search serves both while it is exact; above that the metrics come from a sample of exact queries."""
    from core.evaluate import evaluation_note, nmi, retrieval_metrics, summarise
    from core.neighbours import all_neighbours

    neighbours = all_neighbours(emb, labels, progress=report)
    if neighbours.info["exact"]:
        metrics = summarise(neighbours.scores)
    else:
        if report:
            report(0, 1, "metrics: exact search for a sample of queries")
        metrics = retrieval_metrics(emb, labels)
    if report:
        report(0, 1, "metrics: k-means for NMI")
    metrics["nmi"] = nmi(emb, labels)
    return metrics, neighbours, evaluation_note(len(emb), len(np.unique(labels)), emb.shape[1])


def progress_log(log, every: float = 0.1):
    """A progress(step, total, message) callback that logs each new phase and every `every` of its steps,
    with the seconds since the import started."""
    start, last = time.perf_counter(), {"message": None, "share": -1.0}

    def report(step: int, total: int, message: str) -> None:
        share = step / max(total, 1)
        if message != last["message"] or share >= last["share"] + every or step == total:
            log(f"import: {message} {step}/{total} ({time.perf_counter() - start:.0f} s)")
            last.update(message=message, share=share)
    return report


def load_image(path: str | None, side: int = THUMB_SIDE) -> np.ndarray:
    """An imported item's image as 3×side×side floats in [0, 1] (centre crop); FileNotFoundError when absent."""
    from PIL import Image, ImageOps

    if not path:
        raise FileNotFoundError("this item has no image path")
    with Image.open(path) as img:
        square = ImageOps.fit(img.convert("RGB"), (side, side))
    return (np.asarray(square, dtype=np.float32) / 255.0).transpose(2, 0, 1)
