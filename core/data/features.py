"""Frozen-backbone features on disk: every image embedded once up to the layer the trainable part reads.

With a frozen backbone each epoch would compute the same feature maps again; here they are computed once per
data set and kept as float16 in `$METRICLENS_CACHE/features/` (default `.cache/features/`), one `.npy` per
cached view, memory-mapped when read (never loaded whole), so every head on the same folder trains from the
same files. A file is keyed by the images (paths, sizes and modification times), the backbone's name and the
checksum of its weights, the layer, the transform (size, resize) and the view: an edited image, other weights
or another size give another file. Beside each `.npy` a `.json` written last records its shape, the items whose
image was unreadable, and the SHA-1 of its data; a file that is truncated, damaged or lacks it is rebuilt.

Views: view 0 is the test-time image; view 1 its mirror image; views 2+ a random resized crop (area 0.6-1, the
CPU path's) with a random flip, fixed per view. Views 1+ are cached for the training folders' images only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core import io
from core.data.cache import WrapsDataset, cache_root, files_digest, random_resized_crops

log = logging.getLogger(__name__)

FORMAT = 1
_UMASK = os.umask(0o022)  # read once at import, as core.io does
os.umask(_UMASK)
ROWS_PER_HASH = 256   # rows hashed at a time when a file is checked (bounded memory)


def feature_root() -> Path:
    return cache_root().parent / "features"


@dataclass(frozen=True)
class FeatureSpec:
    """What a cached feature map is, apart from the images it is of."""
    backbone: str
    weights: str          # checksum of the backbone's weights (core.models.backbones.weights_digest)
    layer: str            # the backbone stage whose output is cached
    image_size: int
    resize: int | None
    view: int = 0

    def key(self, paths: list[str]) -> str:
        return files_digest(paths, {**asdict(self), "format": FORMAT})

    def describe(self) -> str:
        return (["the test-time image", "its mirror image"][self.view] if self.view < 2
                else f"random crop {self.view - 1}")


def view_of(x: torch.Tensor, view: int, generator: torch.Generator) -> torch.Tensor:
    """Float images B×3×S×S in [0, 1] -> the cached view (0: as they are, 1: mirrored, 2+: random crops drawn
    from `generator`, seeded by the view, so a view is the same whenever it is built)."""
    if view == 0:
        return x
    if view == 1:
        return x.flip(-1)
    return random_resized_crops(x, generator)


class FeatureFile:
    """One cached view over a list of images: `<key>.npy` (float16 N×C×h×w) and `<key>.json` (written last)."""

    def __init__(self, spec: FeatureSpec, paths: list[str]):
        self.spec, self.paths = spec, list(paths)
        key = spec.key(self.paths)
        root = feature_root()
        self.array_path, self.meta_path = root / f"{key}.npy", root / f"{key}.json"

    def open(self) -> tuple[np.ndarray, set[int]] | None:
        """(memory-mapped features, rows whose image was unreadable) when the file is whole, else None (after
        saying what is wrong with it, when it exists)."""
        if not self.meta_path.exists():
            return None
        try:
            meta = io.read_json(self.meta_path)
            array = io.read_npy(self.array_path, mmap=True)
            problem = None
            if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
                problem = f"holds {array.shape} {array.dtype}, its record says {meta['shape']} {meta['dtype']}"
            elif data_digest(array) != meta["sha1"]:
                problem = "its data does not match its checksum"
        except (io.FileFormatError, OSError, KeyError, TypeError, ValueError) as err:
            problem = str(err)
        if problem:
            log.warning("feature cache %s is damaged (%s): computing it again", self.array_path, problem)
            self.remove()
            return None
        return array, set(meta["bad"])

    def remove(self) -> None:
        self.meta_path.unlink(missing_ok=True)
        self.array_path.unlink(missing_ok=True)

    def build(self, dataset: Dataset, encode: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 32,
              num_workers: int = 0, progress=None, phase: str = "caching features") -> tuple[np.ndarray, set[int]]:
        """Embed every item of `dataset` (float test-time images, items (x, label, served index)) through
        `encode`, write the file (float16, row by row, never whole in memory) and its record; return it opened."""
        root = self.array_path.parent
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{self.array_path.name}.", suffix=".tmp")
        os.close(fd)
        out, bad, done, sha1 = None, set(), 0, hashlib.sha1()
        crops = torch.Generator().manual_seed(1_000_003 * self.spec.view)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                            generator=torch.Generator())  # the global RNG stays as it was (reproducible runs)
        try:
            for step, (x, _, served) in enumerate(loader):
                feats = encode(view_of(x, self.spec.view, crops)).float().cpu().numpy()
                if not np.isfinite(feats).all() or np.abs(feats).max() > np.finfo(np.float16).max:
                    raise ValueError(f"the backbone's {self.spec.layer} features of images {done}-{done + len(x) - 1} "
                                     f"are not finite or do not fit float16")
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                                    shape=(len(dataset), *feats.shape[1:]))
                rows = feats.astype(np.float16)
                out[done:done + len(x)] = rows
                sha1.update(np.ascontiguousarray(rows).data)
                bad.update(int(done + j) for j in np.flatnonzero(served.numpy() != np.arange(done, done + len(x))))
                done += len(x)
                if progress:
                    progress(step + 1, len(loader), phase)
            out.flush()
            del out
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's file is its owner's only; a cache file is like any other
            os.replace(tmp, self.array_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        array = io.read_npy(self.array_path, mmap=True)
        io.write_json(self.meta_path, {"shape": list(array.shape), "dtype": str(array.dtype), "sha1": sha1.hexdigest(),
                                       "bad": sorted(bad), "spec": asdict(self.spec), "images": len(self.paths),
                                       "format": FORMAT})
        return array, bad


def data_digest(array: np.ndarray) -> str:
    """SHA-1 of an array's data, read a block of rows at a time (a memory map is never read whole)."""
    sha1 = hashlib.sha1()
    for start in range(0, len(array), ROWS_PER_HASH):
        sha1.update(np.ascontiguousarray(array[start:start + ROWS_PER_HASH]).data)
    return sha1.hexdigest()


class CachedFeatures(WrapsDataset):
    """One part (train, val, test, ...) of a file data set as cached feature maps: items (float32 C×h×w, label,
    index) of view 0; `views[v]` and `rows[v]` give every cached view's array and this part's rows in it.
    `labels`, `class_names`, `path`, `annotation` and `raw_image` are the base data set's; `bad` the items whose
    own image was unreadable (a classmate's image stood in when the features were computed)."""

    def __init__(self, base, views: list[np.ndarray], rows: list[np.ndarray], bad: set[int]):
        self.base, self.views, self.rows, self.bad = base, views, [np.asarray(r, np.int64) for r in rows], set(bad)
        self.labels, self.class_names = base.labels, base.class_names

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return torch.from_numpy(np.asarray(self.views[0][self.rows[0][index]], dtype=np.float32)), \
            int(self.labels[index]), index

    def gather(self, indices: np.ndarray, views: np.ndarray) -> torch.Tensor:
        """Float32 B×C×h×w: item indices[i] in view views[i] (memory-mapped rows read in file order)."""
        out = None
        for view in np.unique(views):
            which = np.flatnonzero(views == view)
            rows = self.rows[view][indices[which]]
            order = np.argsort(rows, kind="stable")
            block = np.asarray(self.views[view][rows[order]], dtype=np.float32)
            if out is None:
                out = np.empty((len(indices), *block.shape[1:]), np.float32)
            out[which[order]] = block
        return torch.from_numpy(out)


class FeatureBatches:
    """An epoch's batches from a `CachedFeatures` train part: (features, labels, indices), each item in one of its
    cached views, drawn per epoch from `seed`. Iterates like the DataLoader it replaces."""

    def __init__(self, data: CachedFeatures, batches: list[list[int]], seed: int):
        self.data, self.batches = data, batches
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        labels = torch.as_tensor(self.data.labels)
        for idx in self.batches:
            index = np.asarray(idx, dtype=np.int64)
            views = self.rng.integers(0, len(self.data.views), len(index))
            yield self.data.gather(index, views), labels[index], torch.as_tensor(index)


def cached_feature_splits(splits, spec: FeatureSpec, views: int, encode: Callable[[torch.Tensor], torch.Tensor],
                          transform, num_workers: int = 0, progress=None, compute: bool = True):
    """`splits` with every file part as `CachedFeatures`, and what was done ({view: "read" | "computed"}). View 0
    covers the union of every part's images (runs whose validation classes differ share it); views 1+ the
    training folders' (train and validation parts). With `compute` False, (None, {}) unless every file exists."""
    import dataclasses

    from core.data import ImageListDataset

    parts = {name: ds for name in ("train", "val", "test", "query", "gallery")
             for ds in [getattr(splits, name)] if ds is not None}
    if any(not hasattr(ds, "paths") for ds in parts.values()):
        raise ValueError("features are cached for image files only (not for the generated shapes)")
    label_of = {p: int(l) for ds in parts.values() for p, l in zip(ds.paths, ds.labels)}
    class_names = {k: v for ds in parts.values() for k, v in ds.class_names.items()}
    arrays, bads, row_of, done = [], [], [], {}
    for view in range(views):
        covered = parts.values() if view == 0 else [ds for name, ds in parts.items() if name in ("train", "val")]
        paths = sorted({p for ds in covered for p in ds.paths})
        file = FeatureFile(dataclasses.replace(spec, view=view), paths)
        opened = file.open()
        done[view] = "read" if opened else "computed"
        if opened is None and not compute:
            return None, {}
        if opened is None:
            images = ImageListDataset(paths, np.asarray([label_of[p] for p in paths], np.int64), class_names, transform)
            phase = (f"caching backbone features ({spec.layer}) of {len(paths)} images once: "
                     f"view {view + 1}/{views}, {dataclasses.replace(spec, view=view).describe()}")
            opened = file.build(images, encode, num_workers=num_workers, progress=progress, phase=phase)
        arrays.append(opened[0])
        bads.append(opened[1])
        row_of.append({p: i for i, p in enumerate(paths)})
    changes = {}
    for name, ds in parts.items():
        n_views = views if name == "train" else 1
        rows = [np.asarray([row_of[v][p] for p in ds.paths], np.int64) for v in range(n_views)]
        bad = {j for j, r in enumerate(rows[0]) if int(r) in bads[0]}
        changes[name] = CachedFeatures(ds, arrays[:n_views], rows, bad)
    return dataclasses.replace(splits, **changes), done
