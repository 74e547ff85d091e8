"""A run's images as its model sees them: the data splits, one item's model input (or an imported run's
image file), an uploaded query, an item's annotation, and a fixed demo image for when no run is loaded.

Model inputs are 3×H×W float arrays in [0, 1], cached per item and artifacts version (st.cache_data).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from dashboard import logic
from dashboard.artifacts import artifacts
from dashboard.caching import artifact_stamp
from dashboard.catalog import imported
from dashboard.model_cache import load_model
from dashboard.session import data_root_override


@st.cache_resource(show_spinner="Preparing the data set…", max_entries=8)
def _splits(run_dir: str, data_root: str | None):
    from core.checkpoint import load_config
    from core.data import build_datasets

    cfg = load_config(run_dir)  # not the model: a run whose own code cannot be imported here still shows its images
    data_cfg = cfg.with_overrides([f"data.root={data_root}"]).data if data_root else cfg.data
    return build_datasets(data_cfg, seed=cfg.train.seed)


def splits(run_dir: str):
    """The run's data splits (raises DatasetError when the data folder moved)."""
    if imported(run_dir):
        from core.data.folders import DatasetError
        raise DatasetError(f"{Path(run_dir).name} was imported from embeddings: its images are the files named in "
                           f"its items, it has no data set")
    return _splits(run_dir, data_root_override(run_dir))


@st.cache_data(show_spinner=False, max_entries=4096)
def _model_input(run_dir: str, item: int, stamp: float, data_root: str | None) -> np.ndarray:
    meta = artifacts(run_dir).items[item]
    dataset = getattr(splits(run_dir), meta.get("split", "test"))
    return dataset[int(meta["index"])][0].numpy()


def model_input(run_dir: str, item: int) -> np.ndarray:
    """Item `item` of the artifacts as the model sees it: 3×H×W float in [0, 1]."""
    if imported(run_dir):
        return _imported_image(run_dir, int(item), artifact_stamp(run_dir))
    return _model_input(run_dir, int(item), artifact_stamp(run_dir), data_root_override(run_dir))


@st.cache_data(show_spinner=False, max_entries=4096)
def _imported_image(run_dir: str, item: int, stamp: float) -> np.ndarray:
    from core.data.folders import DatasetError
    from core.importer import load_image
    path = artifacts(run_dir).items[item].get("path")
    try:
        return load_image(path)
    except (OSError, ValueError) as err:
        raise DatasetError(f"item {item} of imported run {Path(run_dir).name} has no readable image "
                           f"({path or 'no path column was imported'}: {err})") from None


def image(run_dir: str, item: int) -> np.ndarray:
    """Item `item` for display: H×W×3 uint8."""
    return logic.to_uint8(model_input(run_dir, item))


def upload_input(run_dir: str, pil_image) -> np.ndarray:
    """An uploaded image as the run's model sees it (its test-time transform): 3×H×W float in [0, 1]."""
    from core.data import build_transform
    _, cfg = load_model(run_dir)
    return build_transform(cfg.data, train=False)(pil_image).numpy()


def annotation(run_dir: str, item: int) -> dict:
    """The data set's annotation of an item (shapes: class, attributes, target mask and box)."""
    meta = artifacts(run_dir).items[item]
    return getattr(splits(run_dir), meta.get("split", "test")).annotation(int(meta["index"]))


@st.cache_data(show_spinner="Drawing a shapes image…")
def shapes_demo_image() -> np.ndarray:
    """A fixed image of the procedural shapes set, 3×H×W in [0, 1], for when no run is loaded."""
    from core.data import shapes
    data = shapes.load(shapes.ShapesSpec(test_per_class=2), "test")
    return (data.images[0].astype(np.float32) / 255.0).transpose(2, 0, 1)
