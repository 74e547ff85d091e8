"""What a run's model says about its inputs, cached per weights version: `explain` (`core.explain`'s one verb
on the run's shared model), the maps a model exposes, every item's channel masses, backbone features.
"""
from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st
import torch

from core.explain import EXPLAINERS, Explanation
from core.explain import explain as core_explain
from dashboard.artifacts import artifacts
from dashboard.caching import artifact_stamp, cache_path, weights_stamp
from dashboard.catalog import imported, user_code
from dashboard.dataset import model_input
from dashboard.model_cache import load_model
from dashboard.session import data_root_override


@st.cache_data(show_spinner=False, max_entries=512)
def _explain(run_dir: str, stamp: float, explainer: str, query: np.ndarray, reference: np.ndarray | None,
             options: tuple) -> Explanation:
    model, _ = load_model(run_dir)
    return core_explain(model, query, reference, explainer=explainer, **dict(options))


def explain(run_dir: str, query: np.ndarray, reference: np.ndarray | None = None, explainer: str = "learned",
            **options) -> Explanation:
    """`core.explain.explain` on the run's shared model, cached per weights version (query and reference:
    model inputs 3×H×W, or an embedding as reference; see core/explain.py for what each kind takes)."""
    if EXPLAINERS.get(explainer).kind in ("attribution", "contrast"):  # Captum runs backward passes: say so
        with st.spinner("Attributing the similarity…"):
            return _explain(run_dir, weights_stamp(run_dir), explainer, query, reference,
                            tuple(sorted(options.items())))
    return _explain(run_dir, weights_stamp(run_dir), explainer, query, reference, tuple(sorted(options.items())))


def explain_input(run_dir: str, pixels: np.ndarray) -> dict:
    """Embedding, every learned map (K×h×w numpy), extras and group slices for one model input."""
    out = explain(run_dir, pixels)
    return {"embedding": out.embedding, "maps": out.maps, "extras": out.extras,
            "groups": [(g.start or 0, g.stop) for g in out.groups]}


def explain_item(run_dir: str, item: int, explainer: str = "learned", **options) -> Explanation:
    return explain(run_dir, model_input(run_dir, item), explainer=explainer, **options)


@st.cache_data(show_spinner=False, max_entries=32)
def _map_shapes(run_dir: str, stamp: float) -> dict[str, tuple[int, int, int]]:
    """name -> (K, h, w) of every map the model exposes, from a blank input (needs no data set)."""
    model, cfg = load_model(run_dir)
    size = cfg.data.image_size
    with torch.inference_mode():
        maps = model.explain(torch.full((1, 3, size, size), 0.5)).maps
    return {name: tuple(m.shape[1:]) for name, m in maps.items()}


def map_shapes(run_dir: str) -> dict[str, tuple[int, int, int]]:
    if imported(run_dir) or user_code(run_dir):  # no model, or a researcher's own network: no learned maps
        return {}
    return _map_shapes(run_dir, weights_stamp(run_dir))


@st.cache_data(show_spinner=False, max_entries=8)
def _map_channel_mass(run_dir: str, stamp: float, data_root: str | None, weights: float,
                      _progress=None) -> dict[str, np.ndarray]:
    """Per item and map with K > 1 channels: the mass of each channel (N×K), for 'dominant channel'.
    A full pass over the test images, so it reports progress and is kept on disk in the git-ignored
    .cache/, keyed by the run and the mtimes of its weights and embeddings."""
    key = hashlib.sha1(f"{run_dir}|{stamp}|{weights}|{data_root}".encode()).hexdigest()[:16]
    cached = cache_path("channel_mass", f"{key}.npz")
    try:
        with np.load(cached) as saved:
            return {name: saved[name] for name in saved.files}
    except (OSError, ValueError):
        pass
    model, _ = load_model(run_dir)
    n = len(artifacts(run_dir).items)
    out: dict[str, list] = {}
    with torch.inference_mode():
        for start in range(0, n, 64):
            batch = torch.from_numpy(np.stack([model_input(run_dir, i) for i in range(start, min(n, start + 64))]))
            for name, m in model.explain(batch).maps.items():
                if m.shape[1] > 1:
                    out.setdefault(name, []).append(m.float().flatten(2).sum(-1).numpy())
            if _progress is not None:
                _progress(min(n, start + 64), n)
    result = {name: np.concatenate(parts) for name, parts in out.items()}
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, **result)
        tmp.replace(cached)  # whole or absent, never half-written
    except OSError:
        pass  # a read-only checkout recomputes next time
    return result


def map_channel_mass(run_dir: str, progress=None) -> dict[str, np.ndarray]:
    """`progress(done, total)` is called while the maps are computed (not on a cache hit)."""
    return _map_channel_mass(run_dir, artifact_stamp(run_dir), data_root_override(run_dir),
                             weights_stamp(run_dir), _progress=progress)


@st.cache_data(show_spinner=False, max_entries=64)
def features(run_dir: str, items: tuple[int, ...], stamp: float) -> np.ndarray:
    """Backbone features at the pooled stage for some items, B×C×h×w (for the Learn page's demos)."""
    model, _ = load_model(run_dir)
    batch = torch.from_numpy(np.stack([model_input(run_dir, i) for i in items]))
    with torch.inference_mode():
        return model.forward_features(batch).float().numpy()
