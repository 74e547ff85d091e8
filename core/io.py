"""Atomic file writes and JSON/npy readers: the leaf every core module may import (it imports no core module).

Every write goes to a temporary name in the target's folder, is flushed to disk (fsync) and is then moved
into place with `os.replace`, so a crash mid-save leaves the previous file intact and a reader never sees
half a file.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

# mkstemp creates files readable by their owner only; a run folder should get the permissions any new
# file gets (e.g. 0644), so a dashboard run by another user can read it. Read once, at import.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class FileFormatError(ValueError):
    """A file that exists but cannot be read as what it should be; the message names the file."""


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` fills a temporary file beside `path`, which then replaces `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """`with atomic_dir(out) as tmp:` fill the temporary folder `tmp` beside `path`; when the block ends without an
    error it becomes `path` in one step (an existing `path`, with `overwrite`, is replaced only then), and on an
    error it is removed: the folder appears whole or not at all."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it owner-only
        if path.exists():  # the old folder goes only once the new one is complete
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)
    atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    atomic_write(path, write)


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file  # torch-backed; kept out of import time for numpy-only users

    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def atomic_torch_save(path: str | Path, obj) -> None:
    import torch  # as above: the leaf stays cheap to import

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_json(path: str | Path):
    """The parsed file; FileNotFoundError if it is missing, FileFormatError if it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{path} is not valid JSON ({err}); the file is damaged") from None


def read_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    """A saved array (never unpickles objects); FileFormatError if the file is not a readable .npy."""
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise FileFormatError(f"{path} is not a readable .npy array ({err}); the file is damaged") from None


def append_line(path: str | Path, line: str) -> None:
    """Append one text line (for JSON-lines logs). A single `write` of a short line in append mode is not
    interleaved with other appenders, so readers see whole lines or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(line.rstrip("\n") + "\n")
