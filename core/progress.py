"""Progress of long phases as JSON lines in the run directory (RUN_DIR/progress.jsonl).

Every long step in core reports through one callback, `progress(step, total, message)`: training epochs,
embedding a split, nearest neighbours + k-means, UMAP. The CLI hands the trainer `tee(bars, log)`: tqdm bars
(with ETA) for the terminal and a `ProgressLog` whose lines the dashboard's Train page turns into bars,
instead of parsing terminal text. One line:

    {"phase": "epoch 3/6", "done": 10, "total": 16, "eta_s": 12.4, "time": 1733000000.0, "message": "epoch 3/6 loss 0.74"}

`phase` names what is measured (an epoch, "test: embedding 500 images"); `done`/`total` count its steps;
`eta_s` is the estimated seconds left in the phase (null before its first step).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

from core import io

Progress = Callable[[int, int, str], None]
log = logging.getLogger(__name__)


def phase_of(message: str) -> str:
    """The phase a message reports on: an epoch's message changes with its loss, its phase does not."""
    return message.split(" loss ")[0]


class ProgressLog:
    """A progress callback appending one JSON line per update to `path`, at most every `min_interval`
    seconds within a phase (the first and last step of every phase are always written)."""

    def __init__(self, path: str | Path, min_interval: float = 0.5, fresh: bool = False, clock=time.time):
        self.path, self.min_interval, self.clock = Path(path), min_interval, clock
        self._phase, self._start, self._written, self._last_step = None, 0.0, -1e18, 0
        self.failed = False
        if fresh:  # a new command: an earlier attempt's phases must not show as current
            self._guarded(lambda: self.path.unlink(missing_ok=True))

    def _guarded(self, write) -> None:
        try:
            write()
        except OSError as err:  # e.g. a read-only run folder: the work itself must go on, unlogged
            log.warning("progress is not logged to %s (%s)", self.path, err)
            self.failed = True

    def __call__(self, step: int, total: int, message: str) -> None:
        if self.failed:
            return
        now, phase = self.clock(), phase_of(message)
        if phase != self._phase or step < self._last_step:  # a new phase, or the same one started over
            self._phase, self._start, self._written = phase, now, -1e18
        self._last_step = step
        if step < total and now - self._written < self.min_interval and step > 1:
            return
        self._written = now
        # at the rate so far: seconds since the phase began per step done
        eta = (now - self._start) / step * (total - step) if step > 0 else None
        line = {"phase": phase, "done": int(step), "total": int(total),
                "eta_s": None if eta is None else round(eta, 1), "time": round(now, 3), "message": message}
        self._guarded(lambda: io.append_line(self.path, json.dumps(line)))


def tee(*callbacks: Progress | None) -> Progress:
    """One progress callback that calls each of the given ones (None entries are skipped)."""
    live = [c for c in callbacks if c is not None]

    def update(step: int, total: int, message: str) -> None:
        for callback in live:
            callback(step, total, message)
    return update


def read_progress(path: str | Path) -> list[dict]:
    """The lines written so far; a line still being written (or damaged) is skipped, a missing file is []."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and {"phase", "done", "total"} <= set(line):
            lines.append(line)
    return lines
