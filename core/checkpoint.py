"""Model weights in a run directory: saved atomically, read without unpickling code.

The file names and the torch-free reader (`read_run`, `is_complete`, `load_config`) live in `core.run_dir`;
the names are re-exported here for the writer's callers. `resume.pt` is read with
`torch.load(weights_only=True)`, which refuses pickled code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from core import io
from core.backbone_weights import completed_state, trimmed_state
from core.models.embedder import build_model
from core.run_dir import (ARTIFACTS, CONFIG, HISTORY, METRICS, RESUME, WEIGHTS,  # noqa: F401  (re-exported)
                          CheckpointError, is_run_dir, list_runs, load_config, read_json)


def save_weights(run_dir: Path, model, num_classes: int | None, epoch: int) -> None:
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    state, backbone = trimmed_state(model, state)  # a frozen pretrained backbone: its name and checksum only
    meta = {"head_state": json.dumps(model.head.extra_state()), "num_classes": json.dumps(num_classes),
            "epoch": str(epoch), "format": "metriclens-1", **backbone}
    io.atomic_save_safetensors(Path(run_dir) / WEIGHTS, state, metadata=meta)


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
    state = completed_state(model, state, meta, str(path), CheckpointError)  # checks a frozen backbone's checksum
    load_state_into(model, state, str(path))
    return model.to(device).eval(), cfg


def load_resume(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for code, RuntimeError/EOFError for truncation
        raise CheckpointError(f"refusing to resume from {path}: it cannot be read as plain tensors "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). If it came from elsewhere "
                              f"it may carry pickled code; delete it to start the run afresh") from None
