"""Frozen-backbone training on cached features (`core.data.features`, `core.train_features`): the same loss as
training through the backbone, a cache keyed by what it holds and rebuilt when damaged, a frozen pretrained
backbone stored by name and checksum, and the frozen network scored beside the result."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from core import checkpoint as ckpt
from core.config import RunConfig
from core.data import shapes as shapes_data
from core.data.features import CachedFeatures, feature_root
from core.train import Trainer, seed_everything, train
from core.train_features import frozen_backbone_overrides


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """Shapes drawn as image files (10 classes x 4, non-square), and a fresh cache folder."""
    data = shapes_data.load(shapes_data.ShapesSpec(image_size=48), "train")  # from the shared cache: fast
    monkeypatch.setenv("METRICLENS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "images"
    for label in np.unique(data.labels)[:10]:
        for k, i in enumerate(np.flatnonzero(data.labels == label)[:4]):
            (root / f"class{label:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.images[i]).resize((60, 40)).save(root / f"class{label:02d}" / f"{k}.png")
    return root


def _cfg(root, *extra) -> RunConfig:
    """A frozen random convnet + GAP on the folder: 6 train classes (2 of them validation), 4 test."""
    return RunConfig().with_overrides(["data.name=folder", f"data.root={root}", "data.image_size=32",
                                       "data.augment=false", "data.val_classes=0.34", "model.embed_dim=8",
                                       "model.freeze_backbone=true", "train.epochs=1", "train.batch_size=8",
                                       "train.m_per_class=2", "train.miner=null", *extra])


def _effnet(root, *extra) -> RunConfig:
    return _cfg(root, "model.backbone=efficientnet_lite0", "model.pretrained=true", "data.image_size=64", *extra)


def seeded(fn, *args):
    seed_everything(0)
    return fn(*args)


def _cache_files():
    return sorted(feature_root().glob("*.npy"))


def test_the_cached_trainer_gives_the_uncached_loss_on_the_same_batch(folder, tmp_path):
    """Same seed, same weights, the same batch of train items: the loss from the cached features is the loss of the
    frozen backbone's features rounded to float16, so it agrees with training through the backbone (images) to
    float16 precision (multi-similarity's exp(50·s) magnifies a 1e-3 change of a similarity to a few per mille)."""
    from core.train import TrainingStep

    for extra in ([], ["model.head=grouping", "model.head_args.num_groups=2", "model.embed_dim=8"]):
        cached = Trainer(_effnet(folder, *extra), tmp_path / "cached")
        plain = Trainer(_effnet(folder, "train.feature_cache=never", *extra), tmp_path / "plain")
        assert isinstance(cached.splits.train, CachedFeatures) and cached.cut == "head"
        assert all(torch.equal(a, b) for a, b in zip(cached.model.state_dict().values(), plain.model.state_dict().values()))
        index = list(range(8))
        x_feat = torch.stack([cached.splits.train[i][0] for i in index])
        x_img = torch.stack([plain.splits.train[i][0] for i in index])
        y = torch.as_tensor(cached.splits.train.labels[index])
        assert x_feat.shape[1:] == (1280, 2, 2) and x_img.shape[1:] == (3, 64, 64)
        cached.training_step.train()
        plain.training_step.train()
        with torch.no_grad():
            rounded = plain.model.forward_features(x_img).half().float()
            # grouping's loss samples its pairs (DGML's distance-weighted sampler): the same draws for each
            a = seeded(cached.compute_losses, x_feat, y)
            b = seeded(plain.compute_losses, x_img, y)
            c = seeded(TrainingStep(plain.model, plain.criterion, after="head"), rounded, y)
        assert torch.allclose(x_feat, rounded, rtol=2e-3, atol=1e-3)  # the cache holds them (float16 rounding)
        assert a.keys() == b.keys() == c.keys()
        for k in a:
            assert float(a[k]) == pytest.approx(float(c[k]), rel=1e-3), k
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-2), k


def test_a_changed_transform_or_backbone_invalidates_the_cache(folder, tmp_path):
    def cached_views(cfg):
        return Trainer(cfg, tmp_path / "run").feature_cache["files"]

    assert cached_views(_cfg(folder)) == {0: "computed"}
    assert cached_views(_cfg(folder, "model.head=grouping", "model.head_args.num_groups=2")) == {0: "read"}  # another head
    first = _cache_files()
    assert cached_views(_cfg(folder, "data.image_size=40")) == {0: "computed"}            # another transform
    assert cached_views(_cfg(folder, "train.seed=1")) == {0: "computed"}                  # other (random) weights
    assert cached_views(_cfg(folder, "model.backbone=efficientnet_lite0")) == {0: "computed"}  # another backbone
    assert len(_cache_files()) == 4 and set(first) <= set(_cache_files())
    edited = sorted(folder.glob("*/*.png"))[0]
    Image.new("RGB", (60, 40), (255, 0, 0)).save(edited)
    assert cached_views(_cfg(folder)) == {0: "computed"}                                   # an edited image
    assert cached_views(_cfg(folder, "train.cached_views=2")) == {0: "read", 1: "computed"}  # a new view


@pytest.mark.parametrize("damage", ["truncate", "flip bytes", "no record"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(folder, tmp_path, damage, caplog):
    cfg = _cfg(folder)
    first = Trainer(cfg, tmp_path / "a")
    reference = np.array(first.splits.test.views[0])
    (array,) = _cache_files()
    if damage == "truncate":
        with open(array, "r+b") as fh:
            fh.truncate(array.stat().st_size // 2)
    elif damage == "flip bytes":
        raw = bytearray(array.read_bytes())
        raw[-100:] = bytes(255 - b for b in raw[-100:])
        array.write_bytes(bytes(raw))
    else:
        array.with_suffix(".json").unlink()
    again = Trainer(cfg, tmp_path / "b")
    assert again.feature_cache["files"] == {0: "computed"}
    if damage != "no record":
        assert any("is damaged" in r.getMessage() and "computing it again" in r.getMessage() for r in caplog.records)
    assert np.array_equal(np.array(again.splits.test.views[0]), reference)
    assert Trainer(cfg, tmp_path / "c").feature_cache["files"] == {0: "read"}


def test_a_frozen_pretrained_run_stores_its_head_only_and_rebuilds_to_the_same_embeddings(folder, tmp_path):
    """The weights file holds the trained layers and the backbone's name and checksum; loading rebuilds the whole
    model, which embeds exactly as the trainer's model did (no validation part: the last epoch is the kept one),
    and refuses a backbone whose checksum differs."""
    from core.io import atomic_save_safetensors

    run = tmp_path / "run"
    trainer = Trainer(_effnet(folder, "data.val_classes=0"), run)
    trainer.fit()
    with safe_open(str(run / ckpt.WEIGHTS), framework="pt") as fh:
        state, meta = {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()
    assert state and not any(k.startswith("backbone.") for k in state)
    assert meta["backbone"] == "efficientnet_lite0" and len(meta["backbone_sha256"]) == 64
    assert (run / ckpt.WEIGHTS).stat().st_size < 100_000  # the 1280->8 projection, not the 18 MB backbone
    images = torch.stack([trainer.splits.test.base[i][0] for i in range(6)])
    loaded, _ = ckpt.load_run(run)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(trainer.model(images), loaded(images))
        # the run's test embeddings came from the float16 cache: the rebuilt model agrees to that precision
        assert np.allclose(loaded(images).numpy(), np.load(run / ckpt.ARTIFACTS / "embeddings.npy")[:6], atol=5e-3)
    atomic_save_safetensors(run / ckpt.WEIGHTS, state, metadata=dict(meta, backbone_sha256="0" * 64))
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.load_run(run)


def test_the_frozen_network_and_the_start_are_scored_on_test_beside_the_result(folder, tmp_path):
    metrics = train(_cfg(folder, "train.epochs=2"), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / ckpt.METRICS).read_text())
    assert saved["start"]["test"].keys() == saved["test"].keys() == saved["frozen"]["test"].keys()
    assert set(saved["frozen"]["val"]) == set(saved["val"]) and isinstance(saved["below_frozen"], bool)
    assert saved["feature_cache"]["layer"] == "stage4" and saved["unreadable"] == []
    assert metrics["frozen"]["test"]["recall@1"] > 0


def test_frozen_backbone_overrides_move_blocks_onto_the_last_stage():
    cfg = RunConfig.load("configs/real_csa.yaml")
    overrides = frozen_backbone_overrides(cfg)
    moved = cfg.with_overrides(overrides)
    assert moved.model.freeze_backbone and [b.after for b in moved.model.blocks] == ["head"]
    assert moved.model.blocks[0].args == cfg.model.blocks[0].args
    assert frozen_backbone_overrides(RunConfig.load("configs/real_gap.yaml")) == [
        "model.freeze_backbone=true", "model.projection_init=uncentred_pca"]
    # DSL's learners each normalise a slice of the projection: it keeps the centred start
    assert "model.projection_init=uncentred_pca" not in frozen_backbone_overrides(RunConfig.load("configs/real_dsl.yaml"))


def test_cached_views_give_the_mirror_image_and_epochs_draw_from_both(folder, tmp_path):
    trainer = Trainer(_cfg(folder, "train.cached_views=2"), tmp_path / "run")
    train_part = trainer.splits.train
    assert len(train_part.views) == 2 and len(trainer.splits.test.views) == 1  # views 2+ for the training folders
    image = train_part.base[0][0]
    trainer.model.eval()
    with torch.no_grad():
        mirrored = trainer.model.forward_features(image.flip(-1)[None])[0]
    assert torch.allclose(train_part.gather(np.array([0]), np.array([1]))[0], mirrored, rtol=1e-2, atol=1e-2)
    used = set()
    for x, _, index in trainer.train_loader(0)[0]:
        for row, i in zip(x, index.numpy()):
            views = [v for v in (0, 1) if torch.equal(row, train_part.gather(np.array([i]), np.array([v]))[0])]
            assert views, "every item is one of its cached views"
            used.update(views)
    assert used == {0, 1}


def test_the_frozen_reference_reads_a_cache_but_never_fills_one(folder, tmp_path):
    """A run that trains nothing needs only its test images: it embeds them directly rather than caching every
    image, and reads the cache once a head has filled it."""
    reference = _cfg(folder, "train.epochs=0", "model.embed_dim=0")
    assert Trainer(reference, tmp_path / "a").feature_cache == {} and _cache_files() == []
    Trainer(_cfg(folder), tmp_path / "head")
    assert Trainer(reference, tmp_path / "b").feature_cache["files"] == {0: "read"}
