"""`make_checkpoints --from`: a finished run of a config sweep is shipped only if its config is the repo's."""
import json
import shutil

import pytest

from benchmarks import make_checkpoints as mc
from core import checkpoint as ckpt


@pytest.fixture
def repo(tiny_run, tmp_path, monkeypatch):
    """A repo whose configs/shapes_gap.yaml is the tiny run's config, and the tiny run as DIR/shapes_gap."""
    run, _ = tiny_run
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "shapes_gap.yaml").write_text((run / ckpt.CONFIG).read_text())
    source = tmp_path / "sweep" / "shapes_gap"
    shutil.copytree(run, source)
    monkeypatch.setattr(mc, "ROOT", tmp_path)
    monkeypatch.setattr(mc, "METHODS", ["gap"])
    return tmp_path, source


def test_from_ships_the_finished_run_without_retraining(repo):
    root, source = repo
    out = root / "checkpoints"
    assert mc.main(["--from", str(source.parent), "--out", str(out), "--no-umap"]) == 0
    shipped = out / "shapes_gap"
    assert (shipped / ckpt.WEIGHTS).read_bytes() == (source / ckpt.WEIGHTS).read_bytes()
    assert not (shipped / ckpt.RESUME).exists()
    trained = json.loads((source / ckpt.METRICS).read_text())
    row = json.loads((out / "summary.json").read_text())["gap"]
    assert row["test"] == trained["test"] and row["seconds"] >= trained["train_seconds"]
    assert "--from" in row["load_average"] and "shapes_gap" in (out / "README.md").read_text()


def test_from_refuses_a_run_trained_with_another_config(repo):
    root, source = repo
    with pytest.raises(SystemExit, match="train.epochs"):   # the repo's schedule, overridden, is not the run's
        mc.main(["--from", str(source.parent), "--out", str(root / "checkpoints"), "--no-umap", "--epochs", "7"])
    assert not (root / "checkpoints" / "shapes_gap").exists()
