"""Two CPU processes under torchrun (gloo) train the same config as a single process."""
import json
import subprocess
import sys

import numpy as np
import pytest

ARGS = ["--config", "configs/shapes_gap.yaml", "--epochs", "1", "data.max_per_class=8",
        "data.shapes.test_per_class=8", "model.embed_dim=16", "train.batch_size=32"]


@pytest.mark.slow
def test_torchrun_two_processes_matches_single_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "core", "train", "--out", str(single), *ARGS], check=True,
                   capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "core", "train", "--out", str(multi), *ARGS],
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((multi / "metrics.json").read_text())
    assert set(a["test"]) == set(b["test"])
    ea, eb = np.load(single / "artifacts/embeddings.npy"), np.load(multi / "artifacts/embeddings.npy")
    assert ea.shape == eb.shape and np.isfinite(eb).all()
    chance = 1 / len(np.unique(np.load(multi / "artifacts/labels.npy")))
    # each rank saw half the batches of a global batch twice as large: comparable, not identical
    assert b["test"]["recall@1"] > 2 * chance
    assert abs(a["test"]["recall@1"] - b["test"]["recall@1"]) < 0.25


@pytest.mark.slow
def test_torchrun_trains_parameters_used_after_the_embedding(tmp_path):
    """GSP's ZSR class embeddings, CSA's deep-supervision head and the CIA branch are used only in the loss,
    after the embedding: DDP must see them (it wraps the whole training step, not the bare model), or its
    backward fails (a parameter marked unused in forward gets a gradient) or leaves them unsynchronised."""
    from safetensors.numpy import load_file

    from core.config import BlockConfig, RunConfig

    cfg = RunConfig.load("configs/shapes_gsp.yaml")
    cfg.model.blocks = [BlockConfig("csa", "stage2", {"groups": 2, "num_bases": 4})]
    cfg.model.cia = RunConfig.load("configs/shapes_cia.yaml").model.cia
    cfg.save(tmp_path / "all.json")
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "core", "train", "--out", str(out), "--config", str(tmp_path / "all.json"),
                           "--epochs", "1", "data.max_per_class=8", "data.shapes.test_per_class=4",
                           "model.embed_dim=16", "train.batch_size=32"],
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = load_file(out / "weights.safetensors")
    for prefix in ("cia.", "head.zsr", "blocks."):
        assert any(k.startswith(prefix) for k in weights), (prefix, sorted(weights)[:20])
    assert all(np.isfinite(v).all() for v in weights.values())


def test_every_rank_takes_the_same_number_of_steps(tmp_path):
    """DDP all-reduces every step: a rank with one batch more waits forever at its last step. The epoch's
    batches are cut to a multiple of the world size before they are dealt out, so the shards are disjoint
    and equally long (on an odd number of batches the old split hung torchrun)."""
    from core.config import RunConfig
    from core.train import Trainer

    cfg = RunConfig.load("configs/shapes_gap.yaml").with_overrides(
        ["data.max_per_class=12", "data.shapes.test_per_class=4", "model.embed_dim=8", "train.batch_size=32"])
    trainer = Trainer(cfg, tmp_path / "run")
    odd_seen = False
    for epoch in range(4):
        trainer.world, trainer.rank = 1, 0
        odd_seen |= len(trainer.train_loader(epoch)[0]) % 2 == 1
        shards = []
        for rank in range(2):
            trainer.world, trainer.rank = 2, rank
            loader, tags = trainer.train_loader(epoch)
            shards.append([tuple(b) for b in loader.batch_sampler])
            assert len(tags) == len(shards[-1])
        assert len(shards[0]) == len(shards[1]) > 0 and not set(shards[0]) & set(shards[1])
    assert odd_seen, "the test needs an epoch with an odd number of batches"
