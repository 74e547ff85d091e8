"""Lesson: compressed self-attention, M base maps mixed per position; live M and query position."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import explanations, learn_demos, ui
from dashboard.lessons import LessonContext, register_lesson


def trained_position_maps(ctx: LessonContext, run: str, row: int, col: int) -> None:
    """The trained block's own answer for the chosen position (the registered per-position explainer, on
    image pixels), next to the base maps that position draws on most."""
    _, grid_h, grid_w = ctx.features.shape
    _, height, width = ctx.pixels.shape
    pixel = (row * height // grid_h, col * width // grid_w)        # the cell's top-left pixel
    own = explanations.explain(run, ctx.pixels, explainer="csa_position", row=pixel[0], col=pixel[1])
    learned = explanations.explain(run, ctx.pixels)
    for name, position_maps in own.maps.items():
        base_name = name.replace("csa_position", "csa_base")
        base, weights = learned.maps[base_name], learned.maps[name.replace("csa_position", "csa_weights")]
        r, c = pixel[0] * base.shape[1] // height, pixel[1] * base.shape[2] // width  # the cell on the block's grid
        mix = weights[:, r, c]
        top = mix.argsort()[::-1][:6].tolist()                                       # the base maps it draws on most
        st.markdown(f"Trained run **{Path(run).name}** — {ui.describe_map(base_name, base)}")
        captions = ([f"trained: what ({row}, {col}) attends to, group {g}" for g in range(len(position_maps))]
                    + [f"{base_name}[{j}] (weight {float(mix[j]):.2f})" for j in top])
        ctx.panels(list(position_maps) + [base[j] for j in top], captions, mark=(row, col))


@register_lesson("csa", title="CSA — compressed self-attention")
def csa(ctx: LessonContext) -> None:
    st.markdown("Self-attention lets every position look at every other (an N×N map). CSA compresses it: M learned "
                "**base vectors** per channel group each get one base attention map (softmax over positions of "
                "14 × the cosine between the base vector and each position's query), and each position mixes the M "
                "outputs with **adaptive weights** from the *same* cosines (softmax over the bases). A position thus "
                "effectively attends to Σ_m W[m]·A[m]. Cost falls from N² to N·M. Below, the CSA block itself runs "
                "on this image with untrained settings: its base vectors are k-means centres of the features (a "
                "trained run learns them). Pick a query position and compare with exact self-attention as M grows.")
    _, h, w = ctx.features.shape
    c1, c2, c3 = st.columns(3)
    m_bases = c1.slider("Base vectors M", 1, 8, 4, key="learn_bases")
    row = ui.int_slider(c2, "Query row", 0, h - 1, h // 2, key="learn_row")
    col = ui.int_slider(c3, "Query column", 0, w - 1, w // 2, key="learn_col")
    demo = learn_demos.csa_demo(ctx.features, m_bases, row, col)
    ctx.panels(list(demo["base_maps"]), [f"base map {j} (weight {demo['weights'][j]:.2f})" for j in range(m_bases)])
    ctx.panels([demo["rebuilt"], demo["full"]], [f"CSA: Σ weight × base map for ({row}, {col})",
                                                 f"exact self-attention of ({row}, {col})"], mark=(row, col))
    st.caption(f"Overlap of CSA's map and the exact one: {demo['agreement']:.0%} (100% = identical).")
    run = ctx.first_run("shapes_csa.yaml", "the maps above are the stand-alone demo only.")
    if run is not None:
        trained_position_maps(ctx, run, row, col)
