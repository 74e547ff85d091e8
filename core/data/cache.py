"""Decode once, train from memory: every image of a file data set as one uint8 tensor (`data.cache`).

Why: a DataLoader that decodes and resizes JPEGs on CPU workers every epoch fed an H200 at ~700 images/s,
far below what EfficientNet-Lite0 trains at. Here each image is decoded and resized once to the test-time
input (what `build_transform(cfg, train=False)` makes, as uint8), kept in one file per data set under the cache folder
(`$METRICLENS_CACHE`, default `.cache/`, keyed by the files' paths, sizes and mtimes and the transform, so
an edited image is decoded again), and the train part is moved to the training device when it fits. Train
batches are then gathered and augmented there (`DeviceBatches`): a random resized crop (area 0.6-1, aspect
3/4-4/3, like the CPU path) and a horizontal flip, one per image, in one batched `roi_align` call.

Difference from the CPU path, on purpose: the random crop is taken from the cached test-size image, not
from the original file (a crop of a 500 px photo resized to 224 and a crop of its 224 px copy differ only
by resampling). Evaluation sees exactly the test transform's pixels (rounded to uint8).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import roi_align
from torchvision.transforms import v2 as T

from core.config import DataConfig
from core.io import atomic_save_npy, read_npy

log = logging.getLogger(__name__)

CACHE_SCALE, CACHE_RATIO = (0.6, 1.0), (3 / 4, 4 / 3)  # the CPU path's RandomResizedCrop
DEVICE_SHARE = 0.25  # the train images move to the GPU only while they take at most this share of its free memory


def cache_root() -> Path:
    return Path(os.environ.get("METRICLENS_CACHE", Path(__file__).resolve().parents[2] / ".cache")) / "images"


def uint8_transform(cfg: DataConfig):
    """The test-time transform of `core.data.build_transform`, kept in uint8 (4x smaller than float)."""
    size = cfg.image_size
    if cfg.resize and cfg.resize != size:
        return T.Compose([T.ToImage(), T.Resize(cfg.resize, antialias=True), T.CenterCrop(size)])
    return T.Compose([T.ToImage(), T.Resize((size, size), antialias=True)])


def files_digest(paths: list[str], what: dict) -> str:
    """A cache key: `what` the cache holds (JSON), and every file's path, size and modification time, so an
    edited, added or removed image gives another key."""
    h = hashlib.sha1(json.dumps(what).encode())
    for path in paths:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # a missing file is decoded (and reported) like an unreadable one
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()


def _key(dataset, cfg: DataConfig) -> str:
    return files_digest(dataset.paths, {"size": cfg.image_size, "resize": cfg.resize, "v": 1})


class WrapsDataset(Dataset):
    """A stand-in for the data set `self.base` (cached pixels or features of it): its files, annotations and raw
    images are the wrapped set's."""

    def path(self, index):
        return self.base.path(index)

    def annotation(self, index):
        return self.base.annotation(index)

    def raw_image(self, index):
        return self.base.raw_image(index)


class CachedImages(WrapsDataset):
    """One part (train, val, test, ...) of a file data set whose images were decoded once: rows `rows` of the
    data set's cache array (uint8 N×3×S×S, memory-mapped when read back), shared by every part, so a process
    holds the decoded images once. Items are the test-time float images; `labels`, `class_names`, `path`,
    `annotation`, `raw_image` and `bad` are the base data set's."""

    def __init__(self, base, images: np.ndarray, rows: np.ndarray, bad: set[int]):
        self.base, self.images, self.rows, self.bad = base, images, np.asarray(rows, dtype=np.int64), set(bad)
        self.labels, self.class_names = base.labels, base.class_names

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return torch.from_numpy(np.array(self.images[self.rows[index]])).float().div_(255), int(self.labels[index]), index

    def gathered(self) -> torch.Tensor:
        """This part's images as one contiguous uint8 tensor (a copy: made once, for training on a device)."""
        return torch.from_numpy(self.images[self.rows])



def decode_once(dataset, cfg: DataConfig, num_workers: int = 0, progress=None) -> tuple[np.ndarray, set[int]]:
    """Every image of `dataset` (an ImageListDataset whose transform is `uint8_transform(cfg)`), and the items
    whose own file was unreadable; read back (memory-mapped) from the cache folder when decoded before."""
    root = cache_root()
    key = _key(dataset, cfg)
    images_path, bad_path = root / f"{key}.npy", root / f"{key}.bad.json"
    if images_path.exists() and bad_path.exists():
        return read_npy(images_path, mmap=True), set(json.loads(bad_path.read_text()))
    size = cfg.image_size
    images = np.empty((len(dataset), 3, size, size), dtype=np.uint8)
    bad: set[int] = set()
    loader = DataLoader(dataset, batch_size=64, num_workers=num_workers)
    done = 0
    for step, (x, _, served) in enumerate(loader):  # served: the item read (a classmate for an unreadable file)
        images[done:done + len(x)] = x.numpy()
        bad.update(int(done + j) for j in np.flatnonzero(served.numpy() != np.arange(done, done + len(x))))
        done += len(x)
        if progress:
            progress(step + 1, len(loader), f"decoding {len(dataset)} images once (cached for the next runs)")
    root.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(images_path, images)
    bad_path.write_text(json.dumps(sorted(bad)))  # written last: the pair counts as cached only when complete
    log.info("decoded %d images once into %s (%.0f MiB)", len(dataset), images_path, images.nbytes / 2**20)
    return images, bad


def cached_splits(splits, cfg: DataConfig, num_workers: int = 0, progress=None):
    """`splits` with every file part as `CachedImages`. One cache per data set: the union of the parts'
    files is decoded once, so runs whose validation classes differ (other seeds) share it."""
    import dataclasses

    from core.data import ImageListDataset

    parts = {name: ds for name in ("train", "val", "test", "query", "gallery")
             for ds in [getattr(splits, name)] if ds is not None and hasattr(ds, "paths")}
    if not parts:
        return splits
    label_of = {p: int(l) for ds in parts.values() for p, l in zip(ds.paths, ds.labels)}
    paths = sorted(label_of)
    class_names = {k: v for ds in parts.values() for k, v in ds.class_names.items()}
    union = ImageListDataset(paths, np.asarray([label_of[p] for p in paths], dtype=np.int64), class_names,
                             uint8_transform(cfg))
    images, bad = decode_once(union, cfg, num_workers, progress)
    row = {p: i for i, p in enumerate(paths)}
    changes = {}
    for name, ds in parts.items():
        idx = np.asarray([row[p] for p in ds.paths], dtype=np.int64)
        changes[name] = CachedImages(ds, images, idx, {j for j, i in enumerate(idx) if int(i) in bad})
    return dataclasses.replace(splits, **changes)


def use_cache(cfg: DataConfig, device: torch.device) -> bool:
    """`data.cache`: auto (on when training on a GPU) | always | never (YAML reads on/off as booleans, hence
    the words). Only file data sets have images to decode."""
    if cfg.cache not in ("auto", "always", "never"):
        raise ValueError(f"data.cache={cfg.cache!r}; use auto, always or never")
    return cfg.name != "shapes" and (cfg.cache == "always" or (cfg.cache == "auto" and device.type == "cuda"))


def random_resized_crops(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Float images (B×3×S×S) → one random resized crop + horizontal flip per image, S×S, in one call."""
    b, _, h, w = images.shape
    dev = images.device
    u = torch.rand((4, b), generator=generator, device=generator.device).to(dev)
    area = (CACHE_SCALE[0] + (CACHE_SCALE[1] - CACHE_SCALE[0]) * u[0]) * h * w
    ratio = torch.exp(math.log(CACHE_RATIO[0]) + (math.log(CACHE_RATIO[1]) - math.log(CACHE_RATIO[0])) * u[1])
    cw = torch.sqrt(area * ratio).clamp(max=w)  # torchvision retries out-of-bounds draws; a clamp is close enough
    ch = torch.sqrt(area / ratio).clamp(max=h)
    x0, y0 = (w - cw) * u[2], (h - ch) * u[3]
    boxes = torch.stack([torch.arange(b, device=dev, dtype=images.dtype), x0, y0, x0 + cw, y0 + ch], 1)
    out = roi_align(images, boxes.to(images.dtype), (h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(b, generator=generator, device=generator.device).to(dev) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


class DeviceBatches:
    """An epoch's batches from a `CachedImages`: (images on `device` in [0, 1], labels, indices), augmented
    there when `augment`. Iterates like the DataLoader it replaces."""

    def __init__(self, data: CachedImages, batches: list[list[int]], device: torch.device, augment: bool, seed: int):
        self.images, self.labels = device_copy(data, device), torch.as_tensor(data.labels)
        self.batches, self.device, self.augment = batches, device, augment
        self.generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for idx in self.batches:
            index = torch.as_tensor(idx, dtype=torch.long)
            x = self.images[index.to(self.images.device)]
            x = x.to(self.device, non_blocking=True).float().div_(255)
            if self.augment:
                x = random_resized_crops(x, self.generator)
            yield x, self.labels[index], index


def device_copy(data: CachedImages, device: torch.device) -> torch.Tensor:
    """The images on the GPU when they fit comfortably (kept there for the next epochs), else pinned memory."""
    placed = getattr(data, "_placed", None)
    if placed is not None and placed[0] == device:
        return placed[1]
    images = data.gathered()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes <= DEVICE_SHARE * free:
            images = images.to(device)
        else:
            log.info("train images (%.0f MiB) stay in pinned memory: more than %d%% of the GPU's free memory",
                     images.nbytes / 2**20, 100 * DEVICE_SHARE)
            images = images.pin_memory()
    data._placed = (device, images)
    return images

