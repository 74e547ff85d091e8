"""Training jobs launched from the dashboard: `python -m core train ...` in a subprocess.

The UI never trains in its own process (Streamlit calls from worker threads fail, and a rerun
must not kill training). The child writes its log to RUN_DIR/train.log and its progress as JSON lines
to RUN_DIR/progress.jsonl (core.progress); the page polls those and history.csv, and draws one bar per
phase with its ETA (`progress_bars`). Cancel sends SIGINT, which the CLI turns into a clean stop
after which the last completed epoch stays in resume.pt; starting the same job again resumes.

Jobs are shared by one server but owned by a browser session (`JobBoard`): only the owner sees
the job's panel and may cancel or restart it; other sessions see that the machine is busy. The
board admits one running job per session and `limit` per server. Every child is reaped by a
waiter thread the moment it ends (`spawn`), so no finished process lingers as a zombie.
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
from dataclasses import dataclass, field
from pathlib import Path

from core.progress import read_progress
from core.run_dir import LOG, PROGRESS, is_complete

REPO = Path(__file__).resolve().parents[1]
LOG_NAME = LOG
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EPOCH_PHASE = re.compile(r"^epoch (\d+)/(\d+)$")   # core.train's phase name of one epoch


def train_command(config: str, out: str, epochs: int, seed: int, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "core", "train", "--config", str(config), "--out", str(out),
            "--epochs", str(int(epochs)), "--seed", str(int(seed)), *overrides]


def validate_name(name: str) -> str | None:
    """None when `name` is a usable run-folder name, else what is wrong with it."""
    if not NAME_PATTERN.match(name or ""):
        return ("Use 1–64 letters, digits, '_', '-' or '.', starting with a letter or digit "
                "(it becomes the run folder's name).")
    return None


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


# ---- progress bars from RUN_DIR/progress.jsonl -------------------------------------------------------
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


@dataclass
class TrainJob:
    name: str
    run_dir: Path
    command: list[str]
    process: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    cancelled: bool = False
    announced: bool = False     # the page has rerun once since the job ended (to list the new run)
    owner: str = ""             # the browser session that started it; only it may cancel or restart
    kept: str = ""              # after a cancel: what the run directory holds (see kept_after_stop)

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    @classmethod
    def start(cls, name: str, run_dir: Path, command: list[str], owner: str = "") -> "TrainJob":
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        job = cls(name, run_dir, command, owner=owner)
        with open(job.log_path, "a", buffering=1) as log:  # the child holds its own copy of the descriptor
            log.write(f"$ {' '.join(command)}\n")
            job.process = spawn(command, log, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return job

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def status(self) -> str:
        code = self.returncode
        if code is None:
            return "running"
        if self.finished is None:
            self.finished = time.time()
        if self.cancelled:
            return "cancelled"
        return "finished" if code == 0 else "failed"

    def cancel(self, grace: float = 20.0) -> str:
        """SIGINT (clean stop, keeps the last completed epoch); terminate if it does not stop in time.
        Returns what the run directory then holds (also kept in `self.kept`)."""
        if self.returncode is not None:
            return self.kept
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
        self.kept = kept_after_stop(self.run_dir)
        return self.kept

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

    def progress_bars(self) -> list[Bar]:
        """The bars of RUN_DIR/progress.jsonl, as the child has written them so far."""
        return progress_bars(read_progress(self.run_dir / PROGRESS))

    def progress(self) -> tuple[float, str]:
        """(fraction of the epochs done, message) for a one-line summary."""
        bars = self.progress_bars()
        epochs = next((bar for bar in bars if bar.label == "epochs"), None)
        if epochs is None:
            return 0.0, "starting… (building the data set and the model)"
        if epochs.fraction >= 1.0:
            return 1.0, "all epochs done; scoring the test set and writing the artifacts…"
        return epochs.fraction, epochs.text


class JobLimit(RuntimeError):
    """A job that may not start now; the message says why and what to do."""


class JobBoard:
    """The server's training jobs (run_dir -> TrainJob), each owned by one browser session. Starting
    is checked and recorded under one lock, so two sessions clicking at once cannot both pass a limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.jobs: dict[str, TrainJob] = {}
        self.lock = threading.Lock()

    def running(self) -> list[TrainJob]:
        return [job for job in list(self.jobs.values()) if job.status == "running"]

    def mine(self, owner: str) -> dict[str, TrainJob]:
        return {key: job for key, job in list(self.jobs.items()) if job.owner == owner}

    def others_running(self, owner: str) -> list[TrainJob]:
        return [job for job in self.running() if job.owner != owner]

    def start(self, owner: str, name: str, run_dir: Path, command: list[str]) -> TrainJob:
        key = str(run_dir)
        with self.lock:
            running = self.running()
            if any(job.owner == owner for job in running):
                raise JobLimit("You already have a training job running; one per session. Cancel it or wait "
                               "until it finishes.")
            if any(str(job.run_dir) == key for job in running):
                raise JobLimit(f"{run_dir} is being trained by another session; pick another run name.")
            if len(running) >= self.limit:
                raise JobLimit(f"The server is busy: {len(running)} training job(s) running, the most it runs at "
                               f"once (METRICLENS_MAX_JOBS={self.limit}). Try again when one finishes.")
            job = self.jobs[key] = TrainJob.start(name, Path(run_dir), command, owner)
        return job

    def restart(self, owner: str, key: str) -> TrainJob:
        job = self.jobs[key]
        if job.owner != owner:
            raise JobLimit("This job belongs to another session.")
        return self.start(owner, job.name, job.run_dir, job.command)

    def cancel(self, owner: str, key: str) -> str:
        job = self.jobs[key]
        if job.owner != owner:
            raise JobLimit("This job belongs to another session; only the session that started it can cancel it.")
        return job.cancel()
