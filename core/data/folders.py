"""File-based data: any ImageFolder tree (`root/<class>/<image>`) or a CSV (`path,label[,split]`).

Both produce `Record`s; `core.data.build_datasets` turns them into class-disjoint splits.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Record:
    path: str
    label: str            # class name as found on disk / in the CSV
    split: str | None     # train | test | query | gallery | None (split by class)


class DatasetError(ValueError):
    """A data set that cannot be read as configured; the message says what to fix."""


def _require_dir(root: str | None, what: str) -> Path:
    if not root:
        raise DatasetError(f"{what}: data.root is not set; pass data.root=/path/to/dataset")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{what}: data.root {str(path)!r} does not exist or is not a folder; "
                           f"check the path (relative paths are relative to the working directory)")
    return path


def folder_records(root: str | None) -> list[Record]:
    """ImageFolder tree: one sub-folder per class; images at any depth below it."""
    path = _require_dir(root, "folder data")
    records = []
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for img in sorted(class_dir.rglob("*")):
            if img.suffix.lower() in IMAGE_SUFFIXES and img.is_file():
                records.append(Record(str(img), class_dir.name, None))
    if not records:
        raise DatasetError(f"folder data: no images found under {str(path)!r}; expected "
                           f"root/<class>/<image>.jpg (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return records


def csv_records(csv_path: str | None, root: str | None, label_column: str = "label",
                split_column: str = "split") -> list[Record]:
    """CSV with a path column, a label column and an optional split column; relative paths are
    resolved against data.root (or the CSV's folder when root is unset)."""
    if not csv_path:
        raise DatasetError("csv data: data.csv is not set; pass data.csv=/path/to/labels.csv")
    file = Path(csv_path).expanduser()
    if not file.is_file():
        raise DatasetError(f"csv data: {str(file)!r} does not exist")
    base = Path(root).expanduser() if root else file.parent
    with open(file, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if "path" not in columns:
            raise DatasetError(f"csv data: {str(file)!r} has no column 'path' (columns: {', '.join(columns)}); the "
                               "image paths must be in a column named path")
        if label_column not in columns:
            raise DatasetError(f"csv data: {str(file)!r} has no column {label_column!r} (columns: {', '.join(columns)}); "
                               f"set data.csv_label_column (and data.csv_split_column if the split column is not "
                               f"named {split_column!r})")
        has_split = split_column in columns
        if not has_split:
            log.warning("csv data: no column %r in %s: the first half of the sorted classes train, the second half "
                     "test (set data.csv_split_column to use a split column)", split_column, file)
        records = []
        for row in reader:
            path = Path(row["path"])
            split = (row[split_column].strip().lower() or None) if has_split else None
            if split is not None and split not in ("train", "test", "query", "gallery"):
                raise DatasetError(f"csv data: split {split!r} in {str(file)!r} is not train/test/query/gallery")
            records.append(Record(str(path if path.is_absolute() else base / path), row[label_column].strip(), split))
    if not records:
        raise DatasetError(f"csv data: {str(file)!r} lists no images")
    return records
