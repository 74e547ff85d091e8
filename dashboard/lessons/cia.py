"""Lesson: cross-image attention, a training-only branch (its maps are on the Cross-image page)."""
from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.lessons import LessonContext, register_lesson


@register_lesson("cia", title="CIA — cross-image attention")
def cia(ctx: LessonContext) -> None:
    st.markdown("During training only, each image's embedding is conditioned on the image it is compared with: "
                "cross-attention lets one image pick the features of the other that matter for this pair, and the "
                "loss also trains on these conditional similarities. At test time the branch is dropped — the plain "
                "embedding has learned from it at no extra cost. The **Cross-image** page shows where one image "
                "looks in another (the trained attention for a CIA run, a similarity-based correspondence otherwise).")
    st.page_link(ui.PAGES["cross"], label="Open the Cross-image page", icon=":material/compare_arrows:")
    ctx.first_run("shapes_cia.yaml", "the Cross-image page shows similarity-based correspondence, not trained "
                                     "cross-image attention.")
