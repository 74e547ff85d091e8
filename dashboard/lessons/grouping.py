"""Lesson: attentive grouping with learnable queries (DGML): k maps, k group embeddings."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import explanations, learn_demos
from dashboard.lessons import LessonContext, register_lesson


@register_lesson("grouping", title="Grouping — attentive grouping with learnable queries (DGML)")
def grouping(ctx: LessonContext) -> None:
    st.markdown("k learnable query vectors each score every position (a dot product with a key projection), a "
                "softmax over positions turns the scores into a map, and each map pools its own **group embedding**; "
                "the groups are concatenated. A diversity loss keeps the groups apart, so they look at different "
                "parts. Below, the queries are k-means centres of this image's features — the mechanism, not "
                "trained queries.")
    g1, g2 = st.columns(2)
    k = g1.slider("Number of groups k", 1, 6, 3, key="learn_groups")
    temperature = g2.select_slider("Softmax temperature", [0.02, 0.05, 0.1, 0.2, 0.5], 0.1, key="learn_group_temp")
    c = ctx.features.shape[0]
    queries = learn_demos.kmeans(learn_demos.unit(ctx.features.reshape(c, -1), 0).T, k, seed=0)
    relative = learn_demos.relative_to_uniform(learn_demos.grouping_attention(ctx.features, queries, temperature))
    ctx.panels(list(relative), [f"group {g} (stand-alone), peak {m.max():.1f}× uniform" for g, m in enumerate(relative)],
               scale=learn_demos.RELATIVE_SCALE)
    st.caption(f"Colour: a position's weight relative to the uniform 1/(h·w), on a fixed scale 0 → "
               f"{learn_demos.RELATIVE_SCALE:g}× (the same for every temperature, so a flat map stays dim).")
    run = ctx.first_run("shapes_grouping.yaml", "the maps above are the stand-alone demo only.")
    if run is None:
        return
    out = explanations.explain(run, ctx.pixels)
    for name, maps in out.maps.items():
        st.markdown(f"Trained run **{Path(run).name}** — **{name}**: {out.describe(name)}")
        ctx.panels(list(maps), [f"{name}[{g}]" for g in range(len(maps))])
