"""Explore: the test embeddings on a 2-D map. Select points (lasso, box, click or search) to see their
images and metrics; a clicked item's nearest neighbours are listed and ringed on the map; colour, size or
opacity by any per-item field; isolate the selection and re-project it; export it; the selection and colouring
live in the link."""
from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

import numpy as np
import streamlit as st

from core.run_dir import ARTIFACTS, coords_file
from dashboard import figures, items, logic, state, ui

MAX_POINTS = 10_000      # above this the map is thinned where points overlap; metrics still use every point
GRID_LIMIT = 24         # a selection's images shown: three rows (each image is made, sent and decoded)
NEIGHBOURS = 8
SELECTION, SEEN, ISOLATED = "explore_selection", "explore_map_seen", "explore_isolated"  # kept ids; chart value seen
DRAWN = "explore_drawn"  # (item ids, coordinates) of the map last drawn: a lasso's polygon is in those coordinates
FIGURE = "explore_figure"  # what the map's figure was last built with: see figure_selection
BUILT = "explore_built"    # ((look, revision), the figure): the last figure, reused while they stay the same
SAME_SIZE, SAME_OPACITY = "same size", "same opacity"
# marker size (px) and opacity over a field's range: the least gets the first, the most the second
SCALES = {"size": (SAME_SIZE, 4.0, 14.0), "opacity": (SAME_OPACITY, 0.15, 1.0)}
# the map's browser side (click -> selection, double-click -> Clear, hover thumbnails, j/k): see the file


def event_key(event) -> str:
    """The chart value as text, to tell a new selection, click or clear from the value seen last run."""
    selection = event.get("selection") if hasattr(event, "get") else None
    return json.dumps(selection, sort_keys=True, default=str)


def kept(key: str, run: str) -> np.ndarray | None:
    """Ids kept under a session key for this run (a selection, an isolated set); None when there are none."""
    value = st.session_state.get(key)
    return np.asarray(value["ids"], dtype=int) if value and value.get("run") == run else None


def keep(key: str, run: str, ids) -> None:
    st.session_state[key] = {"run": run, "ids": np.unique(np.asarray(ids, dtype=int)).tolist()}  # sorted


def umap_progress_ui(job: dict, what: str) -> None:
    """UMAP's own progress (the layout epochs in its log) or, before it starts them, the time spent."""
    elapsed = time.time() - job["started"]
    share = state.umap_progress(job)
    text = (f"Computing the UMAP of {what} in the background: layout {share:.0%} ({elapsed:.0f} s). "
            if share is not None else
            f"Computing the UMAP of {what} in the background ({elapsed:.0f} s; a fresh process also compiles "
            f"numba code, ~40 s). ")
    st.progress(min(share if share is not None else elapsed / 60.0, 0.95),
                text=text + "Showing PCA meanwhile; the map switches by itself.")


@st.fragment(run_every=1.0)
def wait_for_umap(run_dir: str) -> None:
    """Polls the background UMAP process; the full page reruns once the coordinates are on disk."""
    job = state.start_umap(run_dir)
    if (Path(run_dir) / ARTIFACTS / coords_file("umap")).exists():
        st.rerun(scope="app")
    if job["error"]:
        st.error(f"UMAP failed; the PCA map below still works. Run `python -m core umap {run_dir}` to see why. "
                 f"Last output: {job['error']}")
        return
    umap_progress_ui(job, "every item")


@st.fragment(run_every=1.0)
def wait_for_subset_umap(run_dir: str, ids: tuple[int, ...]) -> None:
    job = state.start_subset_umap(run_dir, np.asarray(ids))
    if Path(job["out"]).exists():
        st.rerun(scope="app")
    if job["error"]:
        st.error(f"UMAP of the isolated items failed; their PCA map still works. Last output: {job['error']}")
        return
    umap_progress_ui(job, f"the {len(ids)} isolated items")


# ---- the link ---------------------------------------------------------------------------------------------
def link_ui(run: str, n: int, colour_options: list[str], scale_options: dict[str, list[str]]) -> None:
    """Once per session: the selection (sel=3,7-12), colouring (colour=), sizing (size=) and opacity (opacity=)
    from the link.
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
    if st.session_state.get(state.QUERY) is not None and not st.session_state.get(state.UPLOAD):
        params["query"] = str(st.session_state[state.QUERY])
    params.update(link)
    if params != st.query_params.to_dict():
        st.query_params.from_dict(params)
    st.session_state["_url_written"] = params  # app.py's URL_WRITTEN: this URL is the page's, not the browser's Back


# ---- controls ---------------------------------------------------------------------------------------------
def colour_options_for(run: str, art: state.Artifacts, fields: dict) -> list[str]:
    multi_maps = [name for name, shape in state.map_shapes(run).items() if shape[0] > 1]
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
        found = items.search(state.search_text(run), text)
        st.session_state["explore_find_done"] = text
        if len(found):
            keep(SELECTION, run, found)
            st.session_state.pop(ISOLATED, None)
        else:
            st.warning(f"No item matches {items.shown_safely(text)!r}; the selection is unchanged.")
    elif not text:
        st.session_state.pop("explore_find_done", None)


def query_ui(run: str, n: int, selected: np.ndarray) -> np.ndarray:
    """Previous/next query (also j/k or ←/→): the query becomes the one selected item, neighbours shown.
    Returns the selection (that item after a step)."""
    q = ui.query_item(n)
    b1, b2, b3 = st.columns([1, 1, 6])
    step = (-1 if b1.button("‹ Previous", key="explore_prev") else 0) + (1 if b2.button("Next ›", key="explore_next") else 0)
    if step:
        q = (q + step) % n
        st.session_state[state.QUERY] = q
        st.session_state[state.UPLOAD] = None
        keep(SELECTION, run, [q])
        selected = np.asarray([q])
    b3.caption(f"Query #{q} (keys j/k or →/←; a click on the map makes the clicked item the query)")
    return selected


# ---- colours, sizes, the view -------------------------------------------------------------------------------
def field_values(run: str, art: state.Artifacts, name: str) -> np.ndarray:
    """A continuous per-item field."""
    if name == items.QUERY_SIMILARITY:
        return art.embeddings @ art.embeddings[ui.query_item(len(art.labels))]
    with st.spinner("Scoring every item against all others (once per run)…"):
        return getattr(state.retrieval(run), items.SCORES[name])


def colouring(run: str, art: state.Artifacts, colour_by: str, fields: dict):
    """(categories, fixed colours, continuous values): categories or values is None."""
    if colour_by in fields:
        return fields[colour_by], None, None
    if colour_by == "top-1 neighbour correct":
        with st.spinner("Scoring every item against all others (once per run)…"):
            table = state.retrieval(run)
        return np.where(table.top1_correct, "top-1 correct", "top-1 wrong"), figures.CORRECT_COLOURS, None
    if colour_by in items.SCORES or colour_by == items.QUERY_SIMILARITY:
        return None, None, field_values(run, art, colour_by)
    if colour_by == "dominant group":
        dom = logic.dominant_group(art.embeddings, state.retrieval(run).neighbours[:, 0], art.groups)
        return np.asarray([f"group {g}" for g in dom]), None, None
    map_name = colour_by.removeprefix("dominant ").removesuffix(" channel")
    try:
        bar = st.empty()

        def progress(done: int, total: int) -> None:
            bar.progress(done / total, text=f"Computing the {map_name} maps of every test image: {done} of {total} "
                                            f"(once per run; kept in .cache/ for next time)")
        mass = state.map_channel_mass(run, progress)[map_name]
        bar.empty()
        return np.asarray([f"{map_name} channel {k}" for k in mass.argmax(1)]), None, None
    except ui.dataset_error_type() as err:
        ui.dataset_error(err, run)
        return fields["class"], None, None


def marker_scale(run: str, art: state.Artifacts, what: str, by: str) -> np.ndarray | None:
    """Marker size (4–14 px) or opacity (0.15–1) per item over the field's range (missing values least)."""
    same, low, high = SCALES[what]
    if by == same:
        return None
    values = field_values(run, art, by).astype(float)
    lo, hi = np.nanmin(values), np.nanmax(values)
    share = np.nan_to_num((values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5), nan=0.0)
    return low + (high - low) * share


def view_ui(run: str, art: state.Artifacts, projection: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(item ids on the map, their 2-D coordinates, projection shown): every item, or the isolated ones
    re-projected (PCA at once, UMAP in the background)."""
    from core.projection import pca_2d

    isolated = kept(ISOLATED, run)
    if isolated is not None and len(isolated) >= 3:
        if projection == "UMAP":
            job = state.start_subset_umap(run, isolated)
            if Path(job["out"]).exists():
                return isolated, np.load(job["out"]), "UMAP"
            wait_for_subset_umap(run, tuple(isolated.tolist()))
        return isolated, pca_2d(art.embeddings[isolated]), "PCA"
    all_ids = np.arange(len(art.labels))
    coords = state.coords(run, ui.PROJECTION_FILES[projection])
    if coords is not None:
        return all_ids, coords, projection
    if os.environ.get("METRICLENS_AUTO_UMAP", "1") != "0" or st.session_state.get(f"umap_requested_{run}"):
        wait_for_umap(run)
    elif st.button("Compute UMAP", help="in the background; cached next to the run in artifacts/coords_umap.npy"):
        st.session_state[f"umap_requested_{run}"] = True
        st.rerun()
    return all_ids, state.coords(run, "pca"), "PCA"


def read_selection(run: str, n: int, sampled: bool) -> tuple[np.ndarray, str | None]:
    """(the kept selection, replaced by a new lasso, box, click or double-click on the chart; the kind of that
    chart action: "area" (lasso or box), "points" (a click), "clear" (a double-click), None for no action).

    The chart's value is read before the chart is drawn: it belongs to the figure of the previous run (the
    one the user lassoed, clicked or double-clicked). A changed figure is a new chart whose value starts
    empty, so only a value that differs from the one seen after the last draw is a user action. No value at
    all (the page's first draw, or a return from another page) is none either: the kept selection stays."""
    selected, kind = kept(SELECTION, run), None
    before = st.session_state.get("explore_map")
    if before is not None and event_key(before) != st.session_state.get(SEEN):
        view_ids, drawn_on = st.session_state.get(DRAWN) or (None, None)
        picked = logic.selected_ids(before, drawn_on, use_geometry=sampled and drawn_on is not None, ids=view_ids)
        selection = before.get("selection") or {}
        kind = ("clear" if (picked < 0).any() else
                "area" if selection.get("lasso") or selection.get("box") else "points")
        selected = np.zeros(0, int) if kind == "clear" else picked[picked < n]  # -1: double-click clear
        if len(selected) == 1:  # a click: the clicked item becomes the query (neighbours, j/k, other pages)
            st.session_state[state.QUERY] = int(selected[0])
            st.session_state[state.UPLOAD] = None
    selected = np.zeros(0, int) if selected is None else selected
    keep(SELECTION, run, selected)
    return np.asarray(st.session_state[SELECTION]["ids"], dtype=int), kind


def figure_selection(look: str, selected: np.ndarray, kind: str | None) -> tuple[np.ndarray, int]:
    """(the selection to draw into the map's figure, the figure's revision).

    The map's component (ui.item_map) keeps a plot whose figure is unchanged, and redraws the WebGL plot for
    any other figure: on a big map most of a lasso's or a click's latency. So a selection made on the chart itself
    leaves the figure as it was: a lasso or box shows its selection by itself, and a clicked item on a map
    showing no selection is shown by the star and rings above the plot (focus_ui). Anything else that
    changes the selection or the look (search, link, Clear, previous/next, recolouring) draws the selection
    into a new figure with a new revision: never the figure of an earlier chart, whose selection the
    browser would bring back. So does a selection that differs from the chart's value (its last lasso or
    click): the same gesture again would leave that value unchanged, and so unseen."""
    fig = st.session_state.get(FIGURE) or {"rev": 0, "shown": [], "value": []}
    shown = np.asarray(fig["shown"], dtype=int)         # what the chart shows as selected now
    value = np.asarray(fig["value"], dtype=int)         # the selection in the chart's value
    if kind is not None:
        value = np.asarray([-1]) if kind == "clear" else selected
    if kind == "area":
        shown = selected
    elif kind == "clear":                                # plotly cleared its own selection on the double-click
        shown = np.zeros(0, int)
    in_step = ((np.array_equal(shown, selected) or (not len(shown) and len(selected) == 1))
               and (not len(value) or np.array_equal(value, selected)))
    if fig.get("look") != look or not in_step:           # a new chart, whose value starts empty
        fig = {"look": look, "sel": selected.tolist(), "shown": selected.tolist(), "value": [], "rev": fig["rev"] + 1}
    else:
        fig = fig | {"shown": shown.tolist(), "value": value.tolist()}
    st.session_state[FIGURE] = fig
    return np.asarray(fig["sel"], dtype=int), fig["rev"]


def map_ui(run: str, art: state.Artifacts, view: tuple, shown_projection: str, colour: tuple,
           scales: dict, colour_by: str, look: str, selected: np.ndarray, kind: str | None) -> bool:
    """Draw the map; True once the browser has drawn it (ui.item_map)."""
    view_ids, coords = view     # view_ids: sorted item ids
    n, names = len(art.labels), art.class_names
    shown = logic.thinned_sample(coords, MAX_POINTS)   # fewer points: a faster first paint, lasso and redraw
    ids = view_ids[shown]
    categories, colours, values = colour
    drawn, revision = figure_selection(look, selected, kind)
    built = st.session_state.get(BUILT)
    if built is not None and built[0] == (look, revision):
        fig = built[1]      # the same figure as last run: not built again (a tenth of a second on a big map)
    else:
        thumbs = state.thumbnail_url(run)
        hover = [f"#{i} {names[i]}" for i in ids.tolist()]
        if values is not None:
            hover = [f"{h} · {colour_by} {v:.3f}" for h, v in zip(hover, values[ids].tolist())]
        where = f"{len(view_ids)} isolated" if len(view_ids) < n else str(n)
        fig = figures.embedding_map(
            coords[shown], ids, None if categories is None else categories[ids], hover, colours, selected=drawn,
            values=None if values is None else values[ids], value_name=colour_by,
            sizes=None if scales["size"] is None else scales["size"][ids],
            opacities=None if scales["opacity"] is None else scales["opacity"][ids], thumbs=thumbs,
            title=f"{shown_projection} of {where} test embeddings" + (f" ({len(shown)} shown)" if len(shown) < len(view_ids) else ""))
        fig.update_layout(datarevision=revision)  # a new revision is a new chart (figure_selection)
        st.session_state[BUILT] = ((look, revision), fig)
    # shown while the browser loads plotly.js (a session's first seconds on the page)
    ui.map_still(coords[shown], np.full(len(shown), "") if categories is None else categories[ids], colours)
    event = ui.item_map(fig, key="explore_map")
    st.session_state[SEEN] = event_key(event)
    st.session_state[DRAWN] = (view_ids, coords)
    ui.map_bridge()
    if len(shown) < len(view_ids):
        st.caption(f"The map draws {len(shown)} of {len(view_ids)} points, thinned where they overlap (sparse "
                   f"regions keep every point); box and lasso select over all of them, and every metric uses the "
                   f"full set.")
    return bool(event.get("drawn"))


def focus_ui(run: str, art: state.Artifacts, view: tuple, focus: tuple | None) -> None:
    """The clicked item (a star) and its nearest neighbours (rings) for the map's browser side
    (map_bridge.js), which draws them above the plot: the map's figure stays the same (figure_selection), so
    a click costs no new WebGL plot. Always one element, so the chart keeps its place on the page."""
    payload = {}
    if focus is not None:
        view_ids, coords = view
        item, neighbour_ids, sims = focus
        names, marked = art.class_names, np.asarray([item, *neighbour_ids])
        at = np.minimum(np.searchsorted(view_ids, marked), len(view_ids) - 1)
        on_map = view_ids[at] == marked     # an isolated view may leave some out
        texts = [f"#{item} {names[item]}"] + [f"#{i} {names[i]} · {s:.3f}" for i, s in zip(neighbour_ids, sims)]
        payload = {"item": item, "name": f"{int(on_map[1:].sum())} nearest of #{item}", "colour": figures.HIGHLIGHT,
                   "thumbs": state.thumbnail_url(run), "ids": marked[on_map].tolist(),
                   "x": coords[at[on_map], 0].tolist(), "y": coords[at[on_map], 1].tolist(),
                   "text": [t for t, keep in zip(texts, on_map) if keep]}
    st.html(f'<div class="metriclens-focus" data-focus="{html.escape(json.dumps(payload))}"></div>')


# ---- what is selected ----------------------------------------------------------------------------------------
def neighbours_ui(run: str, art: state.Artifacts, item: int, neighbour_ids, sims) -> None:
    st.subheader(f"Nearest neighbours of #{item} {art.items[item].get('class_name', '')}")
    images = ui.images_or_error(run, [item, *neighbour_ids])
    if images is not None:
        caps = [f"query #{item}"] + [ui.item_caption(art, int(i), float(s), bool(art.labels[i] == art.labels[item]))
                                     for i, s in zip(neighbour_ids, sims)]
        ui.image_wall(images, caps, width=100)  # the query and its 8 in one row
        st.caption("Cosine similarity in the embedding (exact, over every item); ✓/✗: same class as the query. "
                   "The neighbours are ringed on the map; click one to move to it.")


def isolate_ui(run: str, selected: np.ndarray) -> None:
    isolated = kept(ISOLATED, run)
    if isolated is not None:
        if st.button(f"Show every item (the map shows {len(isolated)} isolated)", key="explore_unisolate"):
            st.session_state.pop(ISOLATED, None)
            st.rerun()
    elif len(selected) >= 3 and st.button("Isolate and re-project", key="explore_isolate",
                                          help="the map shows only the selection, projected anew: PCA at once, "
                                               "UMAP in the background"):
        keep(ISOLATED, run, selected)
        st.rerun()


def export_ui(run: str, art: state.Artifacts, selected: np.ndarray, fields: dict) -> None:
    # a callable: the CSV is made when the button is pressed, not on every rerun (tenths of a second for 10k items)
    st.download_button(f"Export {len(selected)} as CSV",
                       lambda: items.selection_csv(selected, art.items, art.labels, fields), on_click="ignore",
                       file_name=f"{Path(run).name}_selection.csv", mime="text/csv", key="explore_export",
                       help="item, label, class, split, index in the split, path and every field")


def selection_ui(run: str, art: state.Artifacts, selected: np.ndarray, fields: dict) -> None:
    n, names = len(art.labels), fields["class"]
    table = state.retrieval(run)
    metrics = logic.selection_metrics(table, selected)
    s1, s2, s3, s4 = st.columns([2.6, 1.2, 1.6, 1.2])
    s1.subheader(f"Selection: {len(selected)} of {n} items")
    with s2:
        export_ui(run, art, selected, fields)
    with s3:
        isolate_ui(run, selected)
    def clear():  # a callback: it runs before the next script run, so it may empty the search box too
        keep(SELECTION, run, [])
        if st.session_state.get("explore_find"):  # the box is outside the fragment: the whole page reruns
            st.session_state["explore_find"] = ""
            st.session_state["_explore_rerun_app"] = True
    s4.button("Clear selection", key="explore_clear", on_click=clear)
    m1, m2, m3 = st.columns([1, 1, 2])
    with m1:
        ui.metric_pair("R@1", *metrics["R@1"])
    with m2:
        ui.metric_pair("MAP@R", *metrics["MAP@R"])
    classes, counts = np.unique(names[selected], return_counts=True)
    order = np.argsort(-counts)[:5]
    m3.markdown("**Classes in the selection:** " + ", ".join(f"{classes[i]} ({counts[i]})" for i in order)
                + (" …" if len(classes) > 5 else ""))

    grid = logic.interleave_classes(selected, art.labels)[:GRID_LIMIT]
    images = ui.images_or_error(run, grid)
    if images is not None:
        caps = [ui.item_caption(art, int(i), match=bool(table.top1_correct[i])) for i in grid]
        ui.image_wall(images, caps)
        if len(selected) > GRID_LIMIT:
            st.caption(f"Showing {GRID_LIMIT} of {len(selected)} selected images, taking each class in turn "
                       f"(✓/✗: top-1 neighbour correct).")
    o1, o2, o3 = st.columns([2, 1, 1])
    target = o1.selectbox("Open an item of the selection", grid.tolist(), key="explore_open",
                          format_func=lambda i: ui.item_caption(art, int(i)))
    if o2.button("Neighbours →", key="explore_to_retrieval"):
        ui.go_to("retrieval", int(target))
    if o3.button("Attention →", key="explore_to_attention"):
        ui.go_to("attention", int(target))


def nothing_selected_ui(run: str) -> None:
    st.info("Lasso or box-select points on the map, or click one, to see their images and the retrieval metrics of "
            "the selection against the rest; or find items by name above. The selection stays when you recolour "
            "or switch the projection; double-click the map to clear it.")
    test = state.summary(run).get("metrics") or {}
    if test:
        m1, m2 = st.columns(2)
        m1.metric("R@1 (test set, metrics.json)", f"{test.get('recall@1', float('nan')):.3f}")
        m2.metric("MAP@R (test set, metrics.json)", f"{test.get('map_at_r', float('nan')):.3f}")


def prefetch(run: str) -> None:
    """After paint: the map is on screen, so the first selection need not pay for these."""
    state.warm_up()
    state.thumbnails(run)
    state.neighbour_index(run)
    try:  # the data set behind the grid's images: a new run's first selection paid seconds for it
        state.splits(run)
    except ui.dataset_error_type():
        pass  # the selection says so when it shows images
    state.retrieval(run)


@st.fragment
def selection_area(run: str, art: state.Artifacts, fields: dict, view: tuple, colour: tuple, scales: dict,
                   colour_by: str, scale_by: dict, look: str, query_drawn: int | None) -> None:
    """The map and what is selected on it. A fragment: a lasso, a click, previous/next or a button of the
    selection reruns this part only, not the page's controls and sidebar above it."""
    n = len(art.labels)
    if st.session_state.pop("_explore_rerun_app", False):  # Clear emptied the search box, which is outside
        st.rerun(scope="app")
    selected, kind = read_selection(run, n, sampled=len(view[0]) > MAX_POINTS)
    stepped = query_ui(run, n, selected)
    if not np.array_equal(stepped, selected):
        selected, kind = stepped, None
    if query_drawn is not None and st.session_state.get(state.QUERY) != query_drawn:
        st.rerun(scope="app")  # coloured or sized by the similarity to the query, which changed
    focus = None
    if len(selected) == 1:
        item = int(selected[0])
        focus = (item, *items.neighbours(state.neighbour_index(run), art.embeddings, item, NEIGHBOURS))
    drawn = map_ui(run, art, view[:2], view[2], colour, scales, colour_by, look, selected, kind)
    focus_ui(run, art, view[:2], focus)
    write_link(run, colour_by, scale_by, selected)
    if focus is not None:
        neighbours_ui(run, art, *focus)
    if not len(selected):
        nothing_selected_ui(run)
        if drawn:  # not before: on 2 cores it slowed the first paint by 0.3-0.6 s (1.3 s on a new server)
            prefetch(run)
        return
    selection_ui(run, art, selected, fields)


def page() -> None:
    # the map's plotly bundle starts loading while the server computes the map; on every run: an element fewer
    # would move the map, which would then be drawn anew
    st.html(ui.PRELOAD_MAP_CODE, unsafe_allow_javascript=True)
    st.title("Explore the embedding")
    run = ui.require_run()
    _, _, art = ui.load_or_stop(run)
    n = len(art.labels)
    fields = state.item_fields(run)
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
    look = (f"{state.thumbnail_url(run)}|{view[2]}|{len(view[0])}:{hash(view[0].tobytes())}|{colour_by}|{scale_by}"
            f"|{query_drawn}")     # the thumbnails' folder names the run, its artifacts' version and data folder
    selection_area(run, art, fields, view, colour, scales, colour_by, scale_by, look, query_drawn)


if os.environ.get("PROFILE_PAGE"):
    import cProfile, pstats
    _p = cProfile.Profile(); _p.enable()
    try:
        page()
    finally:
        _p.disable(); pstats.Stats(_p).sort_stats("cumulative").print_stats(30)
else:
    page()
