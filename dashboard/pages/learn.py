"""Learn: each pooling method in a few sentences, with live knobs on one fixed image.

The demos run on the selected run's features (or on plain pixel colours when there is no run) and
use the methods' trained runs when they exist; without them each section says what to train.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from core.checkpoint import CheckpointError
from core.data.folders import DatasetError
from core.models.blocks.csa import attention_at
from core.run_dir import DSL_EVENTS
from dashboard import figures, learn_demos, logic, state, ui

st.title("How the methods pool")
st.caption("A DML model turns a feature map (C channels at h×w positions) into one embedding. The methods "
           "differ in *how they weigh the positions*. Every knob below recomputes on the same image.")

runs = [r for r in state.discover_runs() if r["complete"]]
run = st.session_state.get(state.RUN)


def run_with(predicate) -> str | None:
    """A finished run whose config matches, preferring the selected one."""
    for r in sorted(runs, key=lambda r: r["path"] != run):
        try:
            cfg = state.load_model(r["path"])[1]
        except CheckpointError:
            continue
        if predicate(cfg):
            return r["path"]
    return None


def train_hint(config: str, what: str) -> None:
    """Say which run would make this section show a trained model, and how to get it."""
    st.info(f"No finished run of this method was found, so {what} Train one on the **Train** page (config "
            f"{config}) or run `python -m core train --config configs/{config} --out checkpoints/{Path(config).stem}`.")


# ---- the fixed image and its features --------------------------------------------------------------
pixels, feats, source = None, None, "pixel colours (no run loaded)"
if run:
    try:
        art = state.artifacts(run)
        item = st.number_input("Image (test item of the selected run)", 0, len(art.items) - 1, 0, key="learn_item")
        pixels = state.model_input(run, item)
        feats = state.features(run, (int(item),), state.weights_stamp(run))[0]
        source = f"the features of run **{Path(run).name}** ({feats.shape[0]} channels, {feats.shape[1]}×{feats.shape[2]})"
    except (CheckpointError, DatasetError) as err:
        st.warning(f"The selected run cannot feed the demos ({err}); using pixel colours instead.")
if pixels is None:
    pixels = state.shapes_demo_image()
    feats = learn_demos.pixel_features(pixels)
image = logic.to_uint8(pixels)
C, H, W = feats.shape
st.markdown(f"Demos use {source}.")
opacity = st.slider("Map opacity", 0.0, 1.0, 0.6, 0.05, key="learn_opacity")


def panels(maps: list[np.ndarray], captions: list[str], scale: float | None = None, per_row: int = 6,
           mark: tuple[int, int] | None = None) -> None:
    """Maps over the fixed image; `mark` outlines one feature cell (a query position) on each."""
    for start in range(0, len(maps), per_row):
        cols = st.columns(per_row)
        for col, m, cap in zip(cols, maps[start:start + per_row], captions[start:start + per_row]):
            panel = figures.enlarge(figures.overlay(image, m, opacity, scale=scale), 140)
            if mark is not None:
                panel = figures.mark_cell(panel, *mark, H, W)
            col.image(panel, caption=cap, width="stretch")


# ---- GAP ------------------------------------------------------------------------------------------
st.header("GAP — global average pooling (the baseline)")
st.markdown("Every position gets the same weight 1/(h·w): the embedding is the mean feature. Clutter and background "
            "count as much as the object, which is why the shapes images carry distractors. There is no map to "
            "learn — the uniform map below is what every other method departs from.")
panels([np.ones((H, W))], ["uniform weights"], scale=2.0, per_row=6)

# ---- grouping -------------------------------------------------------------------------------------
st.header("Grouping — attentive grouping with learnable queries (DGML)")
st.markdown("k learnable query vectors each score every position (a dot product with a key projection), a softmax "
            "over positions turns the scores into a map, and each map pools its own **group embedding**; the "
            "groups are concatenated. A diversity loss keeps the groups apart, so they look at different parts. "
            "Below, the queries are k-means centres of this image's features — the mechanism, not trained queries.")
g1, g2 = st.columns(2)
k = g1.slider("Number of groups k", 1, 6, 3, key="learn_groups")
temperature = g2.select_slider("Softmax temperature", [0.02, 0.05, 0.1, 0.2, 0.5], 0.1, key="learn_group_temp")
queries = learn_demos.kmeans(learn_demos.unit(feats.reshape(C, -1), 0).T, k, seed=0)
attention = learn_demos.grouping_attention(feats, queries, temperature)
relative = learn_demos.relative_to_uniform(attention)
panels(list(relative), [f"group {g} (stand-alone), peak {m.max():.1f}× uniform" for g, m in enumerate(relative)],
       scale=learn_demos.RELATIVE_SCALE)
st.caption(f"Colour: a position's weight relative to the uniform 1/(h·w), on a fixed scale 0 → "
           f"{learn_demos.RELATIVE_SCALE:g}× (the same for every temperature, so a flat map stays dim).")
grouping_run = run_with(lambda cfg: cfg.model.head == "grouping")
if grouping_run and pixels.shape[1] == state.load_model(grouping_run)[1].data.image_size:
    out = state.explain_input(grouping_run, pixels, state.weights_stamp(grouping_run))
    for name, maps in out["maps"].items():
        st.markdown(f"Trained run **{Path(grouping_run).name}** — {ui.describe_map(name, maps)}")
        panels(list(maps), [f"{name}[{g}]" for g in range(len(maps))])
else:
    train_hint("shapes_grouping.yaml", "the maps above are the stand-alone demo only.")

# ---- GSP ------------------------------------------------------------------------------------------
st.header("GSP — generalized sum pooling")
st.markdown("GSP sees pooling as transport: a share **μ** of the image's mass is moved onto m learned prototypes "
            "('semantic entities') by entropy-smoothed optimal transport, and positions far from every prototype "
            "keep their mass as residual — they are **ignored**. The pooling weight of a position is how much of it "
            "was transported. μ = 1 transports everything and gives back average pooling; small μ keeps only the "
            "positions that match the prototypes best. γ sharpens the transport.")
s1, s2 = st.columns(2)
mu = s1.slider("Transport ratio μ", 0.05, 1.0, 0.3, 0.05, key="learn_mu")
gamma = s2.slider("Entropy weight γ", 1.0, 20.0, 5.0, 0.5, key="learn_gamma")
gsp_run = run_with(lambda cfg: cfg.model.head == "gsp")
if gsp_run and pixels.shape[1] == state.load_model(gsp_run)[1].data.image_size:
    model = state.load_model(gsp_run)[0]
    head = copy.deepcopy(model.head)  # the cached model is shared: change μ on a private copy
    head.mu, head.gamma = float(mu), float(gamma)
    with torch.inference_mode():
        out = head(model.forward_features(torch.from_numpy(pixels)[None]))
    keep = next((m[0, 0].numpy() for m in out.maps.values() if m.shape[1] == 1), None)
    st.markdown(f"Trained run **{Path(gsp_run).name}**: its prototypes and projection, with your μ and γ.")
    if keep is not None:
        panels([keep], [f"keep map, μ={mu:.2f}, brightest {keep.max():.2f}"], scale=learn_demos.keep_scale(keep))
else:
    train_hint("shapes_gsp.yaml", "the maps below come from the stand-alone transport, not trained prototypes.")
    prototypes = learn_demos.kmeans(learn_demos.unit(feats.reshape(C, -1), 0).T, 4, seed=1)
    if run:  # prototypes from the object: the target mask says where it is (shapes annotations)
        try:
            mask = state.annotation(run, int(st.session_state.get("learn_item", 0))).get("mask")
        except (DatasetError, KeyError, AttributeError):
            mask = None
        if mask is not None:
            cells = learn_demos.mask_to_grid(mask, H, W)
            on_object = learn_demos.unit(feats.reshape(C, -1), 0).T[cells.ravel() > 0.5]
            if len(on_object):
                prototypes = learn_demos.kmeans(on_object, min(4, len(on_object)), seed=1)
                st.caption("Stand-alone prototypes: k-means centres of the features on the target object (from the "
                           "shapes mask) — a trained GSP learns such prototypes from the labels instead.")
    keep, plan = learn_demos.gsp_transport(feats, prototypes, mu, gamma)
    panels([keep], [f"keep map, μ={mu:.2f}, brightest {keep.max():.2f}"], scale=learn_demos.keep_scale(keep))
    panels(list(plan), [f"transport to prototype {j}" for j in range(len(plan))])
st.caption("Keep map: 1 = average pooling's weight, 0 = ignored, up to 1/μ = fully transported. Colour: 0 → the "
           "map's brightest weight (at least 1), so a small μ's few kept positions stand out; the caption gives "
           "that weight.")

# ---- CSA ------------------------------------------------------------------------------------------
st.header("CSA — compressed self-attention")
st.markdown("Self-attention lets every position look at every other (an N×N map). CSA compresses it: M learned "
            "**base vectors** per channel group each get one base attention map (softmax over positions of "
            "14 × the cosine between the base vector and each position's query), and each position mixes the M "
            "outputs with **adaptive weights** from the *same* cosines (softmax over the bases). A position thus "
            "effectively attends to Σ_m W[m]·A[m]. Cost falls from N² to N·M. Below, the CSA block itself runs on "
            "this image with untrained settings: its base vectors are k-means centres of the features (a trained "
            "run learns them). Pick a query position and compare with exact self-attention as M grows.")
c1, c2, c3 = st.columns(3)
m_bases = c1.slider("Base vectors M", 1, 8, 4, key="learn_bases")
row = ui.int_slider(c2, "Query row", 0, H - 1, H // 2, key="learn_row")
col = ui.int_slider(c3, "Query column", 0, W - 1, W // 2, key="learn_col")
demo = learn_demos.csa_demo(feats, m_bases, row, col)
panels(list(demo["base_maps"]), [f"base map {j} (weight {demo['weights'][j]:.2f})" for j in range(m_bases)])
panels([demo["rebuilt"], demo["full"]], [f"CSA: Σ weight × base map for ({row}, {col})",
                                         f"exact self-attention of ({row}, {col})"], mark=(row, col))
st.caption(f"Overlap of CSA's map and the exact one: {demo['agreement']:.0%} (100% = identical).")
csa_run = run_with(lambda cfg: any(b.name == "csa" for b in cfg.model.blocks))
if csa_run and pixels.shape[1] == state.load_model(csa_run)[1].data.image_size:
    out = state.explain_input(csa_run, pixels, state.weights_stamp(csa_run))
    for name, maps in out["maps"].items():
        if name.split("@")[0] != "csa_base":
            continue
        trained = {"csa_base": torch.from_numpy(maps)[None],
                   "csa_weights": torch.from_numpy(out["maps"][name.replace("csa_base", "csa_weights")])[None]}
        r, c = row * maps.shape[1] // H, col * maps.shape[2] // W          # the query cell on the block's grid
        own = attention_at(trained, r, c)[0].numpy()                       # G×h×w
        mix = trained["csa_weights"][0, :, r, c]
        top = mix.argsort(descending=True)[:6].tolist()                    # the base maps it draws on most
        st.markdown(f"Trained run **{Path(csa_run).name}** — {ui.describe_map(name, maps)}")
        captions = ([f"trained: what ({row}, {col}) attends to, group {g}" for g in range(len(own))]
                    + [f"{name}[{j}] (weight {float(mix[j]):.2f})" for j in top])
        panels(list(own) + [maps[j] for j in top], captions, mark=(row, col))
else:
    train_hint("shapes_csa.yaml", "the maps above are the stand-alone demo only.")

# ---- DSL ------------------------------------------------------------------------------------------
st.header("DSL — dynamic subspace learners")
st.markdown("One spatial attention map weights the features before average pooling; the embedding is split into "
            "**subspaces (learners)**, each trained on its own cluster of the data. When validation stops "
            "improving, the last learner **splits**: its most important neurons stay, the rest become a new "
            "learner. The replay below steps through a run's growth log.")
dsl_run = run_with(lambda cfg: cfg.model.head == "dsl")
events_path = Path(dsl_run) / DSL_EVENTS if dsl_run else None
if events_path is not None and events_path.exists():
    payload = json.loads(events_path.read_text())
    epochs = payload.get("epochs") or []
    if epochs:
        # open on the epoch whose weights the run kept (metrics.json best_epoch), not the last one logged
        best = state.summary(dsl_run).get("best_epoch")
        logged = [e["epoch"] for e in epochs]
        opening = logged.index(best) if best in logged else len(epochs) - 1
        step = ui.int_slider(st, "Replay up to logged epoch", 0, len(epochs) - 1, opening,
                             key=f"learn_dsl_epoch_{Path(dsl_run).name}",
                             help=f"opens on epoch {logged[opening]}, the one whose weights the run kept")
        now = learn_demos.dsl_state_at(payload, step)
        st.plotly_chart(figures.learner_partition(now["learners"]), key="learn_dsl_bar", width="stretch")
        metric = payload.get("growth_metric", "nmi")
        st.plotly_chart(figures.metric_curve([e["epoch"] for e in epochs], [e.get(metric) for e in epochs],
                                             f"val {metric}", now["epoch"]), key="learn_dsl_curve", width="stretch")
        kept_note = " (the kept weights)" if now["epoch"] == best else ""
        st.caption(f"Epoch {now['epoch']}{kept_note}: {len(now['learners'])} learner(s), phase {now['row'].get('phase', '?')}; "
                   f"{len(now['events'])} split(s) so far. {now['row'].get('growth', '')}")
    else:
        st.info(f"{events_path} has no epochs logged yet.")
else:
    if dsl_run:
        st.info(f"Run {Path(dsl_run).name} has no {DSL_EVENTS} (it is written while training).")
    else:
        train_hint("shapes_dsl.yaml", "there is no growth log to replay.")

# ---- CIA ------------------------------------------------------------------------------------------
st.header("CIA — cross-image attention")
st.markdown("During training only, each image's embedding is conditioned on the image it is compared with: "
            "cross-attention lets one image pick the features of the other that matter for this pair, and the loss "
            "also trains on these conditional similarities. At test time the branch is dropped — the plain "
            "embedding has learned from it at no extra cost. The **Cross-image** page shows where one image looks "
            "in another (the trained attention for a CIA run, a similarity-based correspondence otherwise).")
st.page_link(ui.PAGES["cross"], label="Open the Cross-image page", icon=":material/compare_arrows:")
if not run_with(lambda cfg: cfg.model.cia is not None):
    train_hint("shapes_cia.yaml", "the Cross-image page shows similarity-based correspondence, not trained "
                                  "cross-image attention.")
