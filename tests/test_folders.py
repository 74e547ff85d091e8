"""Your own folder as a new user meets it: nested class trees, the data summary at start, single-image
classes refused before any training, and progress (with an ETA) for the long evaluation phases."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from core.config import DataConfig, RunConfig
from core.data import build_datasets, summary
from core.data.folders import DatasetError, folder_records
from core.train import Trainer, TrainingError


def _img(path, seed, grey=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (20, 20) if grey else (20, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_nested(root, alphabets=("Greek", "Latin", "Runic"), characters=3, per_class=3):
    """`<set>/<alphabet>/<character>/img`, the same character folder names in every alphabet (Omniglot)."""
    for a, alphabet in enumerate(alphabets):
        for c in range(characters):
            for k in range(per_class):
                _img(root / alphabet / f"character{c + 1:02d}" / f"{k}.png", a * 100 + c * 10 + k, grey=True)
    return root


def _cfg(root, *extra):
    return RunConfig().with_overrides(["data.name=folder", f"data.root={root}", "data.image_size=16",
                                       "model.embed_dim=8", "train.epochs=1", "train.batch_size=8", *extra])


def test_nested_tree_finds_the_character_level(tmp_path):
    records = folder_records(str(make_nested(tmp_path)))
    labels = sorted({r.label for r in records})
    assert len(labels) == 9 and labels[0] == "Greek/character01" and "Runic/character03" in labels
    splits = build_datasets(DataConfig(name="folder", root=str(tmp_path), image_size=16, val_classes=0))
    assert len(np.unique(splits.train.labels)) == 5 and len(np.unique(splits.test.labels)) == 4
    assert tuple(splits.train[0][0].shape) == (3, 16, 16)  # greyscale files become 3-channel inputs


def test_class_depth_option_and_its_limits(tmp_path):
    make_nested(tmp_path)
    assert sorted({r.label for r in folder_records(str(tmp_path), class_depth=1)}) == ["Greek", "Latin", "Runic"]
    with pytest.raises(DatasetError, match="class_depth=3 but the images .* sit 2 folder level"):
        folder_records(str(tmp_path), class_depth=3)
    cfg = _cfg(tmp_path, "data.class_depth=1")
    assert cfg.data.class_depth == 1


def test_mixed_depths_fall_back_to_top_level_folders_with_a_warning(tmp_path, caplog):
    _img(tmp_path / "cats" / "a.png", 1)
    _img(tmp_path / "cats" / "indoor" / "b.png", 2)
    _img(tmp_path / "dogs" / "c.png", 3)
    _img(tmp_path / "loose.png", 4)
    with caplog.at_level(logging.WARNING, logger="core.data.folders"):
        records = folder_records(str(tmp_path))
    assert sorted(r.label for r in records) == ["cats", "cats", "dogs"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "different folder depths (1, 2)" in messages and "data.class_depth" in messages
    assert "not in a class folder" in messages and "loose.png" in messages


def test_no_images_lists_what_was_found(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match="found there: notes/, readme.txt"):
        folder_records(str(tmp_path))


def test_summary_is_printed_at_start(tmp_path, caplog):
    make_nested(tmp_path / "data", per_class=4)
    with caplog.at_level(logging.INFO, logger="core.train"):
        Trainer(_cfg(tmp_path / "data", "data.val_classes=0"), tmp_path / "run")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "first 5 of the 9 sorted classes train" in text
    assert "train       5 classes      20 images (4-4 per class, median 4), e.g. Greek/character01" in text
    assert "test        4 classes      16 images" in text


def test_one_train_class_refusal_lists_what_was_found(tmp_path):
    make_nested(tmp_path / "data", alphabets=("Greek",), characters=2)
    with pytest.raises(TrainingError, match=r"(?s)only 1 train class.*data.class_depth.*Found:.*train +1 classes"
                                            r".*Greek/character01.*test +1 classes.*Greek/character02"):
        Trainer(_cfg(tmp_path / "data"), tmp_path / "run")


def test_test_part_of_single_image_classes_is_refused_before_training(tmp_path):
    for c in range(4):  # classes a-d: 4 images each (train); e-h: one image each (test)
        for k in range(4):
            _img(tmp_path / "data" / f"{'abcd'[c]}" / f"{k}.png", c * 10 + k)
        _img(tmp_path / "data" / f"{'efgh'[c]}" / "0.png", 100 + c)
    with pytest.raises(DatasetError, match="every one of the 4 test classes has a single image.*e, f, g, h"):
        Trainer(_cfg(tmp_path / "data", "data.val_classes=0"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before any epoch or file


def test_some_single_image_classes_warn(tmp_path, caplog):
    for c, n in enumerate([3, 3, 3, 3, 3, 1, 3, 1]):
        for k in range(n):
            _img(tmp_path / f"c{c}" / f"{k}.png", c * 10 + k)
    splits = build_datasets(DataConfig(name="folder", root=str(tmp_path), image_size=16, val_classes=0))
    from core.data import check_evaluable
    with caplog.at_level(logging.WARNING, logger="core.data"):
        check_evaluable(splits)
    assert any("2 of the 4 test classes have a single image" in r.getMessage() and "c5, c7" in r.getMessage()
               for r in caplog.records)
    assert "1-3 per class" in summary(splits)


def test_cli_progress_bar_shows_an_eta(capsys):
    from core.__main__ import _progress_bar

    import re
    import time

    update = _progress_bar()
    for step in range(1, 4):
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        update(step, 10, "test: embedding 1280 images")
    err = capsys.readouterr().err
    assert "test: embedding 1280 images" in err
    assert re.search(r"[1-3]/10 \[00:0\d<00:0\d", err)  # elapsed<remaining: an ETA, not "?"
