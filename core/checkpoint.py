"""Run directories: written atomically, read without unpickling code.

    RUN_DIR/config.json          the RunConfig (rebuilds the model)
    RUN_DIR/weights.safetensors  best-epoch weights; metadata carries the head's JSON state
    RUN_DIR/metrics.json         test metrics of those weights (+ best epoch, validation metrics)
    RUN_DIR/history.csv          one row per epoch
    RUN_DIR/artifacts/           embeddings.npy, labels.npy, coords_*.npy, ... for the dashboard
    RUN_DIR/resume.pt            last completed epoch (model + optimiser + RNG) for resuming

Every file is written to a temporary name in the same folder and moved into place with
os.replace, so a crash mid-save leaves the previous file intact. `resume.pt` is read with
`torch.load(weights_only=True)`, which refuses pickled code.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from core.config import RunConfig

WEIGHTS, CONFIG, METRICS, HISTORY, RESUME, ARTIFACTS = (
    "weights.safetensors", "config.json", "metrics.json", "history.csv", "resume.pt", "artifacts")


class CheckpointError(RuntimeError):
    """A run directory that cannot be used as it is; the message says what is wrong and what to do."""


# mkstemp creates files readable by their owner only; a run folder should get the permissions any new
# file gets (e.g. 0644), so a dashboard run by another user can read it. Read once, at import.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    _atomic(path, write)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    _atomic(path, write)


def atomic_torch_save(path: Path, obj) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def save_weights(run_dir: Path, model, num_classes: int | None, epoch: int) -> None:
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"head_state": json.dumps(model.head.extra_state()), "num_classes": json.dumps(num_classes),
            "epoch": str(epoch), "format": "metriclens-1"}
    _atomic(Path(run_dir) / WEIGHTS, lambda tmp: save_file(state, tmp, metadata=meta))


def write_json(path: Path, obj) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=float))


def read_json(path: Path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file is damaged") from None


def load_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    raw = read_json(run_dir / CONFIG)
    try:
        return RunConfig.from_dict(raw)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{run_dir / CONFIG} does not describe a MetricLens run: {err}") from None


def load_state_into(model, state: dict[str, torch.Tensor], where: str) -> None:
    """Load weights, failing with the exact mismatched keys instead of a bare size error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"not in the model: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if shape:
            parts.append("shape differs: " + ", ".join(
                f"{k} (checkpoint {tuple(state[k].shape)} vs config {tuple(expected[k].shape)})" for k in shape[:8]))
        raise CheckpointError(f"{where} does not match its config.json: " + "; ".join(parts)
                              + ". Was config.json edited, or the weights copied from another run?")
    model.load_state_dict(state)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, RunConfig) from a run directory; never unpickles anything."""
    from core.models.embedder import build_model

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    path = run_dir / WEIGHTS
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the run has not finished an epoch yet, "
                              f"or the folder is not a complete run directory")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); the file is damaged") from None
    num_classes = json.loads(meta.get("num_classes", "null"))
    try:
        model = build_model(cfg.model, num_classes=num_classes)
    except (ValueError, KeyError, TypeError) as err:  # e.g. an edited config.json with impossible sizes
        raise CheckpointError(f"{run_dir / CONFIG} describes a model that cannot be built: {err}") from None
    model.head.load_extra_state(json.loads(meta.get("head_state", "{}")))  # may resize (DSL learners)
    load_state_into(model, state, str(path))
    return model.to(device).eval(), cfg


def load_resume(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for code, RuntimeError/EOFError for truncation
        raise CheckpointError(f"refusing to resume from {path}: it cannot be read as plain tensors "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). If it came from elsewhere "
                              f"it may carry pickled code; delete it to start the run afresh") from None


def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).exists() and (Path(path) / WEIGHTS).exists()


def list_runs(root: str | Path) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.iterdir() if p.is_dir() and is_run_dir(p)) if root.is_dir() else []
