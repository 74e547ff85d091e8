import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from core import checkpoint as ckpt
from core.train import Trainer, TrainingError, train


def test_run_directory_and_learning(tiny_run, tiny_cfg):
    tmp_path, metrics = tiny_run
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
    assert len(history) == 1 + 1 + tiny_cfg.train.epochs and "val_map_at_r" in history[0]  # header, start, epochs
    assert history[1].startswith("-1,") and saved["improved_over_start"] is True and saved["best_epoch"] >= 0
    assert saved["start"]["val"]["val_map_at_r"] < saved["val"]["val_map_at_r"]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_cfg, tiny_run):
    straight = tiny_run[0]

    def interrupt_in_second_epoch(step, total, message):
        if message.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg, tmp_path / "resumed", progress=interrupt_in_second_epoch).fit()
    assert ckpt.load_resume(tmp_path / "resumed" / ckpt.RESUME)["epoch"] == 0
    trainer = Trainer(tiny_cfg, tmp_path / "resumed")
    trainer.fit()
    a = ckpt.load_resume(straight / ckpt.RESUME)
    b = ckpt.load_resume(tmp_path / "resumed" / ckpt.RESUME)
    assert a["epoch"] == b["epoch"] == 1 and len(b["history"]) == 3  # start + 2 epochs
    start_row = {k: v for k, v in b["history"][0].items() if k.startswith("val_")}
    assert json.loads((tmp_path / "resumed" / ckpt.METRICS).read_text())["start"]["val"] == pytest.approx(start_row)
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
    with pytest.raises(TrainingError, match="not finite at epoch 0, step 0.*Lower train.lr.*starting weights"):
        trainer.fit()
    saved = json.loads((tmp_path / ckpt.METRICS).read_text())  # the starting point was still scored and kept
    assert saved["best_epoch"] == -1 and saved["improved_over_start"] is False and "not finite" in saved["stopped"]
    assert (tmp_path / ckpt.HISTORY).read_text().count("\n") == 2  # header + start: no half epoch recorded


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / ckpt.WEIGHTS))


def test_lr_zero_keeps_the_starting_weights_and_says_so(tmp_path, tiny_cfg, caplog):
    import logging

    trainer = Trainer(tiny_cfg.with_overrides(["train.lr=0"]), tmp_path)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="core.train"):
        metrics = trainer.fit()
    assert metrics["best_epoch"] == -1 and metrics["improved_over_start"] is False
    assert "train.lr=0" in metrics["stopped"] and "no epoch was run" in metrics["stopped"]
    assert any("run stopped early: train.lr=0" in r.getMessage() for r in caplog.records)
    saved = _weights(tmp_path)
    assert all(torch.equal(saved[k], v) for k, v in start.items())
    assert json.loads((tmp_path / ckpt.METRICS).read_text())["start"]["val"]["val_recall@1"] > 0
    assert len((tmp_path / ckpt.HISTORY).read_text().splitlines()) == 2  # header + start row: no epoch spent


def test_negative_learning_rate_is_refused(tmp_path, tiny_cfg):
    with pytest.raises(TrainingError, match="train.backbone_lr=-0.1 is not a learning rate"):
        Trainer(tiny_cfg.with_overrides(["train.backbone_lr=-0.1"]), tmp_path)


def test_a_run_that_does_not_learn_returns_its_start(tmp_path, tiny_cfg, monkeypatch, caplog):
    """Every epoch scores worse than the start on validation (made so by lowering what validate() reports
    after the start): the run must hand back the starting weights and say that training did not help."""
    import logging

    trainer = Trainer(tiny_cfg, tmp_path)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real_validate, calls = trainer.validate, []

    def worse_after_start():
        calls.append(1)
        return {k: v - (0.5 if len(calls) > 1 else 0.0) for k, v in real_validate().items()}

    monkeypatch.setattr(trainer, "validate", worse_after_start)
    with caplog.at_level(logging.WARNING, logger="core.train"):
        metrics = trainer.fit()
    assert len(calls) == 1 + tiny_cfg.train.epochs
    assert metrics["best_epoch"] == -1 and metrics["improved_over_start"] is False
    assert metrics["val"] == metrics["start"]["val"]
    assert any("did not improve on the starting weights" in r.getMessage() for r in caplog.records)
    saved = _weights(tmp_path)
    assert all(torch.equal(saved[k], v) for k, v in start.items())


@pytest.mark.parametrize("frozen_bn", [False, True])
def test_warmup_freezes_the_backbone_then_trains_it_as_configured(tmp_path, tiny_cfg, frozen_bn, caplog):
    """Epoch 0 (warm-up): no backbone weight or BN statistic moves, the projection does. Epoch 1: the
    backbone trains again, except what the config keeps frozen (BN affine and statistics with frozen_bn)."""
    import logging

    cfg = tiny_cfg.with_overrides(["train.warmup_epochs=1", f"model.frozen_bn={str(frozen_bn).lower()}"])
    trainer = Trainer(cfg, tmp_path)
    bn_names = {n for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    is_bn = lambda name: name.rsplit(".", 1)[0] in bn_names  # noqa: E731
    snapshots = [{k: v.clone() for k, v in trainer.model.state_dict().items()}]
    grad_flags = []
    real_epoch = trainer.train_epoch

    def recording_epoch(epoch):
        grad_flags.append({n: p.requires_grad for n, p in trainer.model.named_parameters()})
        row = real_epoch(epoch)
        snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return row

    trainer.train_epoch = recording_epoch
    with caplog.at_level(logging.INFO, logger="core.train"):
        trainer.fit()
    before, warm, after = snapshots
    backbone = [k for k in before if k.startswith("backbone.") and before[k].is_floating_point()]
    assert all(torch.equal(before[k], warm[k]) for k in backbone)           # weights and running stats
    assert not torch.equal(before["head.proj.weight"], warm["head.proj.weight"])
    conv = [k for k in backbone if not is_bn(k)]
    bn = [k for k in backbone if is_bn(k)]
    assert conv and bn
    assert any(not torch.equal(warm[k], after[k]) for k in conv)
    assert all(torch.equal(warm[k], after[k]) for k in bn) == frozen_bn    # frozen BN stays frozen
    assert not any(v for n, v in grad_flags[0].items() if n.startswith("backbone."))
    assert all(v for n, v in grad_flags[0].items() if n.startswith("head."))
    assert all(v != (frozen_bn and is_bn(n)) for n, v in grad_flags[1].items() if n.startswith("backbone."))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("epoch 0: warm-up: backbone frozen") for m in messages)
    assert any(m.startswith("epoch 1: backbone unfrozen") for m in messages)


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


def test_a_run_trained_further_is_unfinished_until_its_new_artifacts_are_written(tmp_path, tiny_cfg, tiny_run,
                                                                                  monkeypatch):
    """metrics.json marks a finished run: training the same run further removes it first, and finishing
    writes it only after the artifacts, so a run killed on the way never pairs new weights with old results."""
    import shutil

    import core.artifacts

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)  # the module's finished tiny run, trained further below
    assert (run / ckpt.METRICS).exists()

    def killed_while_writing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(core.artifacts, "write_artifacts", killed_while_writing)
    longer = tiny_cfg.with_overrides([f"train.epochs={tiny_cfg.train.epochs + 1}"])
    with pytest.raises(KeyboardInterrupt):
        Trainer(longer, run).fit()
    assert not (run / ckpt.METRICS).exists()


def test_cosine_schedule_sets_every_groups_lr_each_epoch_and_a_resumed_run_continues_it(tmp_path, tiny_cfg,
                                                                                          monkeypatch):
    cfg = tiny_cfg.with_overrides(["train.lr_schedule=cosine", "train.epochs=3", "train.backbone_lr=1e-4",
                                   "train.lr=1e-3"])
    seen: list[list[float]] = []  # the lrs the optimiser steps with, per epoch
    real_epoch = Trainer.train_epoch

    def record(self, epoch):
        seen.append([g["lr"] for g in self.optimizer.param_groups])
        if epoch == 1 and len(seen) == 2:
            raise KeyboardInterrupt  # stop the first attempt inside epoch 1, before it trains
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", record)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path).fit()
    Trainer(cfg, tmp_path).fit()  # resumes at epoch 1
    factors = [1.0, 0.75, 0.25]   # ½(1 + cos(π e / 3))
    assert len(seen) == 4 and seen[1] == seen[2]  # the resumed epoch 1 uses the lrs of the interrupted one
    for lrs, f in zip([seen[0], seen[2], seen[3]], factors):
        assert lrs[0] == pytest.approx(1e-4 * f) and lrs[1] == pytest.approx(1e-3 * f)  # backbone, new layers
    rows = [r for r in ckpt.load_resume(tmp_path / ckpt.RESUME)["history"] if r["epoch"] >= 0]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 * f for f in factors])


def test_unknown_lr_schedule_is_refused(tmp_path, tiny_cfg):
    with pytest.raises(TrainingError, match="lr_schedule"):
        Trainer(tiny_cfg.with_overrides(["train.lr_schedule=step"]), tmp_path)
