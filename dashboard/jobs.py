"""Background jobs: the programs the server runs in child processes, one abstraction for all of them.

A `Job` is a command with a log and a progress file: training (`python -m core train`, a `TrainJob`), a UMAP
layout, a retrieval table and hover thumbnails (`python -m dashboard.workers ...`). The UI never does such
work in its own process (Streamlit calls from worker threads fail, a rerun must not kill training, and a
busy thread slows every page). Each job
- starts through `spawn`: its own session (a Ctrl-C in the server's terminal does not reach it), reaped by a
  waiter thread the moment it ends (no zombie), told to stop (SIGINT) when the server dies;
- reports progress as JSON lines (`core.progress`), which `progress_bars` turns into one bar per phase with
  its ETA, instead of anyone parsing terminal text;
- is cancelled with SIGINT, which the training CLI turns into a clean stop after which the last completed
  epoch stays in resume.pt (starting the same job again resumes);
- belongs to the browser session that started it (`owner`), or to every session when it makes a file they
  all read (owner ""): a `JobBoard` admits one running owned job per session and `limit` per server, and
  starts a shared job once per key, again only when its output has gone since.
The server's boards (st.cache_resource) and the jobs the pages start are in `dashboard/background.py`.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.progress import read_progress
from core.run_dir import LOG, PROGRESS, is_complete

REPO = Path(__file__).resolve().parents[1]
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EPOCH_PHASE = re.compile(r"^epoch (\d+)/(\d+)$")   # core.train's phase name of one epoch


# ---- children -----------------------------------------------------------------------------------------
def _child_setup(nice: int) -> None:
    # a server started from a non-interactive shell with `&` inherits SIGINT as *ignored*; restore
    # the default so Cancel's SIGINT reaches the trainer and it stops cleanly (exit 130)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    # Linux: SIGINT when the thread that started us ends, i.e. when the server dies however it dies (the
    # spawning thread lives until the child ends). The trainer then stops cleanly after its last completed
    # epoch, instead of training on unseen by the next server and outside its job limit.
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGINT))  # PR_SET_PDEATHSIG


def _find_prctl():
    """libc's prctl, looked up in the parent: no dlopen between fork and exec."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _find_prctl()


def spawn(command: list[str], log, nice: int = 0, env: dict | None = None) -> subprocess.Popen:
    """Start a child in its own session (a Ctrl-C in the server's terminal does not reach it) with
    stdout and stderr to `log`. A daemon thread starts it and then waits for it: the exit status is
    collected as soon as it ends, even when no page ever polls it again (else it stays a zombie), and
    the child is told to stop if the server dies (see _child_setup)."""
    started: queue.Queue = queue.Queue(maxsize=1)

    def start_and_wait():
        try:
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                       preexec_fn=lambda: _child_setup(nice))
        except BaseException as err:  # noqa: BLE001 (handed to the caller)
            started.put(err)
            return
        started.put(process)
        process.wait()

    threading.Thread(target=start_and_wait, name="child-waiter", daemon=True).start()
    result = started.get()
    if isinstance(result, BaseException):
        raise result
    return result


# ---- progress bars from a job's JSON lines -------------------------------------------------------------
@dataclass
class Bar:
    label: str
    fraction: float   # 0..1
    text: str         # what the bar says: where it is and about how long is left


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _left(eta_s: float | None, done: bool) -> str:
    return " · done" if done else (f" · about {format_eta(eta_s)} left" if eta_s is not None else "")


def progress_bars(lines: list[dict]) -> list[Bar]:
    """One bar for all epochs (ETA: the current epoch's rest + the remaining epochs at the pace so far,
    validation included), then one per other phase (embedding, nearest neighbours + k-means, UMAP) in the
    order they first ran, each at its latest state."""
    bars: list[Bar] = []
    epochs = [(line, EPOCH_PHASE.match(line["phase"])) for line in lines]
    epochs = [(line, int(m[1]), int(m[2])) for line, m in epochs if m]
    if epochs:
        last, k, n = epochs[-1]
        in_epoch = last["done"] / max(last["total"], 1)
        started = {}  # epoch -> time of its first line
        for line, e, _ in epochs:
            started.setdefault(e, line.get("time"))
        eta = last.get("eta_s")
        if eta is not None and k < n:
            first = min(started)
            pace = ((started[k] - started[first]) / (k - first) if k > first  # seconds per epoch, validation included
                    else last["time"] - started[k] + eta)                     # the first epoch seen: its projection
            eta += (n - k) * pace
        done = k == n and in_epoch >= 1
        message = last.get("message", last["phase"])
        bars.append(Bar("epochs", min(((k - 1) + in_epoch) / max(n, 1), 1.0),
                        f"{message} (step {last['done']}/{last['total']}){_left(eta, done)}"))
    others: dict[str, dict] = {}
    for line in lines:
        if not EPOCH_PHASE.match(line["phase"]):
            others[line["phase"]] = line
    for phase, line in others.items():
        done = line["done"] >= line["total"]
        bars.append(Bar(phase, min(line["done"] / max(line["total"], 1), 1.0),
                        f"{phase}: {line['done']}/{line['total']}{_left(line.get('eta_s'), done)}"))
    return bars


# ---- jobs ----------------------------------------------------------------------------------------------
class Job:
    """One program run in the background: `command` (run from the repository root), its output to `log_path`,
    its progress as JSON lines to `progress_path`. `key` names what it makes (a run directory, an output
    file): a board holds one job per key. `output`: the file a shared job makes, so that a board runs it
    again when the file has gone (e.g. the run was retrained). `nice`: its lowered priority."""

    def __init__(self, key: str, command: list[str], log_path: Path, progress_path: Path, *,
                 output: Path | None = None, owner: str = "", nice: int = 0, env: dict | None = None):
        self.key, self.command, self.owner, self.nice, self.env = key, command, owner, nice, env
        self.log_path, self.progress_path, self.output = Path(log_path), Path(progress_path), output
        self.process: subprocess.Popen | None = None
        self.started, self.finished, self.cancelled = time.time(), None, False

    def again(self) -> "Job":
        """A new job of the same program, to start once this one has ended."""
        return Job(self.key, self.command, self.log_path, self.progress_path, output=self.output, owner=self.owner,
                   nice=self.nice, env=self.env)

    def _open_log(self):
        return open(self.log_path, "w")

    def start(self) -> "Job":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.progress_path.parent.mkdir(parents=True, exist_ok=True)
        with self._open_log() as log:  # the child holds its own copy of the descriptor
            self.process = spawn(self.command, log, nice=self.nice, env=self.env)
        self.started = time.time()
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def status(self) -> str:
        """running, finished, failed or cancelled."""
        code = self.returncode
        if code is None:
            return "running"
        if self.finished is None:
            self.finished = time.time()
        if self.cancelled:
            return "cancelled"
        return "finished" if code == 0 else "failed"

    def needed_again(self) -> bool:
        """Finished well, but what it made is gone: a shared job is started anew."""
        return self.status == "finished" and self.output is not None and not Path(self.output).exists()

    def wait(self, poll: float = 0.1) -> int:
        """Its exit status, once it has ended; waits without holding a core (the waiter thread reaps it)."""
        while self.process.poll() is None:
            time.sleep(poll)
        return self.process.returncode

    def cancel(self, grace: float = 20.0) -> None:
        """SIGINT (a clean stop); terminate if it does not stop in time, then kill."""
        if self.returncode is not None:
            return
        self.cancelled = True
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _read_log_end(self, n_bytes: int) -> str | None:
        """The last `n_bytes` of the log as text (None while the log does not exist yet)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - n_bytes))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return None

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the log with progress-bar redraws collapsed to their last state."""
        text = self._read_log_end(65536)
        if text is None:
            return ""
        lines = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
        return "\n".join(line for line in lines if line.strip())[-max_chars:]

    def error(self, max_chars: int = 600) -> str | None:
        """What a failed job said last (None unless it failed)."""
        return (self.log_tail(max_chars) or "(no log)") if self.status == "failed" else None

    def progress_bars(self) -> list[Bar]:
        """The bars of its progress file, as the child has written them so far."""
        return progress_bars(read_progress(self.progress_path))

    def fraction(self) -> float | None:
        """The share done of the phase it reported last; None before its first step."""
        lines = read_progress(self.progress_path)
        if not lines or not lines[-1]["done"]:
            return None
        return min(lines[-1]["done"] / max(lines[-1]["total"], 1), 1.0)


# ---- training -----------------------------------------------------------------------------------------
def train_command(config: str, out: str, epochs: int, seed: int, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "core", "train", "--config", str(config), "--out", str(out),
            "--epochs", str(int(epochs)), "--seed", str(int(seed)), *overrides]


def validate_name(name: str) -> str | None:
    """None when `name` is a usable run-folder name, else what is wrong with it."""
    if not NAME_PATTERN.match(name or ""):
        return ("Use 1–64 letters, digits, '_', '-' or '.', starting with a letter or digit "
                "(it becomes the run folder's name).")
    return None


def kept_after_stop(run_dir: Path) -> str:
    """What a stopped run directory holds, read from its files (so Cancel never claims more than is there).
    resume.pt is the last file an epoch writes (history.csv comes just before), so it decides."""
    from core import checkpoint as ckpt

    run_dir = Path(run_dir)
    if not (run_dir / ckpt.RESUME).exists():
        return "No epoch had completed, so nothing was kept: starting the same job again begins from scratch."
    try:
        last = int(ckpt.load_resume(run_dir / ckpt.RESUME)["epoch"])
    except (ckpt.CheckpointError, KeyError, TypeError, ValueError) as err:
        return f"resume.pt cannot be read ({err}); delete it to start the run afresh."
    parts = [f"{last + 1} completed epoch(s) are kept: resume.pt holds epoch {last + 1} "
             f"(start the same job again to resume after it)"]
    try:
        from safetensors import safe_open
        with safe_open(str(run_dir / ckpt.WEIGHTS), "pt") as fh:
            best = int((fh.metadata() or {}).get("epoch", "-2"))
        parts.append("weights.safetensors holds the untrained starting weights" if best == -1 else
                     f"weights.safetensors holds the best weights so far (epoch {best + 1})" if best >= 0 else
                     "weights.safetensors does not say which epoch it holds")
    except Exception:  # missing or unreadable: say so rather than guess
        parts.append("there are no best weights yet (weights.safetensors is missing or unreadable)")
    if not is_complete(run_dir):
        parts.append("test metrics and artifacts are not written until the run finishes")
    return "; ".join(parts) + "."


class TrainJob(Job):
    """`python -m core train` into `run_dir`: its log is RUN_DIR/train.log (each start appends, after the
    command line), its progress RUN_DIR/progress.jsonl, and a cancel says what the run directory kept."""

    def __init__(self, name: str, run_dir: Path, command: list[str], owner: str = ""):
        run_dir = Path(run_dir)
        super().__init__(str(run_dir), command, run_dir / LOG, run_dir / PROGRESS, owner=owner,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.name, self.run_dir = name, run_dir
        self.announced = False      # the page has rerun once since the job ended (to list the new run)
        self.kept = ""              # after a cancel: what the run directory holds (see kept_after_stop)

    def again(self) -> "TrainJob":
        return TrainJob(self.name, self.run_dir, self.command, self.owner)

    def _open_log(self):
        log = open(self.log_path, "a", buffering=1)
        log.write(f"$ {' '.join(self.command)}\n")
        return log

    def cancel(self, grace: float = 20.0) -> str:
        """A clean stop that keeps the last completed epoch; returns what the run directory then holds."""
        if self.returncode is not None:
            return self.kept
        super().cancel(grace)
        self.kept = kept_after_stop(self.run_dir)
        return self.kept

    def progress(self) -> tuple[float, str]:
        """(fraction of the epochs done, message) for a one-line summary."""
        bars = self.progress_bars()
        epochs = next((bar for bar in bars if bar.label == "epochs"), None)
        if epochs is None:
            return 0.0, "starting… (building the data set and the model)"
        if epochs.fraction >= 1.0:
            return 1.0, "all epochs done; scoring the test set and writing the artifacts…"
        return epochs.fraction, epochs.text


# ---- the board ----------------------------------------------------------------------------------------
class JobLimit(RuntimeError):
    """A job that may not start now; the message says why and what to do."""


class JobBoard:
    """The server's jobs by key, each owned by one browser session or shared by every session (owner "").
    Starting is checked and recorded under one lock, so two sessions clicking at once cannot both pass a
    limit, nor start one shared job twice. `limit`: owned jobs running at once on the server."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def running(self) -> list[Job]:
        return [job for job in list(self.jobs.values()) if job.status == "running"]

    def mine(self, owner: str) -> dict[str, Job]:
        return {key: job for key, job in list(self.jobs.items()) if job.owner == owner}

    def others_running(self, owner: str) -> list[Job]:
        return [job for job in self.running() if job.owner != owner]

    def start(self, job: Job) -> Job:
        """Start `job`, or say why not (JobLimit). A shared job whose key the board holds already is not
        started again unless it is `needed_again`: that job is returned instead."""
        with self.lock:
            if job.owner:
                self._admit(job)
            elif job.key in self.jobs and not self.jobs[job.key].needed_again():
                return self.jobs[job.key]
            self.jobs[job.key] = job.start()
        return job

    def _admit(self, job: Job) -> None:
        running = [other for other in self.running() if other.owner]
        if any(other.owner == job.owner for other in running):
            raise JobLimit("You already have a training job running; one per session. Cancel it or wait "
                           "until it finishes.")
        if any(other.key == job.key for other in running):
            raise JobLimit(f"{job.key} is being trained by another session; pick another run name.")
        if self.limit is not None and len(running) >= self.limit:
            raise JobLimit(f"The server is busy: {len(running)} training job(s) running, the most it runs at "
                           f"once (METRICLENS_MAX_JOBS={self.limit}). Try again when one finishes.")

    def restart(self, owner: str, key: str) -> Job:
        job = self.jobs[key]
        if job.owner != owner:
            raise JobLimit("This job belongs to another session.")
        return self.start(job.again())

    def cancel(self, owner: str, key: str):
        job = self.jobs[key]
        if job.owner != owner:
            raise JobLimit("This job belongs to another session; only the session that started it can cancel it.")
        return job.cancel()
