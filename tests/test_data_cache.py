"""`data.cache`: images decoded once into uint8 memory, batches gathered and augmented on the training device
(the GPU input pipeline; here on the CPU, which runs the same code)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import DataConfig, RunConfig
from core.data import build_datasets, build_transform
from core.data import shapes as shapes_data
from core.data.cache import CachedImages, cached_splits, random_resized_crops, use_cache
from core.evaluate import readable
from core.train import Trainer


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """Shapes images written as non-square files (8 classes x 4), a fresh cache folder."""
    data = shapes_data.load(shapes_data.ShapesSpec(image_size=48), "train")  # from the shared cache: fast
    monkeypatch.setenv("METRICLENS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "images"
    for label in np.unique(data.labels)[:8]:
        for k, i in enumerate(np.flatnonzero(data.labels == label)[:4]):
            (root / f"class{label:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.images[i]).resize((60, 40)).save(root / f"class{label:02d}" / f"{k}.png")
    return root


def _cfg(root, *extra):
    return RunConfig().with_overrides(["data.name=folder", f"data.root={root}", "data.image_size=32",
                                       "data.val_classes=0", "model.embed_dim=8", "train.epochs=1",
                                       "train.batch_size=8", "train.m_per_class=2", "data.cache=always", *extra])


def test_cached_items_are_the_test_transform_of_each_file(folder):
    cfg = _cfg(folder).data
    plain = build_datasets(cfg)
    cached = cached_splits(plain, cfg)
    assert isinstance(cached.train, CachedImages) and isinstance(cached.test, CachedImages)
    test_tf = build_transform(cfg, train=False)
    for part, original in ((cached.train, plain.train), (cached.test, plain.test)):
        assert len(part) == len(original) and (part.labels == original.labels).all()
        for i in range(len(part)):
            with Image.open(original.path(i)) as img:
                expected = test_tf(img.convert("RGB"))
            x, label, index = part[i]
            assert (label, index) == (int(original.labels[i]), i) and part.path(i) == original.path(i)
            assert (x - expected).abs().max() <= 1 / 255 + 1e-6  # uint8 rounding only


def test_decoded_once_then_read_back_and_decoded_again_when_a_file_changes(folder, monkeypatch):
    cfg = _cfg(folder).data
    first = cached_splits(build_datasets(cfg), cfg)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    again = cached_splits(build_datasets(cfg), cfg)
    assert opened == [] and torch.equal(again.train.gathered(), first.train.gathered())
    # read back memory-mapped, one array behind every part: the process holds the images once
    assert isinstance(again.train.images, np.memmap) and again.train.images is again.test.images
    edited = sorted(folder.glob("*/*.png"))[0]
    Image.new("RGB", (60, 40), (255, 0, 0)).save(edited)
    os.utime(edited, ns=(1, 1))  # a different mtime (and size): the cache key changes
    third = cached_splits(build_datasets(cfg), cfg)
    assert opened, "an edited file must be decoded again"
    part = third.train if str(edited) in third.train.base.paths else third.test
    i = part.base.paths.index(str(edited))
    assert torch.allclose(part[i][0][:, 5, 5], torch.tensor([1.0, 0.0, 0.0]))


def test_an_unreadable_file_is_served_by_a_classmate_and_left_out_of_the_metrics(folder):
    bad = sorted(folder.glob("*/*.png"))[6]
    bad.write_bytes(b"not an image")
    cfg = _cfg(folder).data
    cached = cached_splits(build_datasets(cfg), cfg)
    part = cached.train if str(bad) in cached.train.base.paths else cached.test
    i = part.base.paths.index(str(bad))
    assert part.bad == {i}
    assert not readable(part, len(part))[i] and readable(part, len(part)).sum() == len(part) - 1


def test_random_resized_crops_crop_and_flip_each_image_on_its_own():
    ramp = torch.linspace(0, 1, 64).expand(3, 64, 64)  # value = x position
    batch = ramp.expand(256, 3, 64, 64).contiguous()
    out = random_resized_crops(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 1
    row = out[:, 0, 32]
    width = (row[:, -1] - row[:, 0]).abs()  # the crop's share of the width
    assert width.min() > 0.5 and width.max() <= 1.0 and width.std() > 0.05  # crops of different sizes
    flipped = (row[:, -1] < row[:, 0]).float().mean()
    assert 0.35 < flipped < 0.65  # about half mirrored
    again = random_resized_crops(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded: the same epoch gives the same crops


def test_trainer_trains_from_the_cache_and_auto_means_only_on_a_gpu(folder, tmp_path):
    trainer = Trainer(_cfg(folder), tmp_path / "run")
    assert isinstance(trainer.splits.train, CachedImages)
    loader, tags = trainer.train_loader(0)
    x, y, index = next(iter(loader))
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and len(y) == len(index) == 8
    assert (y.numpy() == trainer.splits.train.labels[index.numpy()]).all()
    assert np.isfinite(trainer.step((x, y))["loss"])
    auto = _cfg(folder, "data.cache=auto").data
    assert not use_cache(auto, torch.device("cpu")) and use_cache(auto, torch.device("cuda"))
    assert not use_cache(DataConfig(name="shapes", cache="always"), torch.device("cuda"))
    with pytest.raises(ValueError, match="use auto, always or never"):
        use_cache(DataConfig(cache="yes"), torch.device("cpu"))
