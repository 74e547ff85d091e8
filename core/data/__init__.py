"""Data sets: `build_datasets(DataConfig)` -> class-disjoint train / val / test (or query+gallery).

Every dataset item is `(image, label, index)`: image a float tensor in [0, 1] (the model owns
its normalisation), label an int, index the item's position so annotations (shapes masks) and
file paths stay reachable: `dataset.annotation(index)`, `dataset.path(index)`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from core.config import DataConfig
from core.data import official  # CUB-200-2011, Cars196, SOP, In-Shop layouts
from core.data import shapes as shapes_data
from core.data.folders import DatasetError, Record, csv_records, folder_records

log = logging.getLogger(__name__)


def build_transform(cfg: DataConfig, train: bool):
    size = cfg.image_size
    to_float = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    if train and cfg.augment:
        return T.Compose(to_float + [T.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
                                     T.RandomHorizontalFlip()])
    if cfg.resize and cfg.resize != size:
        return T.Compose(to_float + [T.Resize(cfg.resize, antialias=True), T.CenterCrop(size)])
    return T.Compose(to_float + [T.Resize((size, size), antialias=True)])


class LabelledDataset(Dataset):
    labels: np.ndarray               # N int64 labels, contiguous ids
    class_names: dict[int, str]

    def annotation(self, index: int) -> dict:
        return {"class_name": self.class_names.get(int(self.labels[index]), str(self.labels[index]))}

    def path(self, index: int) -> str | None:
        return None

    def raw_image(self, index: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self):
        return len(self.labels)


class ShapesDataset(LabelledDataset):
    def __init__(self, data: shapes_data.ShapesData, indices: np.ndarray, transform):
        self.data, self.indices, self.transform = data, indices, transform
        self.labels = data.labels[indices]
        self.class_names = {int(l): data.annotation(int(i))["class_name"] for i, l in zip(indices, self.labels)}

    def raw_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.data.images[self.indices[index]])

    def annotation(self, index: int) -> dict:
        return self.data.annotation(int(self.indices[index]))

    def __getitem__(self, index):
        return self.transform(self.raw_image(index)), int(self.labels[index]), index


class ImageListDataset(LabelledDataset):
    """Images read from disk. A missing, corrupt or truncated file is reported with its path (once per
    loader process) and replaced by the next readable image of the same class, so an epoch never
    crashes; evaluation leaves such items out of the metrics (`core.evaluate.readable`)."""

    def __init__(self, paths: list[str], labels: np.ndarray, class_names: dict[int, str], transform):
        self.paths = [str(p) for p in paths]  # plain str: numpy strings print as np.str_('...') in messages
        self.labels, self.class_names, self.transform = labels, class_names, transform
        self.bad: set[int] = set()
        self._same_class = {int(l): np.flatnonzero(labels == l) for l in np.unique(labels)}

    def path(self, index: int) -> str:
        return self.paths[index]

    def raw_image(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as img:
            return img.convert("RGB")  # forces a full decode, so truncation is caught here

    def __getitem__(self, index):
        candidates = self._same_class[int(self.labels[index])]
        start = int(np.searchsorted(candidates, index))
        for offset in range(len(candidates)):
            i = int(candidates[(start + offset) % len(candidates)])
            if i in self.bad:
                continue
            try:
                return self.transform(self.raw_image(i)), int(self.labels[index]), i
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
                self.bad.add(i)
                log.warning("unreadable image %s (%s: %s): replaced by another image of its class", self.paths[i],
                            type(err).__name__, err)
        raise DatasetError(f"no readable image left in class {self.class_names.get(int(self.labels[index]))!r}; "
                           f"first path: {self.paths[index]}")


@dataclass
class DataSplits:
    train: LabelledDataset
    val: LabelledDataset | None
    test: LabelledDataset | None            # every test image a query against the others
    query: LabelledDataset | None = None    # query -> gallery protocol (In-Shop)
    gallery: LabelledDataset | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_train_classes(self) -> int:
        return int(len(np.unique(self.train.labels)))


def _val_class_mask(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Carve `share` of the train classes (at least 2 when share > 0) into a validation part."""
    classes = np.unique(labels)
    if share <= 0 or len(classes) < 4:
        return np.zeros(len(labels), bool)
    n_val = max(2, int(round(share * len(classes))))
    val_classes = np.random.default_rng(seed).choice(classes, n_val, replace=False)
    return np.isin(labels, val_classes)


def _cap_per_class(indices: np.ndarray, labels: np.ndarray, cap: int | None) -> np.ndarray:
    if not cap:
        return indices
    keep, seen = [], {}
    for i in indices:
        seen[labels[i]] = seen.get(labels[i], 0) + 1
        if seen[labels[i]] <= cap:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def _shapes_splits(cfg: DataConfig, seed: int) -> DataSplits:
    spec = shapes_data.ShapesSpec(image_size=cfg.image_size, **cfg.shapes)
    train_data, test_data = shapes_data.load(spec, "train"), shapes_data.load(spec, "test")
    train_tf, test_tf = build_transform(cfg, True), build_transform(cfg, False)
    idx = _cap_per_class(np.arange(len(train_data.labels)), train_data.labels, cfg.max_per_class)
    val_mask = _val_class_mask(train_data.labels[idx], cfg.val_classes, seed)
    test_idx = np.arange(len(test_data.labels))  # the evaluation protocol is never capped
    return DataSplits(
        train=ShapesDataset(train_data, idx[~val_mask], train_tf),
        val=ShapesDataset(train_data, idx[val_mask], test_tf) if val_mask.any() else None,
        test=ShapesDataset(test_data, test_idx, test_tf),
        info={"name": "shapes", "spec": spec.key(), "split_rule": "shapes: its own train and test classes"},
    )


def records_for(cfg: DataConfig) -> list[Record]:
    if cfg.name == "folder":
        return folder_records(cfg.root, cfg.class_depth)
    if cfg.name == "csv":
        return csv_records(cfg.csv, cfg.root, cfg.csv_label_column, cfg.csv_split_column)
    return official.records(cfg.name, cfg.root)


def _file_splits(cfg: DataConfig, seed: int) -> DataSplits:
    records = records_for(cfg)
    names = sorted({r.label for r in records})
    label_of = {name: i for i, name in enumerate(names)}
    class_names = {i: n for n, i in label_of.items()}
    paths = np.asarray([r.path for r in records])
    labels = np.asarray([label_of[r.label] for r in records], dtype=np.int64)
    splits = np.asarray([r.split or "" for r in records])
    rule = "split as given by the data set"
    if not splits.any():  # no split given: first half of the sorted classes train, second half test
        splits = np.where(labels < (len(names) + 1) // 2, "train", "test")
        rule = f"no split given: the first {(len(names) + 1) // 2} of the {len(names)} sorted classes train, the rest test"
    elif (splits == "").any():
        raise DatasetError("some records have a split and others do not; give every row a split or none")

    def make(mask, train, cap=None):
        idx = _cap_per_class(np.flatnonzero(mask), labels, cap)
        return ImageListDataset(list(paths[idx]), labels[idx], class_names, build_transform(cfg, train))

    train_mask = splits == "train"
    if not train_mask.any():
        raise DatasetError("the data set has no train images")
    val_mask = np.zeros(len(labels), bool)
    val_mask[train_mask] = _val_class_mask(labels[train_mask], cfg.val_classes, seed)
    query_mask, gallery_mask = splits == "query", splits == "gallery"
    test_mask = splits == "test"
    return DataSplits(
        train=make(train_mask & ~val_mask, True, cfg.max_per_class),
        val=make(val_mask, False, cfg.max_per_class) if val_mask.any() else None,
        test=make(test_mask, False) if test_mask.any() else None,
        query=make(query_mask, False) if query_mask.any() else None,
        gallery=make(gallery_mask, False) if gallery_mask.any() else None,
        info={"name": cfg.name, "root": cfg.root, "classes": len(names), "split_rule": rule},
    )


def build_datasets(cfg: DataConfig, seed: int = 0) -> DataSplits:
    if cfg.name == "shapes":
        return _shapes_splits(cfg, seed)
    return _file_splits(cfg, seed)


# ---- what was found: a summary printed at start, and checks before any training -------------------------
def parts(splits: DataSplits) -> list[tuple[str, LabelledDataset]]:
    return [(name, ds) for name in ("train", "val", "test", "query", "gallery")
            for ds in [getattr(splits, name)] if ds is not None]


def summary(splits: DataSplits, examples: int = 3) -> str:
    """Classes, images and examples per part, and how the split was made (printed at the start of a run)."""
    lines = [f"data: {splits.info.get('name', '?')}" + (f" at {splits.info['root']}" if splits.info.get("root") else "")
             + (f"; {splits.info['split_rule']}" if splits.info.get("split_rule") else "")]
    for name, ds in parts(splits):
        classes, counts = np.unique(ds.labels, return_counts=True)
        names = [ds.class_names.get(int(c), str(c)) for c in classes[:examples]]
        lines.append(f"  {name:<7} {len(classes):>5} classes {len(ds):>7} images ({counts.min()}-{counts.max()} per class, "
                     f"median {int(np.median(counts))}), e.g. {', '.join(names)}{', ...' if len(classes) > examples else ''}")
    if splits.val is not None:
        lines.append("  (val: train classes held out to pick the best epoch; test classes are never seen in training)")
    return "\n".join(lines)


def single_image_classes(ds: LabelledDataset) -> list[str]:
    classes, counts = np.unique(ds.labels, return_counts=True)
    return [ds.class_names.get(int(c), str(c)) for c in classes[counts < 2]]


def check_evaluable(splits: DataSplits) -> None:
    """Refuse up front (not after an epoch) a validation or test part where no image can be a query: a
    query needs another image of its class. Single-image classes elsewhere are only distractors: warn."""
    for name, ds in parts(splits):
        if name not in ("val", "test"):
            continue
        single = single_image_classes(ds)
        if single and len(single) == len(np.unique(ds.labels)):
            hint = ("set data.val_classes=0 (no validation) or add images" if name == "val" else
                    "add a second image to these classes, or give the data set more classes")
            raise DatasetError(f"every one of the {len(single)} {name} classes has a single image, so none can be a "
                               f"query (retrieval needs another image of the same class): {', '.join(single[:10])}"
                               f"{', ...' if len(single) > 10 else ''}; {hint}")
        if single:
            log.warning("%d of the %d %s classes have a single image: they cannot be queries and only act as "
                        "distractors, e.g. %s", len(single), len(np.unique(ds.labels)), name, ", ".join(single[:5]))
