import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from core import checkpoint as ckpt
from core.train import Trainer, TrainingError, train


def test_run_directory_and_learning(tmp_path, tiny_cfg):
    metrics = train(tiny_cfg, tmp_path)
    for name in (ckpt.CONFIG, ckpt.WEIGHTS, ckpt.METRICS, ckpt.HISTORY, ckpt.RESUME):
        assert (tmp_path / name).exists(), name
    art = tmp_path / ckpt.ARTIFACTS
    emb, labels = np.load(art / "embeddings.npy"), np.load(art / "labels.npy")
    assert emb.shape == (len(labels), 32) and np.load(art / "coords_pca.npy").shape == (len(labels), 2)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    saved = json.loads((tmp_path / ckpt.METRICS).read_text())
    assert saved["test"] == pytest.approx(metrics["test"])
    chance = 1 / len(np.unique(labels))
    assert metrics["test"]["recall@1"] > 2.5 * chance   # two tiny epochs already beat chance clearly
    history = (tmp_path / ckpt.HISTORY).read_text().splitlines()
    assert len(history) == 1 + tiny_cfg.train.epochs and "val_map_at_r" in history[0]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_cfg):
    train(tiny_cfg, tmp_path / "straight")

    def interrupt_in_second_epoch(step, total, message):
        if message.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg, tmp_path / "resumed", progress=interrupt_in_second_epoch).fit()
    assert ckpt.load_resume(tmp_path / "resumed" / ckpt.RESUME)["epoch"] == 0
    trainer = Trainer(tiny_cfg, tmp_path / "resumed")
    trainer.fit()
    a = ckpt.load_resume(tmp_path / "straight" / ckpt.RESUME)
    b = ckpt.load_resume(tmp_path / "resumed" / ckpt.RESUME)
    assert a["epoch"] == b["epoch"] == 1 and len(b["history"]) == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_other_config_in_run_dir_is_refused(tmp_path, tiny_cfg):
    train(tiny_cfg.with_overrides(["train.epochs=1"]), tmp_path)
    with pytest.raises(TrainingError, match="train.lr"):
        Trainer(tiny_cfg.with_overrides(["train.lr=0.5"]), tmp_path).fit()


def test_nan_loss_stops_with_a_clear_error(tmp_path, tiny_cfg, monkeypatch):
    trainer = Trainer(tiny_cfg, tmp_path)
    real = trainer.model.head.loss
    monkeypatch.setattr(trainer.model.head, "loss",
                        lambda out, y, crit: {k: v * float("nan") for k, v in real(out, y, crit).items()})
    with pytest.raises(TrainingError, match="not finite at epoch 0, step 0.*Lower train.lr"):
        trainer.fit()


def test_cli_train_then_evaluate(tmp_path):
    run = tmp_path / "run"
    args = ["data.max_per_class=8", "data.shapes.test_per_class=8", "model.embed_dim=16"]
    subprocess.run([sys.executable, "-m", "core", "train", "--config", "configs/shapes_gap.yaml",
                    "--out", str(run), "--epochs", "1", *args], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "core", "evaluate", str(run), "--json", "--k", "1,5"],
                         check=True, capture_output=True, text=True)
    metrics = json.loads(out.stdout)
    assert set(metrics) == {"recall@1", "recall@5", "r_precision", "map_at_r", "nmi"}
    saved = json.loads((run / ckpt.METRICS).read_text())["test"]
    assert metrics["recall@1"] == pytest.approx(saved["recall@1"])
    description = json.loads((run / ckpt.CONFIG).read_text())["description"]
    assert description.endswith("(overridden: data.max_per_class=8, data.shapes.test_per_class=8, model.embed_dim=16)")
    again = subprocess.run([sys.executable, "-m", "core", "train", "--config", "configs/shapes_gap.yaml",
                            "--out", str(run), "--epochs", "1", *args], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]  # the same command again: same config, nothing to redo
    bad = subprocess.run([sys.executable, "-m", "core", "evaluate", str(tmp_path / "missing")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_proxy_anchor_trains_with_global_class_ids(tmp_path, tiny_cfg):
    cfg = tiny_cfg.with_overrides(["train.loss=proxy_anchor", "train.miner=null", "train.epochs=1"])
    metrics = train(cfg, tmp_path)   # shapes train labels go up to 62 with only 26 train classes
    assert np.isfinite(metrics["test"]["map_at_r"])


def _folder(root, n_classes: int, per_class: int = 4):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(n_classes):
        (root / f"class_{c}").mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"class_{c}" / f"{k}.png")
    return root


def _folder_cfg(root):
    from core.config import RunConfig

    return RunConfig().with_overrides(["data.name=folder", f"data.root={root}", "data.image_size=16",
                                       "model.embed_dim=8", "train.epochs=1", "train.batch_size=8"])


def test_one_train_class_is_refused_with_a_clear_error(tmp_path):
    """Two classes split into one train and one test class: nothing to learn a metric from."""
    cfg = _folder_cfg(_folder(tmp_path / "two", 2))
    with pytest.raises(TrainingError, match="at least 2 classes"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_too_few_classes_for_validation_warns_and_keeps_the_last_epoch(tmp_path, caplog):
    import logging

    cfg = _folder_cfg(_folder(tmp_path / "six", 6)).with_overrides(["train.epochs=2"])  # 3 train classes
    with caplog.at_level(logging.WARNING, logger="core.train"):
        metrics = train(cfg, tmp_path / "run")
    assert any("too few to hold some out for validation" in r.getMessage() for r in caplog.records)
    assert metrics["best_epoch"] == 1
