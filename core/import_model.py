"""Your own model as a run: `python -m core import-model --factory lab_model:build --weights w.safetensors --images DIR --out RUN`.

The network comes from your code (`--factory module:function`) or an architecture name (`--arch torchvision:resnet50
--embed-dim 128`); the weights from a safetensors file or a state dict read with `torch.load(weights_only=True)`
(never unpickled code); the images from a folder of class folders or a CSV, read exactly as `data.name=folder|csv`
(core/data), the test part by default (`split="all"`: every image). Each image is resized to `size`×`size`
(squashed, no crop), scaled to [0, 1] and normalised with `mean`/`std` inside the model, the same on every page.

Everything is checked before the images are embedded (the factory imports and returns a module, the weights match
it, it maps a batch of 2 real images to a 2×D tensor of finite numbers, the feature layer exists) and the run is
written into a temporary folder moved into place at the end, so a failed import writes nothing. The run looks like
a trained one to every reader: config.json (data as given, `model.user_model` naming the code and weights),
weights.safetensors (the loaded state dict, so the folder can be moved), metrics.json and artifacts/. The weights
are copied rather than referenced: a run folder that can be moved or shared stays whole, and the checksum of the
original file is recorded beside its path for provenance.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from core import checkpoint as ckpt
from core import io
from core.config import DataConfig, RunConfig
from core.importer import ImportRunError
from core.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from core.models.user_model import (UserModel, UserModelError, build_network, check_output, choose_feature_layer,
                                    factory_file)

SPLITS = ("test", "all")


def data_config(images: str | Path, size: int, class_depth: int | None = None, label_column: str = "label",
                image_root: str | Path | None = None) -> DataConfig:
    """--images as `data.name=folder` (a folder of class folders) or `data.name=csv` (a .csv file), at the test-time
    transform only: squashed to size×size, no augmentation, no validation classes carved out."""
    path = Path(images).expanduser().resolve()
    common = dict(image_size=size, resize=None, augment=False, val_classes=0.0, cache="never")
    if path.is_file() and path.suffix.lower() == ".csv":
        root = str(Path(image_root).expanduser().resolve()) if image_root else None
        return DataConfig(name="csv", csv=str(path), root=root, csv_label_column=label_column, **common)
    if path.is_dir():
        return DataConfig(name="folder", root=str(path), class_depth=class_depth, **common)
    raise ImportRunError(f"--images {images}: not a folder of class folders (root/<class>/<image>) nor a .csv file "
                         f"(path,label[,split])")


def read_state_dict(path: str | Path, strip_prefix: str | None = None, log=print) -> dict[str, torch.Tensor]:
    """Weights as plain tensors: a .safetensors file, or anything else with torch.load(weights_only=True) (a state
    dict, or a checkpoint dict holding one under "state_dict" or "model")."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ImportRunError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ImportRunError(f"{path} is not a readable safetensors file ({err})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for code, RuntimeError/EOFError for anything else
            raise ImportRunError(
                f"{path} cannot be read as plain tensors with torch.load(weights_only=True) ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}). A whole model saved with torch.save(model) carries pickled code, "
                f"which is never loaded: save its weights instead, e.g. safetensors.torch.save_file(model.state_dict(), "
                f"'weights.safetensors')") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict) and not torch.is_tensor(state.get(key)):
                log(f"{path.name}: reading the state dict under its {key!r} key")
                state = state[key]
                break
        if not isinstance(state, dict):
            raise ImportRunError(f"{path} holds a {type(state).__name__}, not a state dict (names -> tensors)")
        other = sorted(k for k, v in state.items() if not torch.is_tensor(v))
        if other:
            raise ImportRunError(f"{path} holds entries that are not tensors ({', '.join(map(str, other[:6]))}); give "
                                 f"the model's state_dict() alone")
    if strip_prefix:
        state = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in state.items()}
    return state


def _prefix_hint(expected, state) -> str:
    """' Pass --strip-prefix module.' when every checkpoint key is a model key behind one common prefix."""
    keys = sorted(set(state) - set(expected))
    if not keys or "." not in keys[0]:
        return ""
    prefix = keys[0].split(".")[0] + "."
    if all(k.startswith(prefix) for k in state) and {k[len(prefix):] for k in state} & set(expected):
        return f" Every key of the file starts with {prefix!r}: pass --strip-prefix {prefix}"
    return ""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def loaded_network(factory: str | None, arch: str | None, embed_dim: int | None, head_layer: str | None,
                   weights: str | Path | None, strip_prefix: str | None, log=print) -> tuple[torch.nn.Module, dict]:
    """(the network with the weights loaded, the spec that rebuilds it: model.user_model without the input side)."""
    source = factory or arch
    spec = {"factory": factory, "arch": arch, "embed_dim": embed_dim, "head_layer": head_layer}
    try:
        net = build_network(spec)
    except UserModelError as err:
        raise ImportRunError(str(err)) from None
    spec["factory_file"] = factory_file(factory) if factory else None
    spec["weights"] = None
    if weights:
        state = read_state_dict(weights, strip_prefix, log)
        problem = ckpt.state_mismatch(net.state_dict(), state, model="network")
        if problem:
            raise ImportRunError(f"{weights} does not match the network {source} builds: {problem}."
                                 + _prefix_hint(net.state_dict(), state))
        net.load_state_dict(state)
        spec["weights"] = {"file": str(Path(weights).resolve()), "sha256": sha256(weights), "strip_prefix": strip_prefix}
    else:
        log(f"warning: no --weights: {source} keeps the weights it was built with")
    return net.eval(), spec


def checked_model(net: torch.nn.Module, source: str, probe: torch.Tensor, mean: list[float], std: list[float],
                  feature_layer: str | None) -> tuple[UserModel, tuple[int, ...]]:
    """The wrapped network, once it maps `probe` (real images, B ≥ 2) to B finite embeddings and has a feature
    layer; and that layer's output shape C×h×w for one image."""
    normalised = (probe - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    try:
        with torch.no_grad():
            out = check_output(net(normalised), len(probe), f"{source}'s network")
            if not torch.isfinite(out).all():
                raise UserModelError(f"{source}'s network returned NaN or infinite embeddings for real images")
            layer = choose_feature_layer(net, normalised, feature_layer)
            model = UserModel(net, layer, mean, std, out.shape[1], probe.shape[-1]).eval()
            return model, tuple(model.forward_features(probe[:1]).shape[1:])
    except UserModelError as err:
        raise ImportRunError(str(err)) from None
    except Exception as err:  # the user's forward itself failed
        raise ImportRunError(f"{source}'s network failed on a batch of {len(probe)} images of "
                             f"{probe.shape[-2]}×{probe.shape[-1]} pixels: {type(err).__name__}: {err}") from None


def import_model(out: str | Path, images: str | Path, *, factory: str | None = None, arch: str | None = None,
                 weights: str | Path | None = None, embed_dim: int | None = None, head_layer: str | None = None,
                 feature_layer: str | None = None, strip_prefix: str | None = None, size: int = 224,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, split: str = "test", class_depth: int | None = None,
                 label_column: str = "label", image_root: str | Path | None = None, umap: bool = False,
                 overwrite: bool = False, name: str | None = None, device: str = "cpu", batch_size: int = 64,
                 progress=None, log=print) -> dict:
    """Check everything, embed the images, write the run directory `out` (all at once). Returns its metrics.json."""
    from core.artifacts import eval_parts, write_artifacts
    from core.data import build_datasets, check_evaluable, parts
    from core.data import summary as data_summary
    from core.evaluate import all_metrics, embed_dataset, readable, score

    out = Path(out)
    if out.exists() and not overwrite:
        raise ImportRunError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    if bool(factory) == bool(arch):
        raise ImportRunError("give the network as exactly one of --factory module:function or --arch torchvision:<name>")
    if split not in SPLITS:
        raise ImportRunError(f"--split {split!r}: choose test (the test classes, as a trained run is scored) or all")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ImportRunError(f"--mean and --std take three numbers each (R G B), std > 0; got {list(mean)}, {list(std)}")
    if size < 8:
        raise ImportRunError(f"--size {size}: give the network's input side in pixels, e.g. 224")

    # the images, read as data.name=folder|csv would be
    data = data_config(images, size, class_depth, label_column, image_root)
    splits = build_datasets(data)
    log(data_summary(splits))
    check_evaluable(splits)
    chosen = eval_parts(splits) if split == "test" else parts(splits)
    chosen = [(n, ds) for n, ds in chosen if ds is not None and len(ds)]
    if not chosen:
        raise ImportRunError(f"{images} has no test images (the second half of its sorted classes, or rows with "
                             f"split test/query/gallery); pass --split all to embed every image")

    # the network and its weights, checked on two real images before anything is embedded
    source = factory or arch
    net, spec = loaded_network(factory, arch, embed_dim, head_layer, weights, strip_prefix, log)
    first = chosen[0][1]
    probe = torch.stack([first[i][0] for i in range(min(2, len(first)))])
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    model, grid = checked_model(net, source, probe, mean, std, feature_layer)
    model.to(device)
    spec.update(feature_layer=model.feature_layer, mean=mean, std=std)
    log(f"model: {source}, {model.embed_dim}-d embeddings; Grad-CAM and the cross-image maps read "
        f"{model.feature_layer!r} ({'×'.join(map(str, grid))} for a {size}-px image; --feature-layer picks another)")

    # embed and score
    embedded = {n: (ds, *embed_dataset(model, ds, batch_size, device, progress=progress,
                                       label=f"{n}: embedding {len(ds)} images")) for n, ds in chosen}
    if split == "test":
        metrics = score(embedded, progress=progress, label="test")
    else:  # every item a query against all the others
        kept = [(emb[m], lab[m]) for ds, emb, lab in embedded.values() for m in [readable(ds, len(lab))]]
        metrics = all_metrics(np.concatenate([e for e, _ in kept]), np.concatenate([l for _, l in kept]))

    cfg = RunConfig(data=data)
    cfg.name = name or out.name
    cfg.model.backbone, cfg.model.head, cfg.model.pretrained = source, "user_model", False
    cfg.model.embed_dim, cfg.model.user_model = model.embed_dim, spec
    n_items = sum(len(ds) for ds, _, _ in embedded.values())
    cfg.description = (f"your own model {source}" + (f" with {Path(weights).name}" if weights else "")
                       + f", {cfg.model.embed_dim}-d, on {n_items} images from {Path(images).resolve()} ({split})")
    record = {"test": metrics, "best_epoch": None, "split": split, "items": n_items,
              "user_model": {"source": source, "weights": spec["weights"], "feature_layer": spec["feature_layer"],
                             "embed_dim": cfg.model.embed_dim},
              "preprocessing": {"size": size, "resize": "squash", "scale": "[0, 1]", "mean": mean, "std": std}}
    with io.atomic_dir(out, overwrite=True) as tmp:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
        io.atomic_save_safetensors(tmp / ckpt.WEIGHTS, state, metadata={"format": "metriclens-user-1",
                                                                        "source": source})
        cfg.save(tmp / ckpt.CONFIG)
        write_artifacts(tmp, embedded)
        if umap:
            from core.projection import ensure_coords
            ensure_coords(tmp, "umap", progress=True)
        io.write_json(tmp / ckpt.METRICS, record)
    return record
