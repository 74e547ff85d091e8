"""Lesson: global average pooling, the baseline every attention method departs from."""
from __future__ import annotations

import streamlit as st

from dashboard import figures
from dashboard.lessons import LessonContext, register_lesson


@register_lesson("gap", title="GAP — global average pooling (the baseline)")
def gap(ctx: LessonContext) -> None:
    st.markdown("Every position gets the same weight 1/(h·w): the embedding is the mean feature. Clutter and background "
                "count as much as the object, which is why the shapes images carry distractors. There is no map to "
                "learn — the uniform weights below (every cell alike) are what every other method departs from.")
    _, h, w = ctx.features.shape
    # no colour tint: a constant map blended over the image would only shift its hues (a green circle turned brown)
    panel = figures.cell_grid(figures.enlarge(ctx.image, 140), h, w)
    st.columns(6)[0].image(panel, caption=f"uniform weights: each of the {h}×{w} cells weighs 1/{h * w}",
                           width="stretch")
