"""Learn: every registered lesson (dashboard/lessons/), in order, with live knobs on one fixed image.

The lessons run on the selected run's features (or on plain pixel colours when there is no run) and each
gets the finished runs that use its method; without them a lesson says what to train. This page knows no
method: a new lesson is one file in dashboard/lessons/ with `@register_lesson(name)`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core.checkpoint import CheckpointError
from core.data.folders import DatasetError
from dashboard import artifacts, caching, catalog, dataset, explanations, learn_demos, model_cache, session
from dashboard.lessons import LessonContext, lessons


def fixed_image_ui(run: str | None) -> tuple[np.ndarray, np.ndarray, int | None, str]:
    """(pixels 3×H×W, features C×h×w, test item or None, where the features come from)."""
    if run:
        try:
            art = artifacts.artifacts(run)
            item = int(st.number_input("Image (test item of the selected run)", 0, len(art.items) - 1, 0,
                                       key="learn_item"))
            pixels = dataset.model_input(run, item)
            feats = explanations.features(run, (item,), caching.weights_stamp(run))[0]
            return pixels, feats, item, (f"the features of run **{Path(run).name}** ({feats.shape[0]} channels, "
                                         f"{feats.shape[1]}×{feats.shape[2]})")
        except (CheckpointError, DatasetError) as err:
            st.warning(f"The selected run cannot feed the demos ({err}); using pixel colours instead.")
    pixels = dataset.shapes_demo_image()
    return pixels, learn_demos.pixel_features(pixels), None, "pixel colours (no run loaded)"


def runs_by_method(selected: str | None, image_size: int) -> dict[str, list[str]]:
    """method -> finished runs that use it and take images of this size, the selected run first."""
    found: dict[str, list[str]] = {}
    finished = [r["path"] for r in catalog.discover_runs() if r["complete"]]
    for run in sorted(finished, key=lambda path: path != selected):
        try:
            cfg = model_cache.load_model(run)[1]
        except CheckpointError:
            continue
        if cfg.data.image_size == image_size:
            for method in dict.fromkeys(catalog.methods_of(cfg)):   # a run with two CSA blocks is listed once
                found.setdefault(method, []).append(run)
    return found


def main() -> None:
    st.title("How the methods pool")
    st.caption("A DML model turns a feature map (C channels at h×w positions) into one embedding. The methods "
               "differ in *how they weigh the positions*. Every knob below recomputes on the same image.")
    run = st.session_state.get(session.RUN)
    pixels, feats, item, source = fixed_image_ui(run)
    st.markdown(f"Demos use {source}.")
    opacity = st.slider("Map opacity", 0.0, 1.0, 0.6, 0.05, key="learn_opacity")
    runs = runs_by_method(run, pixels.shape[1])
    for lesson in lessons():
        st.header(lesson.title)
        lesson.render(LessonContext(pixels, feats, runs.get(lesson.name, []), run, item, opacity))


main()
