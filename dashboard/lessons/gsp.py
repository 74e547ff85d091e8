"""Lesson: generalized sum pooling as partial optimal transport; μ and γ are live knobs."""
from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from core.checkpoint import CheckpointError
from core.data.folders import DatasetError
from dashboard import dataset, learn_demos, model_cache
from dashboard.lessons import LessonContext, register_lesson


def trained_keep_map(run: str, pixels, mu: float, gamma: float):
    """The run's keep map of this image with the chosen μ and γ, from a copy of its head (`with_transport`):
    the cached model is shared by every session and is never changed."""
    model = model_cache.load_model(run)[0]
    head = model.head.with_transport(mu, gamma)
    with torch.inference_mode():
        out = head(model.forward_features(torch.from_numpy(pixels)[None]))
    return out.maps["keep"][0, 0].numpy()


def object_prototypes(ctx: LessonContext):
    """Stand-alone prototypes: k-means centres of the features on the target object (the shapes mask says
    where it is), else of the whole image's features."""
    c, h, w = ctx.features.shape
    points = learn_demos.unit(ctx.features.reshape(c, -1), 0).T
    prototypes = learn_demos.kmeans(points, 4, seed=1)
    if ctx.selected is None or ctx.item is None:
        return prototypes
    try:
        mask = dataset.annotation(ctx.selected, ctx.item).get("mask")
    except (CheckpointError, DatasetError, KeyError, AttributeError):
        mask = None
    if mask is None:
        return prototypes
    on_object = points[learn_demos.mask_to_grid(mask, h, w).ravel() > 0.5]
    if not len(on_object):
        return prototypes
    st.caption("Stand-alone prototypes: k-means centres of the features on the target object (from the shapes "
               "mask) — a trained GSP learns such prototypes from the labels instead.")
    return learn_demos.kmeans(on_object, min(4, len(on_object)), seed=1)


@register_lesson("gsp", title="GSP — generalized sum pooling")
def gsp(ctx: LessonContext) -> None:
    st.markdown("GSP sees pooling as transport: a share **μ** of the image's mass is moved onto m learned prototypes "
                "('semantic entities') by entropy-smoothed optimal transport, and positions far from every prototype "
                "keep their mass as residual — they are **ignored**. The pooling weight of a position is how much of "
                "it was transported. μ = 1 transports everything and gives back average pooling; small μ keeps only "
                "the positions that match the prototypes best. γ sharpens the transport.")
    run = ctx.first_run("shapes_gsp.yaml", "the maps below come from the stand-alone transport, not trained prototypes.")
    # the knobs start where the trained run's head is (TF's defaults without one)
    head = model_cache.load_model(run)[0].head if run is not None else None
    s1, s2 = st.columns(2)
    mu = s1.slider("Transport ratio μ", 0.05, 1.0, round(head.mu, 2) if head else 0.3, 0.05, key="learn_mu")
    gamma = s2.slider("Entropy weight γ", 1.0, 50.0, float(head.eval_gamma) if head else 5.0, 0.5, key="learn_gamma")
    if run is not None:
        keep = trained_keep_map(run, ctx.pixels, mu, gamma)
        st.markdown(f"Trained run **{Path(run).name}**: its prototypes and projection, with your μ and γ."
                    + (f" It trained at γ {head.gamma:g} and embeds at γ {head.eval_gamma:g} (an extension of GSP): "
                       f"set γ to {head.gamma:g} to see the smoother plan it learned with, which keeps much of the "
                       "background too." if head.eval_gamma != head.gamma else ""))
        ctx.panels([keep], [f"keep map, μ={mu:.2f}, brightest {keep.max():.2f}"], scale=learn_demos.keep_scale(keep))
    else:
        keep, plan = learn_demos.gsp_transport(ctx.features, object_prototypes(ctx), mu, gamma)
        ctx.panels([keep], [f"keep map, μ={mu:.2f}, brightest {keep.max():.2f}"], scale=learn_demos.keep_scale(keep))
        ctx.panels(list(plan), [f"transport to prototype {j}" for j in range(len(plan))])
    st.caption("Keep map: 1 = average pooling's weight, 0 = ignored, up to 1/μ = fully transported. Colour: 0 → the "
               "map's brightest weight (at least 1), so a small μ's few kept positions stand out; the caption gives "
               "that weight.")
