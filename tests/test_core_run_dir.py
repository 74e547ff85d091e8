"""The run-directory reader beside the writer: `read_run`, `is_complete`, and one table of file names that no
other module spells (checked on the source: a path literal such as "metrics.json" outside core/run_dir.py fails)."""
import ast
import json
import shutil
from pathlib import Path

import pytest

from core import io, run_dir
from core.run_dir import (ARTIFACT_FILES, ARTIFACTS, CONFIG, EMBEDDINGS, HISTORY, ITEMS, METRICS, WEIGHTS,
                          CheckpointError, is_complete, read_run)
from dashboard_testing import demo_runs

REPO = Path(__file__).resolve().parents[1]
# every file name of the table (the folder name "artifacts" is left out: as a word it has other uses)
NAMES = {getattr(run_dir, n) for n in dir(run_dir)
         if n.isupper() and isinstance(getattr(run_dir, n), str) and "." in getattr(run_dir, n)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return demo_runs(tmp_path_factory.mktemp("runs"), 1)[0]


def test_read_run_of_a_finished_run(finished):
    run = read_run(finished)
    assert run.complete and is_complete(finished)
    assert run.config.model.head and run.config.data.name
    assert set(run.metrics["test"]) >= {"recall@1", "map_at_r"}
    assert run.history and isinstance(run.history[-1]["epoch"], int)           # numbers, not strings
    assert {CONFIG, WEIGHTS, METRICS, HISTORY} <= run.files and set(ARTIFACT_FILES) <= run.artifacts
    assert run.artifact(ITEMS) == Path(finished) / ARTIFACTS / ITEMS


@pytest.mark.parametrize("missing", [METRICS, f"{ARTIFACTS}/{ITEMS}", f"{ARTIFACTS}/{EMBEDDINGS}"])
def test_a_run_missing_a_file_is_not_complete(finished, tmp_path, missing):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    (copy / missing).unlink()
    assert not is_complete(copy)
    run = read_run(copy)                                                         # still readable, says what is there
    assert not run.complete and run.has_model
    assert (run.metrics is None) == (missing == METRICS)


def test_a_run_without_weights_is_complete_but_has_no_model(finished, tmp_path):
    """E.g. imported embeddings: every page that needs only the artifacts can show it."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    (copy / WEIGHTS).unlink()
    assert is_complete(copy) and not run_dir.is_run_dir(copy)
    run = read_run(copy)
    assert run.complete and not run.has_model


def test_folders_that_are_not_runs_say_why(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_run(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_run(tmp_path)
    (tmp_path / CONFIG).write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON.*damaged"):
        read_run(tmp_path)
    assert not is_complete(tmp_path)


def test_io_writes_atomically_and_reads_back(tmp_path):
    import numpy as np

    io.write_json(tmp_path / "a" / "x.json", {"b": 1.5})
    assert io.read_json(tmp_path / "a" / "x.json") == {"b": 1.5}
    io.atomic_save_npy(tmp_path / "x.npy", np.arange(3))
    assert io.read_npy(tmp_path / "x.npy").tolist() == [0, 1, 2]
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(io.FileFormatError, match="bad.npy"):
        io.read_npy(tmp_path / "bad.npy")

    def crash(tmp):
        Path(tmp).write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(tmp_path / "a" / "x.json", crash)
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"b": 1.5}   # the old file is intact
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]          # and no temporary is left


def _name_literals(path: Path) -> list[str]:
    """String constants that are exactly a run-directory file name, or an f-string building coords_*.npy."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES:
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
        if isinstance(node, ast.JoinedStr):
            parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
            if parts and parts[0] == "coords_" and parts[-1] == ".npy":
                found.append(f"{path.relative_to(REPO)}:{node.lineno} coords_*.npy")
    return found


def test_only_run_dir_spells_the_file_names():
    files = [p for folder in ("core", "dashboard", "benchmarks") for p in (REPO / folder).rglob("*.py")]
    files.append(REPO / "app.py")
    spelled = [hit for p in files if p != REPO / "core" / "run_dir.py" for hit in _name_literals(p)]
    assert not spelled, "use the constants of core/run_dir.py: " + "; ".join(spelled)
    assert len(_name_literals(REPO / "core" / "run_dir.py")) >= len(NAMES)     # the check does see literals
