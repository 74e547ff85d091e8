"""Cross-image: where image A looks in B and B in A; click a patch of A to see where it lands in B."""
from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from dashboard import figures, logic, state, ui

st.title("Cross-image correspondence")
run = ui.require_run()
model, cfg, art = ui.load_or_stop(run)
table = state.retrieval(run)
n = len(art.labels)

try:  # written alongside this page by another part of the project: degrade if it is not there yet
    from core.explain import cross_attention, patch_correspondence
except ImportError as err:
    st.warning(f"Cross-image maps are not available in this build ({err}). They need "
               f"`core.explain.cross_attention` and `core.explain.patch_correspondence`; update the code base. "
               f"The rest of the dashboard works without them.")
    st.stop()

# ---- the pair: defaults to the shared query and its top-1 neighbour -----------------------------------
query = ui.query_item(n)  # clamped like every page (it was taken modulo n here)
pair = st.session_state.get(state.PAIR)
if not pair or pair.get("query") != query or pair.get("run") != run:
    pair = {"run": run, "query": query, "a": query, "b": int(table.neighbours[query, 0])}
    st.session_state[state.PAIR] = pair
for side in ("a", "b"):
    st.session_state[f"cross_{side}"] = pair[side]


def picked(side: str) -> None:
    st.session_state[state.PAIR][side] = int(st.session_state[f"cross_{side}"])


c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 1, 1])
c1.number_input("Image A (item)", 0, n - 1, key="cross_a", on_change=picked, args=("a",))
c2.number_input("Image B (item)", 0, n - 1, key="cross_b", on_change=picked, args=("b",))
temperature = c3.select_slider("Temperature", [0.02, 0.05, 0.1, 0.2, 0.5, 1.0], value=0.1, key="cross_temperature",
                               help="sharpness of the similarity maps (softmax over positions); lower = peakier")
opacity = c4.slider("Map opacity", 0.0, 1.0, 0.55, 0.05, key="cross_opacity")
source = c5.radio("Maps from", ["auto", "similarity"], key="cross_source",
                  help="auto: the run's trained cross-image attention when it has one, else the similarity maps; "
                       "similarity: always the generic similarity-based correspondence (uses the temperature)")
ui.query_finder(art, "cross")  # a label or file search sets the query: A, with its top-1 as B
if c1.button("Swap A and B", icon=":material/swap_horiz:", key="cross_swap"):
    pair["a"], pair["b"] = pair["b"], pair["a"]
    st.rerun()
a, b = pair["a"], pair["b"]
images = ui.images_or_error(run, [a, b])
if images is None:
    st.stop()
img_a, img_b = images
tensor_a = torch.from_numpy(state.model_input(run, a))
tensor_b = torch.from_numpy(state.model_input(run, b))
same = art.labels[a] == art.labels[b]
st.caption(f"A = {ui.item_caption(art, a)} · B = {ui.item_caption(art, b)} · cosine "
           f"{float(art.embeddings[a] @ art.embeddings[b]):.3f} · {'same class ✓' if same else 'different classes ✗'}")

try:
    with torch.inference_mode():
        cross = cross_attention(model, tensor_a, tensor_b, source=source, temperature=temperature)
except Exception as err:  # a bug in the explainer must not take the page down
    st.error(f"cross_attention failed for this run: {type(err).__name__}: {err}")
    st.stop()

a_in_b, b_in_a = cross["a_in_b"].numpy(), cross["b_in_a"].numpy()
st.markdown(f"**Source: {cross['source']}** — {cross.get('description', '')}")
k = a_in_b.shape[0]
channel = 0
if k > 1:
    options = ["mean"] + list(range(k))
    channel = st.radio("Map", options, horizontal=True, key="cross_channel",
                       format_func=lambda c: "mean of all" if c == "mean" else f"group {c}")


def pick(maps: np.ndarray) -> np.ndarray:
    return maps.mean(0) if channel == "mean" else maps[channel]


sims = cross.get("group_similarity")
if sims is not None and len(np.atleast_1d(sims)) > 1:
    st.caption("Per-group cosine of A and B: " + ", ".join(f"group {g}: {float(s):.3f}" for g, s in enumerate(np.atleast_1d(sims))))
cols = st.columns(4)
cols[0].image(figures.enlarge(img_a, 200), caption="A", width="stretch")
cols[1].image(figures.enlarge(figures.overlay(img_b, pick(a_in_b), opacity), 200),
              caption="A → B: where A looks in B", width="stretch")
cols[2].image(figures.enlarge(img_b, 200), caption="B", width="stretch")
cols[3].image(figures.enlarge(figures.overlay(img_a, pick(b_in_a), opacity), 200),
              caption="B → A: where B looks in A", width="stretch")

# ---- patch correspondence ------------------------------------------------------------------------
st.subheader("Click a patch of A to see where it lands in B")
grid_h, grid_w = a_in_b.shape[1:]
picker_key = f"cross_patch_picker_{grid_h}x{grid_w}"
patch = st.session_state.get("cross_patch") or (grid_h // 2, grid_w // 2)
# the chart's selection is in session state before the chart is drawn, so the highlighted patch
# follows the click in the same run; a click is applied once, so the sliders can move it later
clicked = logic.selected_ids(st.session_state.get(picker_key))
if len(clicked):
    click = divmod(int(clicked[0]), grid_w)
    if click != st.session_state.get("cross_last_click"):
        patch, st.session_state["cross_last_click"] = click, click
patch = (min(patch[0], grid_h - 1), min(patch[1], grid_w - 1))
st.session_state["cross_patch"] = patch
st.session_state["cross_row"], st.session_state["cross_col"] = patch


def slid() -> None:
    st.session_state["cross_patch"] = (st.session_state["cross_row"], st.session_state["cross_col"])


p1, p2 = st.columns(2)
with p1:
    st.plotly_chart(figures.patch_picker(figures.enlarge(img_a, 256), grid_h, grid_w, patch), key=picker_key,
                    on_select="rerun", selection_mode="points", config={"displayModeBar": False})
    with st.expander("Or pick the patch with sliders"):
        if grid_h > 1:  # a 1-cell axis has nothing to pick (and Streamlit refuses min == max)
            st.slider("row", 0, grid_h - 1, key="cross_row", on_change=slid)
        if grid_w > 1:
            st.slider("column", 0, grid_w - 1, key="cross_col", on_change=slid)
space = p2.radio("Compare patches in", ["features", "embedding"], horizontal=True, key="cross_space",
                 help="features: the backbone features at the pooled stage; embedding: per-position embeddings")
try:
    with torch.inference_mode():
        lands = patch_correspondence(model, tensor_a, tensor_b, patch[0], patch[1], temperature=temperature,
                                     space=space).numpy()
except Exception as err:
    p2.error(f"patch_correspondence failed: {type(err).__name__}: {err}")
else:
    p2.image(figures.enlarge(figures.overlay(img_b, lands, opacity), 256),
             caption=f"where A's patch (row {patch[0]}, col {patch[1]}) lands in B", width="stretch")
    peak = np.unravel_index(int(lands.argmax()), lands.shape)
    p2.caption(f"Peak at row {peak[0]}, col {peak[1]} with {lands.max():.0%} of the mass "
               f"(uniform would be {1 / lands.size:.1%}).")
