"""The four standard deep-metric-learning benchmarks, read from their official on-disk layouts.

`records(name, root)` returns `Record`s carrying the standard split, which is class-disjoint:
  cub200   CUB-200-2011          classes 1-100 train, 101-200 test
  cars196  Stanford Cars         classes 1-98 train, 99-196 test (cars_annos.mat or torchvision layout)
  sop      Stanford Online Prod. Ebay_train.txt train, Ebay_test.txt test
  inshop   DeepFashion In-Shop   train / query / gallery from Eval/list_eval_partition.txt
Download links and layouts: docs/datasets.md ("Real data sets").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.folders import DatasetError, Record, _require_dir

VALID_NAMES = ("shapes", "folder", "csv", "cub200", "cars196", "sop", "inshop")

# Shown in every error, so a user with a wrong root sees what the folder should look like.
LAYOUTS = {
    "cub200": ("CUB_200_2011.tgz", "root/images.txt, root/image_class_labels.txt, root/classes.txt, "
                                   "root/images/<class>/<image>.jpg"),
    "cars196": ("car_ims.tgz + cars_annos.mat (or the torchvision StanfordCars files)",
                "root/cars_annos.mat, root/car_ims/<image>.jpg; or root/devkit/{cars_train_annos,cars_meta}.mat, "
                "root/cars_test_annos_withlabels.mat, root/cars_train/, root/cars_test/"),
    "sop": ("Stanford_Online_Products.zip", "root/Ebay_train.txt, root/Ebay_test.txt, "
                                            "root/<category>_final/<image>.JPG"),
    "inshop": ("DeepFashion In-Shop img.zip + list_eval_partition.txt",
               "root/Eval/list_eval_partition.txt, root/img/<gender>/<category>/<item_id>/<image>.jpg"),
}


def _need(root: Path, rel: str, name: str, is_dir: bool = False) -> Path:
    """`root/rel`, or a DatasetError naming that file, the expected layout and, when the file sits
    one folder deeper (root set to the archive's parent, a common slip), the root to use instead."""
    path = root / rel
    if path.is_dir() if is_dir else path.is_file():
        return path
    source, layout = LAYOUTS[name]
    hint = ""
    deeper = [p for p in root.glob(f"*/{rel}") if (p.is_dir() if is_dir else p.is_file())]
    if deeper:
        hint = f"; found {deeper[0]}, so try data.root={deeper[0].parents[len(Path(rel).parts) - 1]}"
    raise DatasetError(f"{name}: expected {path} (root/{rel}) from {source}{hint}. Expected layout: {layout}; "
                       f"see docs/datasets.md 'Real data sets'")


def _rows(file: Path, name: str, columns: int, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of `file` after `skip` header lines; short rows are a layout error."""
    rows = []
    with open(file) as fh:
        for lineno, line in enumerate(fh, 1):
            if lineno <= skip or not line.strip():
                continue
            parts = line.strip().split(maxsplit=columns - 1)  # the last column may hold spaces
            if len(parts) < columns:
                raise DatasetError(f"{name}: {file} line {lineno} has {len(parts)} fields, expected {columns}: "
                                   f"{line.strip()!r}")
            rows.append(parts)
    if not rows:
        raise DatasetError(f"{name}: {file} lists no images")
    return rows


def _cub200(root: Path) -> list[Record]:
    images = dict(_rows(_need(root, "images.txt", "cub200"), "cub200", 2))
    labels = _rows(_need(root, "image_class_labels.txt", "cub200"), "cub200", 2)
    classes = dict(_rows(_need(root, "classes.txt", "cub200"), "cub200", 2))
    img_dir = _need(root, "images", "cub200", is_dir=True)
    records = []
    for image_id, class_id in labels:
        if image_id not in images or class_id not in classes:
            raise DatasetError(f"cub200: image {image_id} / class {class_id} of image_class_labels.txt is missing "
                               f"from images.txt or classes.txt; re-extract CUB_200_2011.tgz")
        split = "train" if int(class_id) <= 100 else "test"
        records.append(Record(str(img_dir / images[image_id]), classes[class_id], split))
    return records


def _loadmat(path: Path):
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise DatasetError(f"cars196: reading {path.name} needs scipy; pip install scipy") from err
    data = loadmat(str(path), squeeze_me=True)
    if "annotations" in data or "class_names" in data:
        return data
    raise DatasetError(f"cars196: {path} has neither 'annotations' nor 'class_names'; it is not a Stanford Cars "
                       f"annotation file (see docs/datasets.md)")


def _cars196(root: Path) -> list[Record]:
    """The car_ims/ + cars_annos.mat release used by DML papers or, since the Stanford links died and the
    surviving mirrors ship the classification release, torchvision's StanfordCars layout. Both hold the
    same 16,185 images and class ids, so the class split is the same."""
    if (root / "cars_annos.mat").is_file() or not (root / "devkit").is_dir():
        data = _loadmat(_need(root, "cars_annos.mat", "cars196"))
        _need(root, "car_ims", "cars196", is_dir=True)
        parts = [(root / "cars_annos.mat", data, root, "relative_im_path")]  # car_ims/000001.jpg, below root
        names = data.get("class_names")
    else:
        # torchvision keeps the labelled test annotations at root; some copies put them in devkit/
        test_rel = "cars_test_annos_withlabels.mat"
        if not (root / test_rel).is_file() and (root / "devkit" / test_rel).is_file():
            test_rel = f"devkit/{test_rel}"
        train_mat = _need(root, "devkit/cars_train_annos.mat", "cars196")
        test_mat = _need(root, test_rel, "cars196")
        parts = [(train_mat, _loadmat(train_mat), _need(root, "cars_train", "cars196", is_dir=True), "fname"),
                 (test_mat, _loadmat(test_mat), _need(root, "cars_test", "cars196", is_dir=True), "fname")]
        names = _loadmat(_need(root, "devkit/cars_meta.mat", "cars196"))["class_names"]
    # class_names (1-based by class id) makes labels readable; the zero-padded id keeps them unique.
    names = [str(n) for n in np.atleast_1d(names)] if names is not None else []
    records = []
    for mat, data, base, field in parts:
        ann = data.get("annotations")
        if ann is None or field not in (ann.dtype.names or ()) or "class" not in ann.dtype.names:
            raise DatasetError(f"cars196: the annotations in {mat} lack the fields {field!r} and 'class'; "
                               f"expected the official Stanford Cars .mat files (see docs/datasets.md)")
        for rel, cls in zip(np.atleast_1d(ann[field]).ravel(), np.atleast_1d(ann["class"]).ravel()):
            cls = int(cls)
            label = f"{cls:03d}.{names[cls - 1]}" if cls <= len(names) else f"{cls:03d}"
            records.append(Record(str(base / str(rel)), label, "train" if cls <= 98 else "test"))
    if not records:
        raise DatasetError(f"cars196: the annotation files under {root} list no images")
    return records


def _sop(root: Path) -> list[Record]:
    records = []
    for split in ("train", "test"):
        # header: image_id class_id super_class_id path
        for _, class_id, _, rel in _rows(_need(root, f"Ebay_{split}.txt", "sop"), "sop", 4, skip=1):
            records.append(Record(str(root / rel), class_id, split))
    return records


def _inshop(root: Path) -> list[Record]:
    # line 1: image count, line 2: header "image_name item_id evaluation_status"
    rows = _rows(_need(root, "Eval/list_eval_partition.txt", "inshop"), "inshop", 3, skip=2)
    records = []
    for rel, item_id, status in rows:
        if status not in ("train", "query", "gallery"):
            raise DatasetError(f"inshop: evaluation_status {status!r} for {rel} is not train/query/gallery")
        records.append(Record(str(root / rel), item_id, status))
    return records


_READERS = {"cub200": _cub200, "cars196": _cars196, "sop": _sop, "inshop": _inshop}


def records(name: str, root: str | None) -> list[Record]:
    if name not in _READERS:
        raise DatasetError(f"unknown data set {name!r}; valid data.name values: {', '.join(VALID_NAMES)}")
    path = _require_dir(root, name)
    found = _READERS[name](path)
    # Check one image so a root that holds the lists but not the extracted images fails now, not mid-epoch.
    if not Path(found[0].path).is_file():
        source, layout = LAYOUTS[name]
        raise DatasetError(f"{name}: image {found[0].path} listed in the annotations does not exist; extract the "
                           f"images from {source} into {path}. Expected layout: {layout}")
    return found
