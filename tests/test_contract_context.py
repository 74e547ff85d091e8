"""The training contract: a head's hooks receive a `TrainContext` and never the Trainer, no head module
reaches for the trainer or writes files itself, a head's files land in the run directory through
`ctx.write_artifact`, and `Trainer.step` is one real training step (finite terms, updated weights)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import core.models.heads as heads_package
from core.data import build_datasets
from core.models.heads.base import Head, HeadOutput
from core.registry import HEADS
from core.train import NonFiniteLoss, Trainer
from core.train_context import TrainContext

HEAD_MODULES = sorted(Path(heads_package.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", HEAD_MODULES, ids=[p.stem for p in HEAD_MODULES])
def test_no_head_module_reaches_for_the_trainer_or_writes_files(path):
    source = path.read_text()
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    upward = imported & {"core.train", "core.checkpoint", "core.artifacts", "core.io"}
    assert not upward, f"{path.name} imports {upward}: heads see the run only through TrainContext"
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    arguments = {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args + n.kwonlyargs}
    assert "Trainer" not in names and "trainer" not in arguments, f"{path.name}: hooks take a TrainContext, not the Trainer"
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not calls & {"open", "save", "write_text", "write_bytes"}, f"{path.name} writes files itself"


class ProbeHead(Head):
    """GAP + linear, recording what every hook receives, writing through the context."""

    def __init__(self, in_channels: int, embed_dim: int, num_classes=None):
        super().__init__(in_channels, embed_dim, num_classes)
        self.out_dim = embed_dim
        self.proj = nn.Linear(in_channels, embed_dim)
        self.calls: list[tuple[str, object, object]] = []

    def forward(self, features):
        return HeadOutput(F.normalize(self.proj(features.mean((2, 3))), dim=-1))

    def on_train_start(self, ctx):
        self.calls.append(("train_start", ctx, None))

    def on_epoch_start(self, ctx, epoch):
        self.calls.append(("epoch_start", ctx, epoch))

    def epoch_batches(self, ctx, epoch):
        self.calls.append(("epoch_batches", ctx, epoch))
        return None

    def on_batch_start(self, ctx, tag):
        self.calls.append(("batch_start", ctx, tag))

    def on_epoch_end(self, ctx, epoch, metrics):
        self.calls.append(("epoch_end", ctx, epoch))
        ctx.write_artifact("probe.json", {"epoch": epoch, "ctx_epoch": ctx.epoch, "train_items": len(ctx.train_labels)})
        ctx.write_artifact("probe.npy", ctx.embed_train_set()[:, :3])


@pytest.fixture(scope="module")
def tiny(request):
    cfg = request.getfixturevalue("tiny_cfg_module")
    return cfg, build_datasets(cfg.data, seed=cfg.train.seed)


@pytest.fixture(scope="module")
def tiny_cfg_module():
    from conftest import ROOT
    from core.config import RunConfig

    return RunConfig.load(ROOT / "configs" / "shapes_gap.yaml").with_overrides(
        ["data.max_per_class=4", "data.image_size=32", "data.shapes.test_per_class=4", "train.epochs=2",
         "train.eval_every=2", "train.batch_size=32", "model.embed_dim=16", "train.eval_start=false"])


def test_hooks_receive_the_context_and_write_through_it(tmp_path, tiny):
    cfg, splits = tiny
    HEADS.register("contract_probe")(ProbeHead)
    try:
        trainer = Trainer(cfg.with_overrides(["model.head=contract_probe"]), tmp_path, splits=splits)
        trainer.fit()
    finally:
        HEADS._items.pop("contract_probe")
    calls = trainer.model.head.calls
    assert [c for c, _, _ in calls if c != "batch_start"] == ["train_start"] + [
        hook for _ in range(cfg.train.epochs) for hook in ("epoch_start", "epoch_batches", "epoch_end")]
    assert sum(c == "batch_start" for c, _, _ in calls) >= cfg.train.epochs
    contexts = {id(ctx) for _, ctx, _ in calls}
    assert contexts == {id(trainer.context)} and isinstance(trainer.context, TrainContext)
    assert not any(isinstance(ctx, Trainer) for _, ctx, _ in calls)
    assert np.array_equal(trainer.context.train_labels, splits.train.labels)
    written = json.loads((tmp_path / "probe.json").read_text())       # the last epoch's, in the run directory
    assert written == {"epoch": 1, "ctx_epoch": 1, "train_items": len(splits.train)}
    embedded = np.load(tmp_path / "probe.npy")
    assert embedded.shape == (len(splits.train), 3) and np.isfinite(embedded).all()
    assert trainer.context.read_artifact("probe.json") == written


def test_a_context_without_a_run_directory_writes_nothing(tmp_path):
    ctx = TrainContext(train_labels=np.array([3, 3, 5, 5]))
    assert ctx.write_artifact("x.json", {"a": 1}) is None and ctx.read_artifact("x.json") is None
    other_rank = TrainContext(train_labels=np.array([3, 3]), run_dir=tmp_path, rank=1)
    assert other_rank.write_artifact("x.json", {"a": 1}) is None and not (tmp_path / "x.json").exists()
    with pytest.raises(RuntimeError, match="no train set"):
        ctx.embed_train_set()


def test_step_is_one_training_step(tmp_path, tiny):
    cfg, splits = tiny
    trainer = Trainer(cfg.with_overrides(["train.miner=null"]), tmp_path, splits=splits)
    x, y, _ = next(iter(trainer.train_loader(0)[0]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    terms = trainer.step((x, y))
    assert set(terms) == {"dml", "loss"} and all(isinstance(v, float) and np.isfinite(v) for v in terms.values())
    assert terms["loss"] == pytest.approx(terms["dml"])
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert len(changed) == len(before), f"not updated: {sorted(set(before) - set(changed))}"

    after_step = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(NonFiniteLoss, match="not finite"):
        trainer.step((x * float("nan"), y))
    for n, p in trainer.model.named_parameters():      # the bad step was never applied
        assert torch.equal(p, after_step[n]), n
