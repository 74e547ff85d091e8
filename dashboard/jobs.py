"""Training jobs launched from the dashboard: `python -m core train ...` in a subprocess.

The UI never trains in its own process (Streamlit calls from worker threads fail, and a rerun
must not kill training). The child writes its progress bar and log to RUN_DIR/train.log; the
page polls that file and history.csv. Cancel sends SIGINT, which the CLI turns into a clean stop
after which the last completed epoch stays in resume.pt; starting the same job again resumes.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOG_NAME = "train.log"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# tqdm line from core.__main__: "epoch 3/6 loss 0.7479:  62%|██▎ | 10/16 [00:16<00:12, ...]"
PROGRESS = re.compile(r"epoch (\d+)/(\d+)[^|\r\n]*\|[^|\r\n]*\|\s*(\d+)/(\d+)")


def train_command(config: str, out: str, epochs: int, seed: int, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "core", "train", "--config", str(config), "--out", str(out),
            "--epochs", str(int(epochs)), "--seed", str(int(seed)), *overrides]


def validate_name(name: str) -> str | None:
    """None when `name` is a usable run-folder name, else what is wrong with it."""
    if not NAME_PATTERN.match(name or ""):
        return ("Use 1–64 letters, digits, '_', '-' or '.', starting with a letter or digit "
                "(it becomes the run folder's name).")
    return None


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    @classmethod
    def start(cls, name: str, run_dir: Path, command: list[str]) -> "TrainJob":
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        job = cls(name, run_dir, command)
        log = open(job.log_path, "a", buffering=1)
        log.write(f"$ {' '.join(command)}\n")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # own session: a Ctrl-C in the server's terminal does not reach the child, and vice versa
        # a server started from a non-interactive shell with `&` inherits SIGINT as *ignored*; restore
        # the default so Cancel's SIGINT reaches the trainer and it stops cleanly (exit 130)
        job.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                       preexec_fn=_default_sigint)
        log.close()  # the child holds its own copy of the descriptor
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

    def cancel(self, grace: float = 20.0) -> None:
        """SIGINT (clean stop, keeps the last completed epoch); terminate if it does not stop in time."""
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

    def progress(self) -> tuple[float, str]:
        """(fraction done, message) from the last progress-bar line in the log."""
        text = self._read_log_end(16384)
        if text is None:
            return 0.0, "starting…"
        matches = list(PROGRESS.finditer(text))
        if not matches:
            return 0.0, "starting… (building the data set and the model)"
        epoch, epochs, step, steps = (int(g) for g in matches[-1].groups())
        done = min(max(((epoch - 1) + step / max(steps, 1)) / max(epochs, 1), 0.0), 1.0)
        if done >= 1.0:
            return done, f"all {epochs} epochs done; scoring the test set and writing the artifacts…"
        return done, f"epoch {epoch}/{epochs}, step {step}/{steps}"
