"""Explore: the test embeddings on a 2-D map. Select points (lasso, box, click or search) to see their
images and metrics; a clicked item's nearest neighbours are listed and ringed on the map; colour, size or
opacity by any per-item field; isolate the selection and re-project it; export it; the selection and colouring
live in the link (Back and Forward restore them); zoom to the selection or the neighbours; an item table with
filters, linked to the map both ways; named selections saved with the run. The parts are in dashboard/explore/: the
map (map_view), where its points lie (projection), what is selected (selection), the item table (table_view),
saved selections (saved_selections); this page holds the controls, the colouring and the link, and composes them."""
from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import artifacts, background, caching, dataset, explanations, figures, items, logic, session, ui, webgl_map
from dashboard.explore.map_view import MAX_POINTS, focus_ui, map_ui, query_ui, read_selection, zoom_ui
from dashboard.explore.projection import view_ui
from dashboard.explore.selection import ISOLATED, SELECTION, keep, neighbours_ui, nothing_selected_ui, selection_ui
from dashboard.explore.table_view import items_ui

NEIGHBOURS = 8
SAME_SIZE, SAME_OPACITY = "same size", "same opacity"
# marker size (px) and opacity over a field's range: the least gets the first, the most the second
SCALES = {"size": (SAME_SIZE, 4.0, 14.0), "opacity": (SAME_OPACITY, 0.15, 1.0)}


# ---- the link ---------------------------------------------------------------------------------------------
def link_ui(run: str, n: int, colour_options: list[str], scale_options: dict[str, list[str]]) -> None:
    """The selection (sel=3,7-12), colouring (colour=), sizing (size=) and opacity (opacity=) from the URL, once
    per session (the link opened) and on Back or Forward (app.py's follow_history hands the URL gone back to):
    the state follows the URL, a link without sel= selecting nothing.
    Values are checked against what this run offers; a bad one is said and ignored, never used."""
    params = st.session_state.pop("_link_params", None) or {}
    problems = []
    for param, options in (("colour", colour_options), *scale_options.items()):
        key = f"explore_{param}"
        if param in params:
            if params[param] in options:
                st.session_state[key] = params[param]
            else:
                problems.append(f"{param}={items.shown_safely(params[param])!r} is not offered for this run "
                                f"(choose from: {', '.join(options)})")
    if "sel" in params:
        try:
            keep(SELECTION, run, items.decode_ids(params["sel"], n))
        except items.LinkError as err:
            problems.append(str(err))
    elif params:            # a URL of this page without a selection: nothing was selected there
        keep(SELECTION, run, [])
    for problem in problems:
        st.warning(f"The link's {problem}; it is ignored.")


def write_link(run: str, colour_by: str, scale_by: dict[str, str], selected: np.ndarray) -> None:
    """This page's part of the URL; app.py merges it into the deep link after the page ran."""
    link = {"colour": colour_by}
    link.update((what, by) for what, by in scale_by.items() if by != SCALES[what][0])
    encoded = items.encode_ids(selected)
    if encoded and len(encoded) <= items.MAX_LINK_CHARS:
        link["sel"] = encoded
    elif encoded:
        st.caption("This selection is too scattered to fit in the link; the link keeps the colouring only.")
    st.session_state["_page_link"] = {"explore": link}
    # app.py writes the link after a full run; a rerun of the map's fragment alone does not reach it
    params = {k: v for k, v in st.query_params.to_dict().items() if k not in ("colour", *SCALES, "sel")}
    if st.session_state.get(session.QUERY) is not None and not st.session_state.get(session.UPLOAD):
        params["query"] = str(st.session_state[session.QUERY])
    params.update(link)
    if params != st.query_params.to_dict():
        st.query_params.from_dict(params)
    st.session_state["_url_written"] = params  # app.py's URL_WRITTEN: this URL is the page's, not the browser's Back


# ---- controls ---------------------------------------------------------------------------------------------
def colour_options_for(run: str, art: artifacts.Artifacts, fields: dict) -> list[str]:
    multi_maps = [name for name, shape in explanations.map_shapes(run).items() if shape[0] > 1]
    options = [*fields, "top-1 neighbour correct", *items.SCORES, items.QUERY_SIMILARITY]
    if len(art.groups) > 1:
        options.append("dominant group")
    return options + [f"dominant {name} channel" for name in multi_maps]


def controls_ui(run: str, colour_options: list[str], scale_options: dict[str, list[str]]) -> tuple[str, str, dict]:
    c1, c2, c3, c4, c5 = st.columns([1.1, 1.5, 1.1, 1.1, 2.0])
    projection = c1.radio("Projection", ui.projections(run), horizontal=True, key="explore_projection")
    colour_by = c2.selectbox("Colour by", colour_options, key="explore_colour",
                             help="any per-item field; R-precision, MAP@R and the similarity to the query on a "
                                  "continuous scale; dominant group: the embedding group contributing most to the "
                                  "similarity with the item's top-1 neighbour; dominant channel: the map channel "
                                  "holding the most mass")
    scale_by = {what: column.selectbox(f"{what.capitalize()} by", scale_options[what], key=f"explore_{what}",
                                       help="a per-item score over its range: least small (faint), most large (opaque)")
                for what, column in (("size", c3), ("opacity", c4))}
    c5.text_input("Find and select", key="explore_find", placeholder="e.g. red diamond, #12, a file name",
                  help="items whose class, attributes, file name or folder contain every word; Enter selects them")
    return projection, colour_by, scale_by


def search_ui(run: str) -> None:
    """A new search text selects its matches (or says there are none), once per text."""
    text = (st.session_state.get("explore_find") or "").strip()
    if text and text != st.session_state.get("explore_find_done"):
        found = artifacts.search(run, text)
        st.session_state["explore_find_done"] = text
        if len(found):
            keep(SELECTION, run, found)
            st.session_state.pop(ISOLATED, None)
        else:
            st.warning(f"No item matches {items.shown_safely(text)!r}; the selection is unchanged.")
    elif not text:
        st.session_state.pop("explore_find_done", None)


# ---- colours and sizes --------------------------------------------------------------------------------------
def field_values(run: str, art: artifacts.Artifacts, name: str) -> np.ndarray:
    """A continuous per-item field."""
    if name == items.QUERY_SIMILARITY:
        return art.embeddings @ art.embeddings[ui.query_item(len(art.labels))]
    with st.spinner("Scoring every item against all others (once per run)…"):
        return getattr(artifacts.retrieval(run), items.SCORES[name])


def colouring(run: str, art: artifacts.Artifacts, colour_by: str, fields: dict):
    """(categories, fixed colours, continuous values): categories or values is None."""
    if colour_by in fields:
        return fields[colour_by], None, None
    if colour_by == "top-1 neighbour correct":
        with st.spinner("Scoring every item against all others (once per run)…"):
            table = artifacts.retrieval(run)
        return np.where(table.top1_correct, "top-1 correct", "top-1 wrong"), figures.CORRECT_COLOURS, None
    if colour_by in items.SCORES or colour_by == items.QUERY_SIMILARITY:
        return None, None, field_values(run, art, colour_by)
    if colour_by == "dominant group":
        dom = logic.dominant_group(art.embeddings, artifacts.retrieval(run).neighbours[:, 0], art.groups)
        return np.asarray([f"group {g}" for g in dom]), None, None
    map_name = colour_by.removeprefix("dominant ").removesuffix(" channel")
    try:
        bar = st.empty()

        def progress(done: int, total: int) -> None:
            bar.progress(done / total, text=f"Computing the {map_name} maps of every test image: {done} of {total} "
                                            f"(once per run; kept in .cache/ for next time)")
        mass = explanations.map_channel_mass(run, progress)[map_name]
        bar.empty()
        return np.asarray([f"{map_name} channel {k}" for k in mass.argmax(1)]), None, None
    except ui.dataset_error_type() as err:
        ui.dataset_error(err, run)
        return fields["class"], None, None


def marker_scale(run: str, art: artifacts.Artifacts, what: str, by: str) -> np.ndarray | None:
    """Marker size (4–14 px) or opacity (0.15–1) per item over the field's range (missing values least)."""
    same, low, high = SCALES[what]
    if by == same:
        return None
    values = field_values(run, art, by).astype(float)
    lo, hi = np.nanmin(values), np.nanmax(values)
    share = np.nan_to_num((values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5), nan=0.0)
    return low + (high - low) * share


# ---- the map and what is selected on it ---------------------------------------------------------------------
def prefetch(run: str) -> None:
    """After paint: the map is on screen, so the first selection need not pay for these."""
    caching.warm_up()
    if artifacts.has_images(run):
        background.thumbnails(run)
    try:  # the data set behind the grid's images: a new run's first selection paid seconds for it
        dataset.splits(run)
    except ui.dataset_error_type():
        pass  # the selection says so when it shows images
    artifacts.retrieval(run)


@st.fragment
def selection_area(run: str, art: artifacts.Artifacts, fields: dict, view: tuple, colour: tuple, scales: dict,
                   colour_by: str, scale_by: dict, look: str, query_drawn: int | None, has_model: bool) -> None:
    """The map and what is selected on it. A fragment: a lasso, a click, previous/next or a button of the
    selection reruns this part only, not the page's controls and sidebar above it."""
    n = len(art.labels)
    if st.session_state.pop("_explore_rerun_app", False):  # Clear emptied the search box, which is outside
        st.rerun(scope="app")
    selected, kind = read_selection(run, n, sampled=len(view[0]) > MAX_POINTS)
    stepped = query_ui(run, n, selected)
    if not np.array_equal(stepped, selected):
        selected, kind = stepped, None
    if query_drawn is not None and st.session_state.get(session.QUERY) != query_drawn:
        st.rerun(scope="app")  # coloured or sized by the similarity to the query, which changed
    focus = None
    if len(selected) == 1:
        item = int(selected[0])
        focus = (item, *artifacts.item_neighbours(run, item, NEIGHBOURS))
    drawn = map_ui(run, art, view[:2], view[2], colour, scales, colour_by, look, selected, kind)
    zoom_ui(run, view, selected, focus)
    focus_ui(run, art, view[:2], focus)
    write_link(run, colour_by, scale_by, selected)
    if focus is not None:
        neighbours_ui(run, art, *focus)
    if len(selected):
        selection_ui(run, art, selected, fields, view)
    else:
        nothing_selected_ui(run)
    items_ui(run, art, selected, has_model)
    if not len(selected) and drawn:  # not before the map is drawn: it slowed the first paint
        prefetch(run)                # (benchmarks/notes/dashboard_latency.md)


def page() -> None:
    # the map's plotly bundle starts loading while the server computes the map; on every run: an element fewer
    # would move the map, which would then be drawn anew
    st.html(webgl_map.PRELOAD_MAP_CODE, unsafe_allow_javascript=True)
    st.title("Explore the embedding")
    run = ui.require_run()
    model, _, art = ui.load_or_stop(run)
    n = len(art.labels)
    fields = artifacts.item_fields(run)
    colour_options = colour_options_for(run, art, fields)
    scale_options = {what: [same, *items.SCORES, items.QUERY_SIMILARITY] for what, (same, _, _) in SCALES.items()}
    link_ui(run, n, colour_options, scale_options)
    projection, colour_by, scale_by = controls_ui(run, colour_options, scale_options)
    search_ui(run)
    view = view_ui(run, art, projection)
    colour = colouring(run, art, colour_by, fields)
    scales = {what: marker_scale(run, art, what, by) for what, by in scale_by.items()}
    query_drawn = ui.query_item(n) if items.QUERY_SIMILARITY in (colour_by, *scale_by.values()) else None
    # what the figure shows besides the selection (figure_selection): a change is a new chart
    look = (f"{background.thumbnail_url(run)}|{view[2]}|{len(view[0])}:{hash(view[0].tobytes())}|{colour_by}|{scale_by}"
            f"|{query_drawn}")     # the thumbnails' folder names the run, its artifacts' version and data folder
    selection_area(run, art, fields, view, colour, scales, colour_by, scale_by, look, query_drawn,
                   has_model=model is not None)


page()
