"""Cross-image: where image A looks in B and B in A; click a patch of A to see where it lands in B.

The maps come from the registered "cross" and "patch" explainers the run supports (core/explain.py);
the page names none of them."""
from __future__ import annotations

import numpy as np
import streamlit as st

from core.explain import Explainer, explainers
from dashboard import artifacts, dataset, explanations, figures, logic, session, ui


def pair_ui(run: str, art: artifacts.Artifacts) -> tuple[int, int]:
    """Items A and B: by default the shared query and its top-1 neighbour; A and B can be typed or swapped."""
    n = len(art.labels)
    query = ui.query_item(n)  # clamped like every page
    pair = st.session_state.get(session.PAIR)
    if not pair or pair.get("query") != query or pair.get("run") != run:
        pair = {"run": run, "query": query, "a": query, "b": int(artifacts.retrieval(run).neighbours[query, 0])}
        st.session_state[session.PAIR] = pair
    for side in ("a", "b"):
        st.session_state[f"cross_{side}"] = pair[side]

    def picked(side: str) -> None:
        st.session_state[session.PAIR][side] = int(st.session_state[f"cross_{side}"])

    c1, c2 = st.columns(2)
    c1.number_input("Image A (item)", 0, n - 1, key="cross_a", on_change=picked, args=("a",))
    c2.number_input("Image B (item)", 0, n - 1, key="cross_b", on_change=picked, args=("b",))
    ui.query_finder(art, "cross")  # a label or file search sets the query: A, with its top-1 as B
    if c1.button("Swap A and B", icon=":material/swap_horiz:", key="cross_swap"):
        pair["a"], pair["b"] = pair["b"], pair["a"]
        st.rerun()
    return pair["a"], pair["b"]


def settings_ui(model) -> tuple[Explainer, float, float]:
    """(the cross explainer to show, temperature, map opacity)."""
    available = {e.name: e for e in explainers("cross", model)}
    c1, c2, c3 = st.columns(3)
    temperature = c1.select_slider("Temperature", [0.02, 0.05, 0.1, 0.2, 0.5, 1.0], value=0.1,
                                   key="cross_temperature",
                                   help="sharpness of the similarity maps (softmax over positions); lower = peakier")
    opacity = c2.slider("Map opacity", 0.0, 1.0, 0.55, 0.05, key="cross_opacity")
    name = c3.radio("Maps from", list(available), key="cross_source", format_func=lambda n: available[n].title,
                    help="the explainers that apply to this run; the first is the run's trained cross-image "
                         "attention when it has one")
    return available[name], temperature, opacity


def cross_maps_ui(run: str, explainer: Explainer, pixels: tuple, images: tuple, temperature: float,
                  opacity: float) -> None:
    out = explanations.explain(run, pixels[0], pixels[1], explainer=explainer.name, temperature=temperature)
    a_in_b, b_in_a = out.maps["a_in_b"], out.maps["b_in_a"]
    st.markdown(f"**Source: {out.notes.get('source', explainer.title)}** — {explainer.description}")
    channel = 0
    if a_in_b.shape[0] > 1:
        channel = st.radio("Map", ["mean"] + list(range(a_in_b.shape[0])), horizontal=True, key="cross_channel",
                           format_func=lambda c: "mean of all" if c == "mean" else f"group {c}")

    def pick(maps: np.ndarray) -> np.ndarray:
        return maps.mean(0) if channel == "mean" else maps[channel]

    sims = np.atleast_1d(out.notes.get("group_similarity", []))
    if len(sims) > 1:
        st.caption("Per-group cosine of A and B: " + ", ".join(f"group {g}: {float(s):.3f}" for g, s in enumerate(sims)))
    img_a, img_b = images
    cols = st.columns(4)
    cols[0].image(figures.enlarge(img_a, 200), caption="A", width="stretch")
    cols[1].image(figures.enlarge(figures.overlay(img_b, pick(a_in_b), opacity), 200),
                  caption="A → B: where A looks in B", width="stretch")
    cols[2].image(figures.enlarge(img_b, 200), caption="B", width="stretch")
    cols[3].image(figures.enlarge(figures.overlay(img_a, pick(b_in_a), opacity), 200),
                  caption="B → A: where B looks in A", width="stretch")


def patch_choice(grid_h: int, grid_w: int) -> tuple[int, int]:
    """The chosen patch of A: the chart's selection is in session state before the chart is drawn, so the
    highlighted patch follows the click in the same run; a click is applied once, so sliders can move it later."""
    picker_key = f"cross_patch_picker_{grid_h}x{grid_w}"
    patch = st.session_state.get("cross_patch") or (grid_h // 2, grid_w // 2)
    clicked = logic.selected_ids(st.session_state.get(picker_key))
    if len(clicked):
        click = divmod(int(clicked[0]), grid_w)
        if click != st.session_state.get("cross_last_click"):
            patch, st.session_state["cross_last_click"] = click, click
    patch = (min(patch[0], grid_h - 1), min(patch[1], grid_w - 1))
    st.session_state["cross_patch"] = patch
    st.session_state["cross_row"], st.session_state["cross_col"] = patch
    return patch


def patch_picker_ui(img_a: np.ndarray, grid_h: int, grid_w: int) -> tuple[int, int]:
    patch = patch_choice(grid_h, grid_w)

    def slid() -> None:
        st.session_state["cross_patch"] = (st.session_state["cross_row"], st.session_state["cross_col"])

    st.plotly_chart(figures.patch_picker(figures.enlarge(img_a, 256), grid_h, grid_w, patch),
                    key=f"cross_patch_picker_{grid_h}x{grid_w}", on_select="rerun", selection_mode="points",
                    config={"displayModeBar": False})
    with st.expander("Or pick the patch with sliders"):
        if grid_h > 1:  # a 1-cell axis has nothing to pick (and Streamlit refuses min == max)
            st.slider("row", 0, grid_h - 1, key="cross_row", on_change=slid)
        if grid_w > 1:
            st.slider("column", 0, grid_w - 1, key="cross_col", on_change=slid)
    return patch


def patch_maps_ui(run: str, model, pixels: tuple, images: tuple, temperature: float, opacity: float) -> None:
    """Every registered "patch" explainer: click a patch of A, see where it lands in B."""
    for explainer in explainers("patch", model):
        st.subheader("Click a patch of A to see where it lands in B")
        grid_h, grid_w = explanations.explain(run, pixels[0], pixels[1], explainer=explainer.name, row=0, col=0,
                                              temperature=temperature).maps["lands"].shape
        p1, p2 = st.columns(2)
        with p1:
            patch = patch_picker_ui(images[0], grid_h, grid_w)
        space = p2.radio("Compare patches in", ["features", "embedding"], horizontal=True, key="cross_space",
                         help="features: the backbone features at the pooled stage; embedding: per-position embeddings")
        lands = explanations.explain(run, pixels[0], pixels[1], explainer=explainer.name, row=patch[0], col=patch[1],
                                     temperature=temperature, space=space).maps["lands"]
        p2.image(figures.enlarge(figures.overlay(images[1], lands, opacity), 256),
                 caption=f"where A's patch (row {patch[0]}, col {patch[1]}) lands in B", width="stretch")
        peak = np.unravel_index(int(lands.argmax()), lands.shape)
        p2.caption(f"Peak at row {peak[0]}, col {peak[1]} with {lands.max():.0%} of the mass "
                   f"(uniform would be {1 / lands.size:.1%}).")


def main() -> None:
    st.title("Cross-image correspondence")
    run = ui.require_run()
    model, _, art = ui.load_or_stop(run)
    a, b = pair_ui(run, art)
    explainer, temperature, opacity = settings_ui(model)
    images = ui.images_or_error(run, [a, b])
    if images is None:
        st.stop()
    same = art.labels[a] == art.labels[b]
    st.caption(f"A = {ui.item_caption(art, a)} · B = {ui.item_caption(art, b)} · cosine "
               f"{float(art.embeddings[a] @ art.embeddings[b]):.3f} · {'same class ✓' if same else 'different classes ✗'}")
    pixels = (dataset.model_input(run, a), dataset.model_input(run, b))
    try:
        cross_maps_ui(run, explainer, pixels, tuple(images), temperature, opacity)
        patch_maps_ui(run, model, pixels, tuple(images), temperature, opacity)
    except Exception as err:  # a bug in an explainer must not take the page down
        st.error(f"{explainer.name} failed for this run: {type(err).__name__}: {err}")


main()
