"""Progress as JSON lines: `python -m core train` appends {"phase", "done", "total", "eta_s", "time"} lines to
RUN_DIR/progress.jsonl for every epoch and phase, and the Train page turns them into one bar per phase with
its ETA (dashboard.jobs.progress_bars), instead of parsing the terminal's tqdm text."""
import json
import os
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.__main__ import main
from core.progress import ProgressLog, read_progress
from core.run_dir import PROGRESS
from dashboard import jobs
from dashboard_testing import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_short_training_run_writes_epoch_and_phase_lines(tmp_path):
    out = tmp_path / "run"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.epochs")]
    assert main(["train", "--config", str(ROOT / "configs" / "shapes_gap.yaml"), "--out", str(out),
                 "--epochs", "1", *overrides]) == 0
    lines = read_progress(out / PROGRESS)
    assert lines and all({"phase", "done", "total", "eta_s", "time"} <= set(line) for line in lines)
    phases = [line["phase"] for line in lines]
    assert "epoch 1/1" in phases
    assert any("embedding" in p for p in phases) and any("k-means" in p for p in phases)
    last_epoch = [line for line in lines if line["phase"] == "epoch 1/1"][-1]
    assert last_epoch["done"] == last_epoch["total"] and last_epoch["eta_s"] == 0
    assert all(line["eta_s"] is not None for line in lines if line["done"] > 0)
    assert [line["time"] for line in lines] == sorted(line["time"] for line in lines)
    # every evaluation phase reports (the first and last step of a phase are always written), and the
    # starting weights are scored before the first epoch
    val_embedding = [line for line in lines if line["phase"].startswith("val classes: embedding")]
    assert val_embedding and val_embedding[-1]["done"] == val_embedding[-1]["total"]
    assert any(p.startswith(("test classes: embedding", "test: embedding")) for p in phases)
    assert "test: nearest neighbours + k-means (NMI)" in phases and "val: nearest neighbours + k-means (NMI)" in phases
    assert any(p.startswith("val classes: embedding") for p in phases[:phases.index("epoch 1/1")])

    bars = jobs.progress_bars(lines)
    assert bars[0].label == "epochs" and bars[0].fraction == 1.0 and "done" in bars[0].text
    assert all(bar.fraction == 1.0 for bar in bars)                          # the run finished every phase
    assert len({bar.label for bar in bars}) == len(bars) >= 3                 # one bar per phase


def test_bars_with_eta_from_lines():
    lines = [
        {"phase": "epoch 1/4", "done": 1, "total": 10, "eta_s": 9.0, "time": 100.0, "message": "epoch 1/4 loss 0.9"},
        {"phase": "epoch 1/4", "done": 10, "total": 10, "eta_s": 0.0, "time": 108.0, "message": "epoch 1/4 loss 0.8"},
        {"phase": "val: embedding 40 images", "done": 2, "total": 2, "eta_s": 0.0, "time": 109.0},
        {"phase": "epoch 2/4", "done": 5, "total": 10, "eta_s": 5.0, "time": 115.0, "message": "epoch 2/4 loss 0.7"},
        {"phase": "val: embedding 40 images", "done": 1, "total": 2, "eta_s": 1.5, "time": 116.0},
    ]
    epochs, val = jobs.progress_bars(lines)
    assert epochs.label == "epochs" and epochs.fraction == pytest.approx((1 + 0.5) / 4)
    # 5 s left in epoch 2, then 2 more epochs at the pace so far (first lines of epochs 1 and 2 at 100 s and
    # 115 s: 15 s per epoch, validation included): 5 + 2 · 15 = 35 s
    assert "epoch 2/4 loss 0.7" in epochs.text and "about 35 s left" in epochs.text
    assert val.label == "val: embedding 40 images" and val.fraction == 0.5       # its latest state
    assert "1/2" in val.text and "about 2 s left" in val.text
    assert jobs.progress_bars([]) == []
    assert jobs.format_eta(75) == "1 min 15 s" and jobs.format_eta(3 * 3600 + 120) == "3 h 02 min"


def test_progress_log_eta_throttle_and_partial_lines(tmp_path):
    now = [0.0]
    log = ProgressLog(tmp_path / PROGRESS, min_interval=0.5, clock=lambda: now[0])
    for step, at in [(0, 0.0), (1, 2.0), (2, 2.1), (3, 2.2), (4, 4.0), (10, 5.0)]:
        now[0] = at
        log(step, 10, "test: embedding 100 images")
    lines = read_progress(tmp_path / PROGRESS)
    assert [line["done"] for line in lines] == [0, 1, 4, 10]                  # 2 and 3 came within 0.5 s
    assert lines[0]["eta_s"] is None                                         # no step done: no rate yet
    assert lines[1]["eta_s"] == pytest.approx(2.0 / 1 * 9)                   # 2 s per step, 9 steps left
    assert lines[2]["eta_s"] == pytest.approx(4.0 / 4 * 6) and lines[3]["eta_s"] == 0
    with open(tmp_path / PROGRESS, "a") as fh:
        fh.write('{"phase": "UMAP layout", "do')                            # a line still being written
    assert len(read_progress(tmp_path / PROGRESS)) == 4
    assert read_progress(tmp_path / "missing.jsonl") == []
    ProgressLog(tmp_path / PROGRESS, fresh=True)                             # a new command starts afresh:
    assert read_progress(tmp_path / PROGRESS) == []                          # old phases never show as current


def test_train_page_draws_a_bar_per_phase(tmp_path, monkeypatch):
    """The Train page reads the job's progress.jsonl: a running job shows its epochs and phases with ETAs."""
    from dashboard import background
    from dashboard_testing import demo_runs

    monkeypatch.setenv("METRICLENS_AUTO_UMAP", "0")  # never start UMAP's numba JIT in a test
    shown = str(demo_runs(tmp_path / "demo", 1)[0].resolve())
    monkeypatch.setenv("METRICLENS_RUNS", str(Path(shown).parent))

    run = tmp_path / "busy_run"
    run.mkdir()
    lines = [{"phase": "epoch 3/5", "done": 4, "total": 8, "eta_s": 6.0, "time": time.time(),
              "message": "epoch 3/5 loss 0.42"},
             {"phase": "val: embedding 40 images", "done": 2, "total": 2, "eta_s": 0.0, "time": time.time()}]
    (run / PROGRESS).write_text("".join(json.dumps(line) + "\n" for line in lines))
    job = jobs.TrainJob(run.name, run, [sys.executable, "-c", "import time; time.sleep(120)"], owner="me").start()
    background.training_jobs().jobs[str(run)] = job
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.session_state["run"] = shown
        at.session_state["_session_owner"] = "me"
        at.run()
        at.switch_page("dashboard/pages/train.py").run()
        assert not at.exception, [e.value for e in at.exception]
        bars = [(p.proto.value, p.proto.text) for p in at.get("progress")]
        assert any("epoch 3/5 loss 0.42" in text and "left" in text for _, text in bars), bars
        assert any(text.startswith("val: embedding 40 images: 2/2") and "done" in text for _, text in bars), bars
    finally:
        job.cancel(grace=5)
        background.training_jobs().jobs.pop(str(run), None)


def test_an_unwritable_progress_file_does_not_stop_the_work(tmp_path, caplog):
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the run folder should be")
    log = ProgressLog(blocked / PROGRESS, fresh=True)
    log(1, 2, "epoch 1/1 loss 0.5")                                          # no exception
    log(2, 2, "epoch 1/1 loss 0.4")
    assert log.failed and "progress is not logged" in caplog.text
