"""Run configuration: three dataclasses (data, model, train) with a YAML/JSON round trip.

A run is fully described by its `RunConfig`; `config.json` in a run directory is this object
serialised, so a run can always be rebuilt, resumed or evaluated from its directory alone.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import re

import yaml

from core.io import atomic_write_text


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 requires a dot: `1.0e-4`)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_YamlLoader)


@dataclass
class DataConfig:
    name: str = "shapes"             # shapes | folder | csv | cub200 | cars196 | sop | inshop
    root: str | None = None          # dataset root (not used by shapes)
    image_size: int = 64             # side of the square network input
    resize: int | None = None        # test-time resize before the centre crop (None: resize to image_size)
    augment: bool = True             # train-time random resized crop + horizontal flip
    val_classes: float = 0.2         # share of the train classes carved out for validation (0 = none)
    csv: str | None = None           # csv data: path,label[,split] file
    csv_label_column: str = "label"
    csv_split_column: str = "split"
    max_per_class: int | None = None  # cap train/val images per class (quick runs); test is never capped
    class_depth: int | None = None   # folder data: folder level of the classes (root/<class>/img: 1); None detects it
    cache: str = "auto"              # decode images once into memory, augment on the training device: auto (on a GPU) | always | never
    shapes: dict[str, Any] = field(default_factory=dict)  # shapes generator knobs (see core/data/shapes.py)


@dataclass
class BlockConfig:
    name: str                        # registered block name, e.g. "csa"
    after: str                       # backbone stage it follows, e.g. "layer2"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    backbone: str = "convnet"        # convnet | resnet18 | resnet50 | efficientnet_lite0
    pretrained: bool = False         # ImageNet weights (resnet: needs internet once; effnet: shipped)
    frozen_bn: bool = False          # BatchNorm in eval mode with frozen affine parameters
    freeze_backbone: bool = False    # no gradient into the backbone at all
    stage: str | None = None         # backbone stage whose features are pooled (None: the last)
    head: str = "gap"                # gap | grouping | gsp | dsl
    embed_dim: int = 64              # 0 keeps the pooled features without a projection
    projection_init: str = "random"  # random | pca | uncentred_pca: the head's projection starts as the train features' principal directions
    head_args: dict[str, Any] = field(default_factory=dict)
    blocks: list[BlockConfig] = field(default_factory=list)
    cia: dict[str, Any] | None = None  # training-only cross-image attention branch (None: off)
    user_model: dict[str, Any] | None = None  # your own network (`python -m core import-model`; core/models/user_model.py)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    m_per_class: int = 4             # MPerClassSampler: images per class in a batch
    optimizer: str = "adamw"         # adam | adamw
    lr: float = 1e-3                 # new layers (head, projection, blocks, CIA, loss parameters)
    backbone_lr: float | None = None  # None: same as lr
    warmup_epochs: int = 0           # first epochs train only the new layers: backbone weights frozen, its BN in eval mode
    lr_schedule: str = "constant"    # constant | cosine: every group's lr × ½(1 + cos(π·epoch/epochs)), set at each epoch's start
    eval_start: bool = True          # score the starting weights on validation first: the best epoch may be "start" (-1)
    weight_decay: float = 1e-4
    loss: str = "multi_similarity"   # margin | multi_similarity | triplet | contrastive | proxy_anchor
    loss_args: dict[str, Any] = field(default_factory=dict)
    miner: str | None = None         # multi_similarity | triplet | distance_weighted | None
    miner_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    amp: bool = True                 # mixed precision (CUDA only)
    num_workers: int = 0
    feature_cache: str = "auto"      # auto: a frozen backbone's features are computed once, cached on disk, trained on | never
    cached_views: int = 1            # feature cache: views per train image (1 the image: no augmentation; 2 + its mirror; 3+ + random crops)
    eval_every: int = 1
    select_metric: str = "map_at_r"  # validation metric that picks the best epoch
    recall_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""
    description: str = ""

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        return _build(cls, raw, "")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else parse_yaml(text)
        return cls.from_dict(raw or {})

    def with_overrides(self, overrides: list[str]) -> "RunConfig":
        """Apply `section.key=value` strings (value parsed as YAML: numbers, lists, bools)."""
        raw = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not of the form key=value, e.g. train.lr=3e-4")
            key, value = item.split("=", 1)
            node = raw
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(node, dict) or part not in node:
                    raise ValueError(f"unknown config key {key!r}" + _known_keys(node))
                node = node[part]
            if not isinstance(node, dict) or (parts[-1] not in node and not _is_free_dict(key)):
                raise ValueError(f"unknown config key {key!r}" + _known_keys(node))
            node[parts[-1]] = parse_yaml(value)
        return RunConfig.from_dict(raw)


def _known_keys(node: Any) -> str:
    return f" (known here: {', '.join(sorted(node))})" if isinstance(node, dict) and node else ""


_FREE_DICTS = ("model.head_args", "train.loss_args", "train.miner_args", "data.shapes", "model.cia")


def _is_free_dict(key: str) -> bool:
    return any(key.startswith(prefix + ".") for prefix in _FREE_DICTS)


def _build(cls, raw: Any, where: str):
    """Dataclass from a dict, refusing unknown keys with their full dotted name."""
    if not isinstance(raw, dict):
        raise ValueError(f"config section {where or 'root'!r} must be a mapping, got {raw!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        names = ", ".join(f"{where}{k}" for k in unknown)
        raise ValueError(f"unknown config keys: {names} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in raw.items():
        f = known[name]
        sub = _dataclass_type(cls, f)
        if sub is not None and value is not None:
            kwargs[name] = _build(sub, value, f"{where}{name}.")
        elif name == "blocks":
            kwargs[name] = [b if isinstance(b, BlockConfig) else _build(BlockConfig, b, f"{where}blocks.")
                            for b in (value or [])]
        else:
            kwargs[name] = _checked_scalar(value, str(f.type), f"{where}{name}")
    return cls(**kwargs)


_SCALARS = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def _checked_scalar(value: Any, annotation: str, key: str) -> Any:
    """A number, flag or string where the field wants one (ints widen to float), else a clear error:
    `train.lr=abc` must not surface later as a TypeError deep inside the optimiser."""
    base, _, optional = annotation.partition(" | ")
    if base not in _SCALARS or (value is None and optional == "None"):
        return value
    ok = isinstance(value, _SCALARS[base]) and not (base != "bool" and isinstance(value, bool))
    if not ok:
        wanted = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}[base]
        raise ValueError(f"config key {key} must be {wanted}" + (" or null" if optional == "None" else "")
                         + f", got {value!r}")
    return float(value) if base == "float" else value


def _dataclass_type(cls, f: dataclasses.Field):
    hints = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    return hints.get(f.name) if cls is RunConfig else None
