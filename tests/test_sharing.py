"""Sharing one server with a class or a lab: loopback by default, the read-only teaching mode, deep
links that never reach the file system, per-session training jobs with limits, reaped children, one
cached model per run, and run directories that survive a killed trainer.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import access, jobs

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from dashboard_testing import demo_runs

    saved = os.environ.get("METRICLENS_AUTO_UMAP")
    os.environ["METRICLENS_AUTO_UMAP"] = "0"  # never start UMAP's ~40 s numba JIT in a test
    yield [str(r.resolve()) for r in demo_runs(tmp_path_factory.mktemp("sharing_runs"), 2)]
    if saved is None:
        os.environ.pop("METRICLENS_AUTO_UMAP", None)
    else:
        os.environ["METRICLENS_AUTO_UMAP"] = saved


@pytest.fixture
def classroom(runs, tmp_path, monkeypatch):
    """A run root with one run and a symlink to a run outside it, and a run elsewhere on disk."""
    root, outside = tmp_path / "class_runs", tmp_path / "private"
    ignore = shutil.ignore_patterns("resume.pt")
    shutil.copytree(runs[0], root / "lesson_run", ignore=ignore)
    shutil.copytree(runs[1], outside / "secret_run", ignore=ignore)
    shutil.copytree(runs[1], outside / "unlinked_run", ignore=ignore)
    (root / "escape").symlink_to(outside / "secret_run", target_is_directory=True)
    monkeypatch.setenv("METRICLENS_RUNS", str(root))
    monkeypatch.setenv("METRICLENS_MODE", "demo")
    return root.resolve(), (outside / "secret_run").resolve()


def app(**params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def listed(at: AppTest) -> list[str]:
    """Names of the runs in the sidebar's run picker (its labels read 'name · method/backbone · R@1 …')."""
    return [label.split(" · ")[0] for label in at.selectbox(key="w_run").options]


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "title", "info", "error", "warning")
                     for e in at.get(kind))


# ---- loopback by default -----------------------------------------------------------------------------
def test_loopback_by_default_and_sharing_defaults_to_teaching(monkeypatch):
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    make = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, env=dict(
        os.environ, METRICLENS_ADDRESS=""), check=True).stdout
    assert "--server.address 127.0.0.1" in make
    assert "--server.address 0.0.0.0" in subprocess.run(["make", "-n", "share"], cwd=ROOT, capture_output=True,
                                                        text=True, check=True).stdout
    monkeypatch.delenv("METRICLENS_MODE", raising=False)
    assert access.mode("127.0.0.1") == "full" and access.mode("0.0.0.0") == "demo" and access.mode("") == "demo"
    shared = access.startup_message("0.0.0.0", 8501)
    assert "SHARED" in shared and "Teaching mode" in shared and "Not exposed: the Train page" in shared
    assert "127.0.0.1 only" in access.startup_message("127.0.0.1", 8501)
    monkeypatch.setenv("METRICLENS_MODE", "full")  # an explicit override wins, with a warning when shared
    assert access.mode("0.0.0.0") == "full" and "WARNING" in access.startup_message("0.0.0.0", 8501)
    monkeypatch.setenv("METRICLENS_MODE", "teach")
    with pytest.raises(ValueError, match="not a mode"):
        access.mode("127.0.0.1")


# ---- teaching mode -------------------------------------------------------------------------------------
def test_teaching_mode_has_no_train_page_and_no_folder_boxes(classroom):
    at = app(page="train")
    assert not at.exception
    assert at.title[0].value == "Explore the embedding"  # the link's page=train does not exist here
    assert "Teaching mode" in texts(at)
    assert not [t for t in at.text_input if t.label == "Another folder of runs"]
    assert "lesson_run" in listed(at) and not {"escape", "secret_run"} & set(listed(at))  # no escaping symlink
    at.session_state["extra_runs_root"] = str(classroom[1].parent)  # a folder smuggled into the session
    at.run()
    assert "lesson_run" in listed(at) and "secret_run" not in listed(at)
    with pytest.raises(ValueError, match="Could not find a navigation page"):  # not in the navigation
        at.switch_page("dashboard/pages/train.py")
    alone = AppTest.from_file(str(ROOT / "dashboard" / "pages" / "train.py"), default_timeout=60).run()
    assert "Training is off in teaching mode" in texts(alone) and not alone.button  # and guarded itself
    at.switch_page("dashboard/pages/retrieval.py").run()
    at.radio(key="retrieval_source").set_value("Upload an image").run()
    assert not at.exception and "Upload a query image" in at.get("file_uploader")[0].proto.label  # uploads stay


def _spy_filesystem(monkeypatch, marker: str) -> list[str]:
    """Record every stat/listdir of a path containing `marker` (how Path.exists/resolve/iterdir look)."""
    seen: list[str] = []
    for name in ("stat", "lstat", "listdir", "scandir"):
        real = getattr(os, name)

        def spy(path=".", *args, _real=real, **kwargs):
            if marker in str(path):
                seen.append(str(path))
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(os, name, spy)
    return seen


# links that the listing never touches, so no file access may mention them; and links to the escaping
# symlink and its target, which the listing itself resolves (and must then leave out)
PROBES = ["../../etc/passwd", "/etc/../etc/metriclens_probe", "~/..", "OUTSIDE/unlinked_run",
          "ROOT/../private/unlinked_run"]


@pytest.mark.parametrize("link", PROBES + ["OUTSIDE/secret_run", "escape", "ROOT/escape"])
def test_deep_links_open_only_listed_runs(classroom, monkeypatch, link):
    from dashboard.catalog import DEFAULT_RUNS

    root, secret = classroom
    link = link.replace("OUTSIDE", str(secret.parent)).replace("ROOT", str(root))
    seen = _spy_filesystem(monkeypatch, link)
    at = app(run=link, compare=link)
    assert not at.exception
    if link in PROBES or "unlinked_run" in link:
        assert not seen, f"the link's text reached the file system: {seen}"
    for key in ("run", "compare_run"):
        opened = at.session_state[key] if key in at.session_state else str(root)
        assert Path(opened).is_relative_to(root) or Path(opened).is_relative_to(DEFAULT_RUNS.resolve()), opened
    assert not {"escape", "secret_run", "unlinked_run"} & set(listed(at))
    assert any("not one of the listed runs" in w.value for w in at.warning)
    assert at.query_params["run"] == Path(at.session_state["run"]).name  # rewritten to the run shown


def test_full_mode_still_opens_a_linked_run_folder(classroom, monkeypatch):
    """The spy above would see the link (the local full mode looks the folder up): it can fail."""
    monkeypatch.setenv("METRICLENS_MODE", "full")
    unlinked = classroom[1].parent / "unlinked_run"
    seen = _spy_filesystem(monkeypatch, str(unlinked))
    at = app(run=str(unlinked))
    assert seen and at.session_state["run"] == str(unlinked)


def test_teaching_mode_opens_a_listed_run_by_name(classroom, runs):
    at = app(run="lesson_run", page="retrieval", query="3")
    assert not at.exception
    assert at.title[0].value == "Retrieval" and at.session_state["query"] == 3
    assert at.session_state["run"] == str(classroom[0] / "lesson_run")


# ---- per-session jobs ----------------------------------------------------------------------------------
@pytest.fixture
def board(tmp_path):
    board = jobs.JobBoard(limit=1)
    yield board
    for job in board.jobs.values():
        if job.returncode is None:
            job.process.kill()


def test_one_job_per_session_and_a_server_limit(board, tmp_path):
    def job(owner, name):
        return jobs.TrainJob(name, tmp_path / name, SLEEPER, owner)
    board.start(job("alice", "a"))
    with pytest.raises(jobs.JobLimit, match="one per session"):
        board.start(job("alice", "a2"))
    with pytest.raises(jobs.JobLimit, match="METRICLENS_MAX_JOBS=1"):
        board.start(job("bob", "b"))
    with pytest.raises(jobs.JobLimit, match="another session"):
        board.cancel("bob", str(tmp_path / "a"))
    with pytest.raises(jobs.JobLimit, match="another session"):
        board.restart("bob", str(tmp_path / "a"))
    assert board.jobs[str(tmp_path / "a")].status == "running"
    board.limit = 2
    with pytest.raises(jobs.JobLimit, match="being trained by another session"):
        board.start(job("bob", "a"))
    board.start(job("bob", "b"))
    assert [j.name for j in board.others_running("alice")] == ["b"] and list(board.mine("alice")) == [str(tmp_path / "a")]
    assert "nothing was kept" in board.cancel("alice", str(tmp_path / "a"))  # it never completed an epoch
    assert board.jobs[str(tmp_path / "a")].status == "cancelled"


def test_a_shared_job_runs_once_per_output_and_again_when_it_is_gone(tmp_path):
    """Jobs that make a file every session reads (UMAP, thumbnails, ...) are nobody's: a second session asking
    gets the running or finished job, not a second process; once its file is gone (a retrained run) it runs
    anew; a failed one is reported, not retried in a loop; and no shared job counts against the training limit."""
    board = jobs.JobBoard(limit=1)
    out = tmp_path / "out.txt"

    def job(code):
        return jobs.Job("out", [sys.executable, "-c", code, str(out)], tmp_path / "log", tmp_path / "progress.jsonl",
                        output=out)
    write = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text('made')"
    first = board.start(job(write))
    assert board.start(job(write)) is first                                   # asked again while it runs
    assert first.wait() == 0 and out.read_text() == "made" and first.status == "finished"
    assert board.start(job(write)) is first                                   # its file is there: not again
    board.start(jobs.TrainJob("t", tmp_path / "t", SLEEPER, "alice"))          # the training limit is not reached
    out.unlink()
    second = board.start(job(write))
    assert second is not first and second.wait() == 0 and out.exists()
    out.unlink()
    failing = board.start(job("import sys; print('no embeddings here'); sys.exit(3)"))
    assert failing.wait() == 3 and failing.status == "failed" and "no embeddings here" in failing.error()
    assert board.start(job(write)) is failing                                 # said, not retried
    for started in board.jobs.values():
        if started.returncode is None:
            started.process.kill()


def test_max_jobs_default_and_override(monkeypatch):
    monkeypatch.delenv("METRICLENS_MAX_JOBS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert access.max_jobs() == 1
    monkeypatch.setenv("METRICLENS_MAX_JOBS", "3")
    assert access.max_jobs() == 3
    monkeypatch.setenv("METRICLENS_MAX_JOBS", "0")
    with pytest.raises(ValueError, match="whole number"):
        access.max_jobs()


def test_other_sessions_see_busy_but_not_the_job(runs, tmp_path, monkeypatch):
    from dashboard import background

    monkeypatch.setenv("METRICLENS_MODE", "full")
    board = background.training_jobs()
    job = board.start(jobs.TrainJob("alices_run", tmp_path / "alices_run", SLEEPER, "alice"))
    try:
        def train_page(owner):
            at = AppTest.from_file(APP, default_timeout=120)
            at.session_state["run"], at.session_state["_session_owner"] = runs[0], owner
            at.run()
            return at.switch_page("dashboard/pages/train.py").run()
        bob = train_page("bob")
        assert not bob.exception
        assert any("machine is busy: 1 training job" in i.value for i in bob.info)
        assert "alices_run" not in texts(bob) and not [b for b in bob.button if (b.key or "").startswith("cancel_")]
        stem = Path(bob.selectbox(key="train_config").value).stem
        bob.text_input(key=f"train_name_{stem}").set_value("bobs_run")
        bob.text_input(key=f"train_root_{stem}").set_value(str(tmp_path))
        bob.button[0].click().run()  # the server limit (1 job) is reached: a clear message, no job
        assert any("The server is busy" in e.value for e in bob.error)
        assert str(tmp_path / "bobs_run") not in board.jobs
        alice = train_page("alice")
        assert any(b.key == f"cancel_{tmp_path / 'alices_run'}" for b in alice.button)
    finally:
        job.process.kill()
        board.jobs.pop(str(tmp_path / "alices_run"), None)


def test_cancel_says_what_was_kept(runs, tmp_path):
    import torch

    run = tmp_path / "stopped"
    shutil.copytree(runs[0], run, ignore=shutil.ignore_patterns("resume.pt", "metrics.json", "artifacts"))
    assert "nothing was kept" in jobs.kept_after_stop(run)  # history.csv alone cannot resume
    torch.save({"epoch": 2, "model": {}}, run / "resume.pt")
    from safetensors import safe_open
    with safe_open(str(run / "weights.safetensors"), "pt") as fh:
        best = int(fh.metadata()["epoch"])
    kept = jobs.kept_after_stop(run)
    assert "3 completed epoch(s) are kept: resume.pt holds epoch 3" in kept
    assert (f"best weights so far (epoch {best + 1})" if best >= 0 else "untrained starting weights") in kept
    assert "test metrics and artifacts are not written" in kept
    (run / "weights.safetensors").unlink()
    assert "no best weights yet" in jobs.kept_after_stop(run)


# ---- reaped children -------------------------------------------------------------------------------------
def _state_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None  # gone: reaped


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_finished_children_are_reaped_without_polling(tmp_path):
    from dashboard import background

    with open(tmp_path / "log", "w") as log:
        quick = jobs.spawn([sys.executable, "-c", "pass"], log)
    umap = background.start_umap(str(tmp_path / "no_such_run")).process  # fails at once: a finished UMAP child
    deadline = time.time() + 30
    while time.time() < deadline and any(_state_of(p.pid) is not None for p in (quick, umap)):
        time.sleep(0.1)
    assert _state_of(quick.pid) is None and _state_of(umap.pid) is None, "a finished child is left a zombie"
    assert quick.returncode == 0 and umap.returncode != 0


# ---- one model copy ---------------------------------------------------------------------------------
def test_model_cache_loads_once_and_evicts_least_recently_used():
    import torch

    from dashboard.model_cache import ModelCache

    loads: list[str] = []

    def loader(name, size):
        def load():
            loads.append(name)
            time.sleep(0.05)  # so concurrent sessions overlap
            return torch.nn.Linear(size, 1, bias=False), name
        return load
    cache = ModelCache(budget=3 * 1000 * 4)  # three 1000-weight float32 models
    models = []
    threads = [threading.Thread(target=lambda: models.append(cache.get("a", 1.0, loader("a", 1000)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["a"] and all(m[0] is models[0][0] for m in models)  # eight sessions, one copy
    for name in "bcd":
        cache.get(name, 1.0, loader(name, 1000))
    assert list(cache.entries) == ["b", "c", "d"] and cache.loaded_bytes() <= cache.budget  # "a" left first
    cache.get("c", 1.0, loader("c", 1000))  # a hit makes c the most recent
    cache.get("c", 2.0, loader("c", 1000))  # retrained: replaces its own entry
    assert loads[-1] == "c" and list(cache.entries) == ["b", "d", "c"] and cache.entries["c"][0] == 2.0


def test_the_cache_modules_keep_no_global_torch_settings_or_salted_keys():
    from dashboard import caching

    modules = "caching, catalog, model_cache, artifacts, dataset, explanations, background"
    code = (f"import torch; torch.set_num_threads(2); from dashboard import {modules}; "
            "assert torch.get_num_threads() == 2, 'an import changed the thread count'; print(caching.digest('x'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONHASHSEED="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == caching.digest("x")  # the same key in another process (another hash seed)


# ---- crash safety --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_trainer_loses_no_completed_epoch(tmp_path):
    """SIGKILL (no clean stop) after the first epoch: every file a reader sees is whole, the run is listed
    as unfinished, and the same command resumes after the kept epoch."""
    from core import checkpoint as ckpt
    from dashboard.catalog import summary as run_summary
    from dashboard_testing import TINY_OVERRIDES

    out = tmp_path / "killed"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.epochs")]
    command = jobs.train_command(str(ROOT / "configs" / "shapes_gap.yaml"), str(out), 3, 0, overrides)
    with open(tmp_path / "log", "w") as log:
        child = jobs.spawn(command, log)
    deadline = time.time() + 180
    while not (out / ckpt.RESUME).exists() and time.time() < deadline and child.returncode is None:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert (out / ckpt.RESUME).exists(), (tmp_path / "log").read_text()[-2000:]
    before = (out / ckpt.HISTORY).read_text().splitlines()
    assert not (out / ckpt.METRICS).exists(), "killed too late: the run had finished"
    ckpt.load_config(out), ckpt.load_run(out)  # whole
    kept = ckpt.load_resume(out / ckpt.RESUME)["epoch"] + 1
    assert len(before) >= 2 + kept
    assert not run_summary(out)["complete"]  # listed as unfinished, never read as a finished run
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp") and not p.name.startswith(".")]
    assert not leftovers, leftovers  # only dot-named temporaries may remain, and nothing reads them
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = (out / ckpt.HISTORY).read_text().splitlines()
    # header, the starting weights' row (epoch -1), 3 epochs; the kept ones unchanged
    assert len(after) == 5 and after[:2 + kept] == before[:2 + kept]


def test_children_stop_cleanly_when_the_server_dies(tmp_path):
    """A server killed with SIGKILL: its training child gets SIGINT (the trainer's clean stop after the
    last completed epoch) instead of training on, unseen by the next server and outside its limits."""
    child = ("import signal, sys, time, pathlib\n"
             "def stop(*_): pathlib.Path(sys.argv[1]).write_text('SIGINT'); sys.exit(130)\n"
             "signal.signal(signal.SIGINT, stop)\n"
             "pathlib.Path(sys.argv[1] + '.ready').write_text('ok')\n"
             "time.sleep(60)\n")
    mark = tmp_path / "stopped"
    server = ("import sys, time; from dashboard import jobs\n"
              f"jobs.spawn([sys.executable, '-c', {child!r}, {str(mark)!r}], open({str(tmp_path / 'log')!r}, 'w'))\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", server], cwd=ROOT)
    deadline = time.time() + 30
    while not Path(str(mark) + ".ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    while not mark.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert mark.exists() and mark.read_text() == "SIGINT", "the child outlived its server"


def test_killed_server_mid_umap_leaves_no_process_and_no_half_file(runs, tmp_path):
    """The server dies while its UMAP child computes: the child stops too, and the run folder holds either
    no UMAP coordinates or whole ones (written atomically), never a partial file the map would read."""
    run = tmp_path / "umap_run"
    shutil.copytree(runs[0], run, ignore=shutil.ignore_patterns("resume.pt", "coords_umap.npy"))
    server = ("import sys; from dashboard import background\n"
              f"print(background.start_umap({str(run)!r}).process.pid, flush=True)\n"
              "import time; time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", server], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    child = int(proc.stdout.readline())
    time.sleep(1)  # inside its imports (torch, numba, UMAP: seconds), long before the fit ends
    proc.kill()
    proc.wait()
    deadline = time.time() + 10  # unsignalled, the child would import and fit on for far longer
    while _state_of(child) not in (None, "Z") and time.time() < deadline:
        time.sleep(0.1)
    assert _state_of(child) in (None, "Z"), "the UMAP child outlived its server"
    coords = run / "artifacts" / "coords_umap.npy"
    if coords.exists():  # it finished before the signal: then the file is whole
        import numpy as np
        assert len(np.load(coords)) == len(np.load(run / "artifacts" / "labels.npy"))
    assert not [p.name for p in run.rglob("*") if p.name.endswith(".tmp") and not p.name.startswith(".")]
