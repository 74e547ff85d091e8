"""Official data set layouts (CUB-200-2011, Cars196, SOP, In-Shop) and the generic folder / csv paths,
each on a tiny fake tree written in exactly the on-disk layout the real download has."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import DataConfig
from core.data import build_datasets
from core.data.folders import DatasetError

TRAIN, TEST = 4, 4  # classes in each half of every fake data set


def _img(path, seed):
    """A small real image (odd size, so the resize to 32x32 is exercised); format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def _per_class(c):
    return 2 + c % 2  # 2 or 3 images per class


# ---- fake trees: each returns {image path: (label, split)} --------------------------------------------

def make_cub(root):
    class_ids = list(range(1, TRAIN + 1)) + list(range(101, 101 + TEST))
    classes, images, labels, expected = [], [], [], {}
    for c in range(1, 201):  # classes.txt lists all 200 classes, as in the real file
        classes.append(f"{c} {c:03d}.Bird_{c}")
    image_id = 0
    for c in class_ids:
        folder = f"{c:03d}.Bird_{c}"
        for k in range(_per_class(c)):
            image_id += 1
            rel = f"{folder}/Bird_{c}_{k:04d}_{image_id}.jpg"
            path = _img(root / "images" / rel, image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            expected[path] = (folder, "train" if c <= 100 else "test")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return expected


def make_cars(root):
    from scipy.io import savemat
    class_ids = list(range(1, TRAIN + 1)) + list(range(99, 99 + TEST))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows, expected = [], {}
    for c in class_ids:
        for k in range(_per_class(c)):
            rel = f"car_ims/{len(rows) + 1:06d}.jpg"
            path = _img(root / rel, len(rows))
            u8 = lambda v: np.array([[v]], np.uint8)  # noqa: E731 - scalars are 1x1 matrices in the .mat
            rows.append((rel, u8(1), u8(2), u8(30), u8(35), u8(c), u8(k % 2)))
            expected[path] = (f"{c:03d}.Make Model {c}", "train" if c <= 98 else "test")
    # Same structure as the official file: a 1xN struct array `annotations` and a 1x196 cell `class_names`.
    annotations = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        annotations[0, i] = row
    class_names = np.empty((1, 196), dtype=object)
    class_names[0, :] = [f"Make Model {c}" for c in range(1, 197)]
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return expected


def make_cars_torchvision(root):
    """The layout torchvision.datasets.StanfordCars reads (what the surviving mirrors ship)."""
    from scipy.io import savemat
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    expected = {}
    for folder, mat, class_ids in (("cars_train", "devkit/cars_train_annos.mat", range(1, TRAIN + 1)),
                                   ("cars_test", "cars_test_annos_withlabels.mat", range(99, 99 + TEST))):
        rows = []
        for c in class_ids:
            for k in range(_per_class(c)):
                fname = f"{len(rows) + 1:05d}.jpg"  # numbering restarts in each folder, as in the real files
                path = _img(root / folder / fname, c * 10 + k)
                rows.append((np.array([[1]], np.uint8), np.array([[2]], np.uint8), np.array([[30]], np.uint8),
                             np.array([[35]], np.uint8), np.array([[c]], np.uint8), fname))
                expected[path] = (f"{c:03d}.Make Model {c}", "train" if c <= 98 else "test")
        annotations = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
        for i, row in enumerate(rows):
            annotations[0, i] = row
        (root / mat).parent.mkdir(parents=True, exist_ok=True)
        savemat(root / mat, {"annotations": annotations})
    class_names = np.empty((1, 196), dtype=object)
    class_names[0, :] = [f"Make Model {c}" for c in range(1, 197)]
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": class_names})
    return expected


def make_sop(root):
    expected = {}
    for split, first in (("train", 1), ("test", 11319)):  # the real test classes start at 11319
        lines, image_id = ["image_id class_id super_class_id path"], 0
        for c in range(first, first + (TRAIN if split == "train" else TEST)):
            for k in range(_per_class(c)):
                image_id += 1
                rel = f"bicycle_final/{c}_{k}.JPG"
                path = _img(root / rel, c * 10 + k)
                lines.append(f"{image_id} {c} 1 {rel}")
                expected[path] = (str(c), split)
        (root / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return expected


def make_inshop(root):
    rows, expected = [], {}
    for item in range(1, TRAIN + TEST + 1):
        item_id = f"id_{item:08d}"
        for k in range(_per_class(item) + (1 if item > TRAIN else 0)):
            rel = f"img/WOMEN/Dresses/{item_id}/{k:02d}_1_front.jpg"
            path = _img(root / rel, item * 10 + k)
            # train items are whole; a test item's first image is the query, the rest the gallery
            status = "train" if item <= TRAIN else ("query" if k == 0 else "gallery")
            rows.append(f"{rel}            {item_id}   {status}")  # the real file pads with spaces
            expected[path] = (item_id, status)
    (root / "Eval").mkdir()
    (root / "Eval" / "list_eval_partition.txt").write_text(
        f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return expected


MAKERS = {"cub200": make_cub, "cars196": make_cars, "sop": make_sop, "inshop": make_inshop}
LAYOUTS = dict(MAKERS, cars196_torchvision=make_cars_torchvision)
MISSING = {"cub200": "images.txt", "cars196": "cars_annos.mat", "sop": "Ebay_train.txt",
           "inshop": "Eval/list_eval_partition.txt"}


def _cfg(name, root, **kw):
    return DataConfig(name=name, root=str(root), val_classes=kw.pop("val_classes", 0), image_size=32, **kw)


def _parts(splits):
    return {k: getattr(splits, k) for k in ("train", "val", "test", "query", "gallery") if getattr(splits, k)}


def _class_names(ds):
    return {ds.class_names[int(l)] for l in ds.labels}


def _check_item(ds):
    image, label, index = ds[0]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (3, 32, 32)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert label == int(ds.labels[index])


# ---- the four official layouts ----------------------------------------------------------------------

@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_official_layout(layout, tmp_path):
    name = layout.split("_")[0]
    expected = LAYOUTS[layout](tmp_path)
    splits = build_datasets(_cfg(name, tmp_path))
    parts = _parts(splits)

    # every image lands in its official split with its official label
    seen = {}
    for split, ds in parts.items():
        for i in range(len(ds)):
            seen[ds.path(i)] = (ds.class_names[int(ds.labels[i])], split)
    assert seen == expected

    if name == "inshop":
        assert set(parts) == {"train", "query", "gallery"} and splits.test is None
        assert _class_names(splits.query) == _class_names(splits.gallery)  # same items, other images
        held_out = _class_names(splits.query)
    else:
        assert set(parts) == {"train", "test"} and splits.query is None and splits.gallery is None
        held_out = _class_names(splits.test)
    assert len(_class_names(splits.train)) == TRAIN and len(held_out) == TEST
    assert not _class_names(splits.train) & held_out  # class-disjoint
    assert splits.num_train_classes == TRAIN
    for ds in parts.values():
        _check_item(ds)


@pytest.mark.parametrize("name", list(MAKERS))
def test_wrong_root_names_missing_file(name, tmp_path):
    with pytest.raises(DatasetError) as err:
        build_datasets(_cfg(name, tmp_path))
    assert MISSING[name] in str(err.value) and str(tmp_path) in str(err.value)
    assert "docs/datasets.md" in str(err.value)


@pytest.mark.parametrize("name", list(MAKERS))
def test_root_one_level_too_high_suggests_the_right_root(name, tmp_path):
    MAKERS[name](tmp_path / "extracted")
    with pytest.raises(DatasetError, match=f"data.root={tmp_path / 'extracted'}"):
        build_datasets(_cfg(name, tmp_path))


def test_lists_without_extracted_images(tmp_path):
    make_cub(tmp_path)
    for img in (tmp_path / "images").rglob("*.jpg"):
        img.unlink()
    with pytest.raises(DatasetError, match="does not exist; extract the images"):
        build_datasets(_cfg("cub200", tmp_path))


def test_unset_root_and_unknown_name(tmp_path):
    with pytest.raises(DatasetError, match="data.root is not set"):
        build_datasets(DataConfig(name="cub200", root=None))
    with pytest.raises(DatasetError) as err:
        build_datasets(_cfg("cub2011", tmp_path))
    for valid in ("shapes", "folder", "csv", "cub200", "cars196", "sop", "inshop"):
        assert valid in str(err.value)


def test_cars_torchvision_layout_names_missing_file(tmp_path):
    make_cars_torchvision(tmp_path)
    (tmp_path / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DatasetError, match="cars_test_annos_withlabels.mat"):
        build_datasets(_cfg("cars196", tmp_path))


def test_cars_without_scipy(tmp_path, monkeypatch):
    make_cars(tmp_path)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `from scipy.io import ...` fail
    with pytest.raises(DatasetError, match="pip install scipy"):
        build_datasets(_cfg("cars196", tmp_path))


def test_corrupt_image_is_skipped_with_warning(tmp_path, caplog):
    expected = make_cub(tmp_path)
    bad = next(p for p, (_, split) in expected.items() if split == "test")
    with open(bad, "wb") as fh:
        fh.write(b"this is not a jpeg" * 10)
    splits = build_datasets(_cfg("cub200", tmp_path))
    with caplog.at_level(logging.WARNING, logger="core.data"):
        for ds in _parts(splits).values():
            for i in range(len(ds)):
                image, _, _ = ds[i]
                assert tuple(image.shape) == (3, 32, 32)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(bad in m for m in warnings)
    assert splits.test.bad == {splits.test.paths.index(bad)}


def test_unreadable_test_image_is_left_out_of_the_metrics(tmp_path, caplog):
    """Its stand-in is another test image of its class, whose copy would be a perfect match: scoring it
    would inflate R@1. The metrics are those of the readable items only."""
    from core.config import ModelConfig
    from core.evaluate import all_metrics, embed_dataset, evaluate_splits, score
    from core.models.embedder import build_model

    expected = make_cub(tmp_path)
    bad = next(p for p, (_, split) in expected.items() if split == "test")
    Path(bad).write_bytes(b"this is not a jpeg" * 10)
    splits = build_datasets(_cfg("cub200", tmp_path))
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="convnet", embed_dim=16), num_classes=4).eval()
    emb, lab = embed_dataset(model, splits.test)
    position = splits.test.paths.index(bad)
    with caplog.at_level(logging.WARNING, logger="core.evaluate"):
        metrics = score({"test": (splits.test, emb, lab)})
    keep = np.arange(len(lab)) != position
    assert metrics == all_metrics(emb[keep], lab[keep])
    assert any("left out of the metrics" in r.getMessage() and bad in r.getMessage() for r in caplog.records)
    assert evaluate_splits(model, splits) == metrics  # the public entry point leaves it out too


# ---- generic folder (ImageFolder) and csv -----------------------------------------------------------

def make_folder(root, n_classes=8):
    expected = {}
    for c in range(n_classes):
        for k in range(_per_class(c)):
            expected[_img(root / f"class_{c}" / f"{k}.png", c * 10 + k)] = f"class_{c}"
    return expected


def _check_generic(splits, expected, val):
    names = sorted(set(expected.values()))
    first_half, second_half = set(names[:len(names) // 2]), set(names[len(names) // 2:])
    parts = _parts(splits)
    assert set(parts) == ({"train", "val", "test"} if val else {"train", "test"})
    assert _class_names(splits.test) == second_half
    if val:
        assert len(_class_names(splits.val)) == 2
        assert _class_names(splits.val) < first_half  # carved out of the train classes
        assert not _class_names(splits.val) & _class_names(splits.train)
        assert _class_names(splits.val) | _class_names(splits.train) == first_half
    else:
        assert _class_names(splits.train) == first_half
    assert sum(len(ds) for ds in parts.values()) == len(expected)
    for ds in parts.values():
        for i in range(len(ds)):
            assert ds.class_names[int(ds.labels[i])] == expected[ds.path(i)]
        _check_item(ds)


@pytest.mark.parametrize("val", [0, 0.5])
def test_folder(tmp_path, val):
    expected = make_folder(tmp_path)
    _check_generic(build_datasets(_cfg("folder", tmp_path, val_classes=val)), expected, val)


@pytest.mark.parametrize("val", [0, 0.5])
def test_csv(tmp_path, val):
    images = tmp_path / "images"
    expected = make_folder(images)
    lines = ["path,label"] + [f"{p[len(str(images)) + 1:]},{label}" for p, label in expected.items()]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    cfg = _cfg("csv", images, val_classes=val, csv=str(tmp_path / "labels.csv"))
    _check_generic(build_datasets(cfg), expected, val)
