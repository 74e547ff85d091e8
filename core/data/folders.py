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


def folder_records(root: str | None, class_depth: int | None = None) -> list[Record]:
    """ImageFolder tree. The class of an image is the folder `class_depth` levels below the root
    (`root/<class>/img`: 1; `root/<alphabet>/<character>/img`: 2), named by its path from the root
    ("Greek/character01", so equal leaf names in different groups stay apart); images deeper below
    a class folder belong to it. `class_depth` None detects the level: the folders that hold the
    images when every image sits at the same depth, else the top-level folders (with a warning)."""
    path = _require_dir(root, "folder data")
    images = [p.relative_to(path) for p in sorted(path.rglob("*"))
              if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
              and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    loose = [p for p in images if len(p.parts) == 1]
    if loose:
        log.warning("folder data: %d image(s) directly in %s are not in a class folder and are ignored, e.g. %s",
                    len(loose), path, loose[0])
    images = [p for p in images if len(p.parts) > 1]
    if not images:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())[:10]
        raise DatasetError(f"folder data: no images found in class folders under {str(path)!r}; expected "
                           f"root/<class>/<image>.jpg (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}); found there: "
                           f"{', '.join(found) or 'nothing'}")
    depths = sorted({len(p.parts) - 1 for p in images})  # folder levels above each image
    if class_depth is None:
        class_depth = depths[0] if len(depths) == 1 else 1
        if len(depths) > 1:
            log.warning("folder data: images sit at different folder depths (%s) under %s, so each top-level folder "
                        "is one class; set data.class_depth to choose the class level",
                        ", ".join(map(str, depths)), path)
    elif class_depth < 1 or class_depth > depths[-1]:
        raise DatasetError(f"folder data: data.class_depth={class_depth} but the images under {str(path)!r} sit "
                           f"{', '.join(map(str, depths))} folder level(s) deep; use 1..{depths[-1]}")
    too_shallow = [p for p in images if len(p.parts) - 1 < class_depth]
    if too_shallow:
        log.warning("folder data: %d image(s) are above the class level %d and are ignored, e.g. %s",
                    len(too_shallow), class_depth, too_shallow[0])
    records = [Record(str(path / p), "/".join(p.parts[:class_depth]), None)
               for p in images if len(p.parts) - 1 >= class_depth]
    if not records:
        raise DatasetError(f"folder data: no image is at least {class_depth} folder level(s) below {str(path)!r}")
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
