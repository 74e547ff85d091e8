"""Shared bits of the fidelity scripts: import an official checkout by path, a real shapes input."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch


def import_official(root: Path, module: str, file: str | None = None):
    """Import `module` from an official checkout at `root` (by file path when `file` is given, so that
    packages with heavy `__init__` imports need not load)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise SystemExit(f"--official {root}: not a folder; clone the official repository there first")
    if file is None:
        sys.path.insert(0, str(root))
        # stub the parent packages, so a heavy package `__init__` (e.g. DSL's `lib`) is not run
        parts = module.split(".")
        for i in range(1, len(parts)):
            name = ".".join(parts[:i])
            if name not in sys.modules and root.joinpath(*parts[:i]).is_dir():
                stub = types.ModuleType(name)
                stub.__path__ = [str(root.joinpath(*parts[:i]))]
                sys.modules[name] = stub
        return importlib.import_module(module)
    spec = importlib.util.spec_from_file_location(module, root / file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    spec.loader.exec_module(mod)
    return mod


def shapes_group_embeddings(head_name: str, n_classes: int = 8, per_class: int = 4, seed: int = 0, **head_args):
    """(model, x, global labels, splits): a real shapes batch and an untrained convnet model with that head."""
    from core.config import DataConfig, ModelConfig
    from core.data import build_datasets
    from core.models.embedder import build_model
    import numpy as np

    splits = build_datasets(DataConfig(max_per_class=per_class, augment=False, val_classes=0), seed=seed)
    ds, labels = splits.train, splits.train.labels
    idx = [i for c in np.unique(labels)[:n_classes] for i in np.flatnonzero(labels == c)[:per_class]]
    x = torch.stack([ds[i][0] for i in idx])
    torch.manual_seed(seed)
    model = build_model(ModelConfig(backbone="convnet", head=head_name, embed_dim=64, head_args=head_args),
                        num_classes=splits.num_train_classes)
    return model, x, torch.as_tensor(labels[idx]), splits


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))
