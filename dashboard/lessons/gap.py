"""Lesson: global average pooling, the baseline every attention method departs from."""
from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard.lessons import LessonContext, register_lesson


@register_lesson("gap", title="GAP — global average pooling (the baseline)")
def gap(ctx: LessonContext) -> None:
    st.markdown("Every position gets the same weight 1/(h·w): the embedding is the mean feature. Clutter and background "
                "count as much as the object, which is why the shapes images carry distractors. There is no map to "
                "learn — the uniform map below is what every other method departs from.")
    _, h, w = ctx.features.shape
    ctx.panels([np.ones((h, w))], ["uniform weights"], scale=2.0, per_row=6)
