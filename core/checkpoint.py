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
                          CheckpointError, NoModelError, is_run_dir, list_runs, load_config, read_json)


def save_weights(run_dir: Path, model, num_classes: int | None, epoch: int) -> None:
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    state, backbone = trimmed_state(model, state)  # a frozen pretrained backbone: its name and checksum only
    meta = {"head_state": json.dumps(model.head.extra_state()), "num_classes": json.dumps(num_classes),
            "epoch": str(epoch), "format": "metriclens-1", **backbone}
    io.atomic_save_safetensors(Path(run_dir) / WEIGHTS, state, metadata=meta)


def store_half(run_dir: Path, min_values: int = 2**16) -> list[str]:
    """Rewrite a run's weights with every float32 tensor of at least `min_values` values in float16 (a shipped
    run's large blocks: half the file). Loading casts them back to the model's float32 parameters, so nothing
    else changes but the rounding. Returns the tensors stored so; the metadata lists them."""
    path = Path(run_dir) / WEIGHTS
    state, meta = read_weights(path)
    halved = sorted(k for k, v in state.items() if v.dtype == torch.float32 and v.numel() >= min_values)
    state.update({k: state[k].half() for k in halved})
    io.atomic_save_safetensors(path, state, metadata={**meta, "float16": json.dumps(halved)})
    return halved


def state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], model: str = "config") -> str | None:
    """None when `state` has exactly the keys and shapes of `expected`, else which keys differ and how (`model`:
    what the expected shapes come from)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if not (missing or unexpected or shape):
        return None
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        parts.append(f"not in the model: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if shape:
        parts.append("shape differs: " + ", ".join(
            f"{k} (checkpoint {tuple(state[k].shape)} vs {model} {tuple(expected[k].shape)})" for k in shape[:8]))
    return "; ".join(parts)


def load_state_into(model, state: dict[str, torch.Tensor], where: str,
                    hint: str = "Was config.json edited, or the weights copied from another run?") -> None:
    """Load weights, failing with the exact mismatched keys instead of a bare size error."""
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"{where} does not match its config.json: {problem}. {hint}")
    model.load_state_dict(state)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a run's weights.safetensors."""
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the run has not finished an epoch yet, "
                              f"or the folder is not a complete run directory")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); the file is damaged") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", allow_code: bool = True):
    """(model in eval mode, RunConfig) from a run directory; never unpickles anything. A run of your own model
    (`python -m core import-model`) imports its factory's code: only with `allow_code` (the dashboard's teaching
    mode passes False and gets NoModelError)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    if cfg.model.user_model is not None:
        return _load_user_model(run_dir, cfg, allow_code).to(device).eval(), cfg
    path = run_dir / WEIGHTS
    state, meta = read_weights(path)
    num_classes = json.loads(meta.get("num_classes", "null"))
    try:
        model = build_model(cfg.model, num_classes=num_classes)
    except (ValueError, KeyError, TypeError) as err:  # e.g. an edited config.json with impossible sizes
        raise CheckpointError(f"{run_dir / CONFIG} describes a model that cannot be built: {err}") from None
    model.head.load_extra_state(json.loads(meta.get("head_state", "{}")))  # may resize (DSL learners)
    state = completed_state(model, state, meta, str(path), CheckpointError)  # checks a frozen backbone's checksum
    load_state_into(model, state, str(path))
    return model.to(device).eval(), cfg


def _load_user_model(run_dir: Path, cfg, allow_code: bool):
    from core.models.user_model import UserModel, UserModelError, build_network

    spec = cfg.model.user_model
    source = spec.get("factory") or spec.get("arch")
    if not allow_code:
        raise NoModelError(f"Run {run_dir.name!r} is a researcher's own model ({source}); building it imports code, "
                           f"which is not allowed here (teaching mode never imports code from a run)")
    state, _ = read_weights(run_dir / WEIGHTS)
    try:
        net = build_network(spec)
    except UserModelError as err:
        found = f" (at import it was {spec['factory_file']})" if spec.get("factory_file") else ""
        raise CheckpointError(f"run {run_dir.name!r} cannot rebuild its model: {err}{found}. Start the dashboard "
                              f"(or your script) where that code can be imported") from None
    load_state_into(net, state, str(run_dir / WEIGHTS),
                    hint=f"Does {source} still build the network these weights were imported into?")
    try:
        return UserModel(net, spec["feature_layer"], spec["mean"], spec["std"], cfg.model.embed_dim, cfg.data.image_size)
    except (KeyError, AttributeError) as err:
        raise CheckpointError(f"{run_dir / CONFIG}: model.user_model is incomplete or names a module the network "
                              f"lacks ({err})") from None


def load_resume(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for code, RuntimeError/EOFError for truncation
        raise CheckpointError(f"refusing to resume from {path}: it cannot be read as plain tensors "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). If it came from elsewhere "
                              f"it may carry pickled code; delete it to start the run afresh") from None
