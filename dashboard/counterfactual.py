"""Hide part of the query and watch the retrieval respond: the counterfactual re-ranking panel of the Attention
and Retrieval pages (issue 26).

The query is drawn under a grid of cells (the model's feature grid, 4 to 16 cells a side). A click on a cell
hides it or shows it again; in the box or lasso mode a drag over a region hides the region (over hidden cells
only, it shows them again). Or a map chooses: "hide what it attends to" hides the map's top share of cells, "keep only it" every
other cell (the map averaged onto the grid). Hidden cells are filled with the image's mean colour, as the
deletion curves fill them. Each change re-ranks the whole test set with `core.rerank.Reranker`: one forward of
the hidden query against the run's stored embeddings; the Reranker is built once per query and shared by every
session. The panel lists the new top-k and where the former top-k went: ranks before and now, the rank change,
the cosine and its change. "Reset" shows the original ranking again (hiding nothing reproduces it exactly).
The panel is a fragment: a click reruns it alone, not the page around it.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch
import torch.nn.functional as F

from core.explain import explainers
from core.rerank import Reranker, Reranking, cells_by_map
from dashboard import artifacts, explanations, figures, logic, ui
from dashboard.caching import artifact_stamp, weights_stamp
from dashboard.model_cache import load_model

HIDDEN = "rerank_hidden"      # session: {"owner": run|query|grid, "cells": [flat indices of the hidden cells]}
PICKS = "rerank_picks"        # session: selections applied so far; the picker chart's key carries it
GRID_SIDES = (4, 16)          # cells per side of the hiding grid, whatever the model's feature grid
DRAG = {"click cells": None, "drag a box": "select", "draw a lasso": "lasso"}   # the picker's modes


# ---- the state: which cells are hidden ---------------------------------------------------------------------
def query_key(query: ui.Query) -> str:
    """The query's identity: its item, or a digest of an uploaded image's pixels."""
    if query.item is not None:
        return f"item {query.item}"
    return "upload " + hashlib.sha1(np.ascontiguousarray(query.pixels).tobytes()).hexdigest()[:12]


def hidden_cells(owner: str, grid: tuple[int, int]) -> np.ndarray:
    """This session's hidden cells (h×w bool) for this run, query and grid; none for any other."""
    state = st.session_state.get(HIDDEN) or {}
    hidden = np.zeros(grid, bool)
    if state.get("owner") == owner:
        hidden.ravel()[state["cells"]] = True
    return hidden


def set_hidden(owner: str, hidden: np.ndarray) -> None:
    st.session_state[HIDDEN] = {"owner": owner, "cells": np.flatnonzero(hidden).tolist()}


def toggle(hidden: np.ndarray, cells) -> np.ndarray:
    """A click or a region on the grid: hide the cells, or, when every one of them is hidden already, show them."""
    out = hidden.copy()
    cells = np.asarray(cells, dtype=int)
    if len(cells):
        out.ravel()[cells] = not out.ravel()[cells].all()
    return out


def picker_key(page: str) -> str:
    return f"rerank_picker_{page}_{st.session_state.get(PICKS, 0)}"


def apply_selection(page: str, owner: str, grid: tuple[int, int]) -> None:
    """The picker's selection (in session state before the chart is drawn) applied once: the chart is then drawn
    anew under another key, with nothing selected, so the next click on the same cell counts again."""
    cells = logic.selected_ids(st.session_state.get(picker_key(page)))
    cells = cells[(cells >= 0) & (cells < grid[0] * grid[1])]
    if len(cells):
        set_hidden(owner, toggle(hidden_cells(owner, grid), cells))
        st.session_state[PICKS] = st.session_state.get(PICKS, 0) + 1


# ---- the model's side: the grid, the cached re-ranker, the maps that choose cells ----------------------------
@st.cache_data(show_spinner=False, max_entries=64)
def _feature_grid(run_dir: str, stamp: float, shape: tuple[int, ...]) -> tuple[int, int]:
    model, _ = load_model(run_dir)
    try:
        with torch.inference_mode():
            features = model.forward_features(torch.full((1, *shape), 0.5))
        h, w = features.shape[-2:]
    except Exception:  # a model without a spatial feature map: a plain grid still hides regions
        h = w = 8
    return tuple(int(min(max(side, GRID_SIDES[0]), GRID_SIDES[1])) for side in (h, w))


def hiding_grid(run_dir: str, pixels: np.ndarray) -> tuple[int, int]:
    """Cells per side: the model's feature grid (what one embedding position sees), kept within GRID_SIDES."""
    return _feature_grid(run_dir, weights_stamp(run_dir), tuple(pixels.shape))


@st.cache_resource(show_spinner=False, max_entries=4)
def _gallery(run_dir: str, arts: float) -> torch.Tensor:
    """The run's test embeddings as one tensor every re-ranker of the run shares (the cached artifacts are
    read-only numpy arrays, which torch will not wrap)."""
    return torch.from_numpy(np.array(artifacts.artifacts(run_dir).embeddings, dtype=np.float32))


@st.cache_resource(show_spinner=False, max_entries=32)
def _reranker(run_dir: str, weights: float, arts: float, key: str, exclude: int | None, _pixels: np.ndarray) -> Reranker:
    model, _ = load_model(run_dir)
    return Reranker(model, _pixels, _gallery(run_dir, arts), exclude=exclude)


def reranker(run_dir: str, query: ui.Query) -> Reranker:
    """The query's re-ranker against the run's test embeddings (one per query, shared by every session)."""
    return _reranker(run_dir, weights_stamp(run_dir), artifact_stamp(run_dir), query_key(query), query.item,
                     query.pixels)


@dataclass(frozen=True)
class MapChoice:
    explainer: str
    name: str
    channel: int | None          # None: the map itself, or a multi-channel map's channel mean
    label: str


def map_choices(run_dir: str, model) -> list[MapChoice]:
    """The maps that can choose cells: each learned map (a multi-channel one as its channel mean and, up to 8
    channels, each channel) and each attribution of the similarity to the top-1 neighbour."""
    choices = []
    if any(e.name == "learned" for e in explainers("maps", model)):
        for name, (k, _, _) in explanations.map_shapes(run_dir).items():
            choices.append(MapChoice("learned", name, None, f"{name}" + (f" (mean of {k} channels)" if k > 1 else "")))
            if 1 < k <= 8:
                choices += [MapChoice("learned", name, c, f"{name}[{c}]") for c in range(k)]
    for e in explainers("attribution", model):
        choices.append(MapChoice(e.name, "attribution", None, f"{e.title} of the similarity to the top-1"))
    return choices


def chosen_map(run_dir: str, choice: MapChoice, query: ui.Query, top1: int) -> np.ndarray:
    """The chosen map of the query (h×w, its own grid)."""
    art = artifacts.artifacts(run_dir)
    reference = None if choice.explainer == "learned" else art.embeddings[top1]
    m = np.asarray(explanations.explain(run_dir, query.pixels, reference, explainer=choice.explainer).maps[choice.name],
                   dtype=np.float32)
    m = m[0] if m.ndim == 3 and len(m) == 1 else m
    return (m.mean(0) if choice.channel is None else m[choice.channel]) if m.ndim == 3 else m


def on_grid(cell_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A map of any grid averaged (or repeated) onto the hiding grid."""
    m = torch.from_numpy(np.nan_to_num(np.asarray(cell_map, dtype=np.float32)))[None, None]
    return F.adaptive_avg_pool2d(m, grid)[0, 0].numpy()


# ---- the result in a table ------------------------------------------------------------------------------------
def first_true_rank(ranks: np.ndarray, labels: np.ndarray, label: int | None, exclude: int | None) -> int | None:
    same = labels == label if label is not None else np.zeros(len(labels), bool)
    if exclude is not None:
        same[exclude] = False
    return int(ranks[same].min()) if same.any() else None


def rerank_rows(result: Reranking, art: artifacts.Artifacts, k: int, label: int | None) -> list[dict]:
    """The new top-k, then the former top-k items that left it: rank now and before, ranks moved up (+) or
    down (−), the cosine now, its change and the cosine before; one row per item, by rank now."""
    now, before = result.order[:k].tolist(), result.order_before[:k].tolist()
    rows = []
    for item in now + [i for i in before if i not in now]:
        rank, was = int(result.rank[item]), int(result.rank_before[item])
        rows.append({"rank now": rank, "item": int(item), "class": art.class_names[item],
                     "same class": "" if label is None else ("✓" if art.labels[item] == label else "✗"),
                     "rank before": was, "moved": was - rank,
                     "top-k": "stays" if rank <= k and was <= k else "new" if rank <= k else "left",
                     "cosine now": float(result.similarity[item]), "Δ cosine": float(result.delta[item]),
                     "cosine before": float(result.before[item])})
    return rows


def summary(result: Reranking, hidden: np.ndarray, art: artifacts.Artifacts, query: ui.Query, k: int,
            seconds: float) -> str:
    kept = len(set(result.order[:k].tolist()) & set(result.order_before[:k].tolist()))
    top, top_before = int(result.order[0]), int(result.order_before[0])
    parts = [f"**{int(hidden.sum())} of {hidden.size} cells hidden** ({hidden.mean():.0%})",
             f"{kept} of the former top {k} still in the top {k}",
             f"top-1 #{top_before}" + (" stays" if top == top_before else f" → #{top} (was rank {result.rank_before[top]})")]
    first = [first_true_rank(r, art.labels, query.label, query.item) for r in (result.rank_before, result.rank)]
    if first[0] is not None:
        parts.append(f"first true match at rank {first[0]}" + ("" if first[1] == first[0] else f" → {first[1]}"))
    parts.append(f"{len(result.order)} items re-ranked in {seconds * 1000:.0f} ms")
    return " · ".join(parts)


# ---- the panel ------------------------------------------------------------------------------------------------
COLUMNS = {"cosine now": st.column_config.NumberColumn(format="%.3f"),
           "Δ cosine": st.column_config.NumberColumn(format="%+.3f"),
           "cosine before": st.column_config.NumberColumn(format="%.3f"),
           "moved": st.column_config.NumberColumn(format="%+d", help="ranks moved up (+) or down (−) since hiding")}


def map_buttons_ui(run: str, model, page: str, query: ui.Query, owner: str, grid: tuple[int, int], top1: int) -> None:
    """Let a map choose the hidden cells: its top share, or everything else; and Reset."""
    choices = map_choices(run, model)
    c1, c2 = st.columns([3, 2])
    share = c2.slider("Share of the cells", 0.05, 0.95, 0.2, 0.05, key=f"rerank_share_{page}", format="%.2f",
                      help="the map's top share of the cells (by value, on the grid above) is hidden or kept")
    choice = None
    if choices:
        labels = {c.label: c for c in choices}
        choice = labels[c1.selectbox("Map", list(labels), key=f"rerank_map_{page}",
                                     help="learned maps are the query's own; attributions explain its similarity "
                                          "to its top-1 neighbour")]
    b1, b2, b3 = st.columns([5, 3, 3])
    hide = b1.button("Hide what it attends to", key=f"rerank_hide_{page}", disabled=choice is None, width="stretch")
    keep = b2.button("Keep only it", key=f"rerank_keep_{page}", disabled=choice is None, width="stretch")
    if b3.button("Reset", key=f"rerank_reset_{page}", icon=":material/restart_alt:", width="stretch"):
        set_hidden(owner, np.zeros(grid, bool))
    if hide or keep:
        cells = cells_by_map(on_grid(chosen_map(run, choice, query, top1), grid), share, keep=keep)
        set_hidden(owner, cells)


def rerank_ui(run: str, model, art: artifacts.Artifacts, query: ui.Query, k: int, page: str) -> None:
    """The panel (a fragment: a click reruns it alone). `model` None: the run has none, and the panel says so."""
    st.subheader("Hide part of the query: does the retrieval change?")
    if model is None:
        from core.importer import no_model_message
        st.info(f":material/info: {no_model_message(run, 'hiding part of the query')}")
        return
    st.caption("Click a cell of the query to hide it (again to show it), or switch to a box or lasso and drag it over "
               "a region (over hidden cells only: shows them again); or let a map choose. Hidden cells are filled "
               "with the image's mean colour, and the whole test set is ranked again against the changed query.")
    _rerank_fragment(run, model, art, query, k, page)


@st.fragment
def _rerank_fragment(run: str, model, art: artifacts.Artifacts, query: ui.Query, k: int, page: str) -> None:
    grid = hiding_grid(run, query.pixels)
    owner = f"{run}|{query_key(query)}|{grid[0]}x{grid[1]}"
    apply_selection(page, owner, grid)
    engine = reranker(run, query)
    top1 = int(engine.order_before[0])
    left, right = st.columns([2, 3])
    with right:
        map_buttons_ui(run, model, page, query, owner, grid, top1)
    hidden = hidden_cells(owner, grid)
    with left:
        mode = st.radio("On the grid", list(DRAG), horizontal=True, key=f"rerank_drag_{page}",
                        help="a click hides a cell or shows it again; a box or lasso hides a region (over hidden "
                             "cells only: shows them again)")
        shown = logic.to_uint8(engine.hidden_image(hidden).numpy())
        st.plotly_chart(figures.cell_picker(figures.enlarge(shown, 256), hidden, DRAG[mode]), key=picker_key(page),
                        on_select="rerun", selection_mode=("points", "box", "lasso"), width="content",
                        config={"displaylogo": False, "modeBarButtonsToRemove": ["zoom2d", "pan2d", "autoScale2d",
                                                                                 "resetScale2d", "zoomIn2d", "zoomOut2d"]})
    start = time.perf_counter()
    result = engine.rerank(hidden)
    seconds = time.perf_counter() - start
    k = min(k, len(result.order))
    right.markdown(summary(result, hidden, art, query, k, seconds))
    table = rerank_rows(result, art, k, query.label)
    st.dataframe(table, hide_index=True, column_config=COLUMNS, height=35 * (len(table) + 1) + 3)  # every row shown
    ids = result.order[:k].tolist()
    images = ui.images_or_error(run, ids)
    if images is not None:
        captions = [ui.item_caption(art, i, float(result.similarity[i]),
                                    None if query.label is None else bool(art.labels[i] == query.label))
                    + f" (was {result.rank_before[i]})" for i in ids]
        ui.image_wall(images, captions, width=96)
