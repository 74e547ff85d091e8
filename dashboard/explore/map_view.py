"""The Explore map itself: the selection read from the chart (lasso, box, click, double-click), the figure drawn
with its revision, the clicked item's star and rings, and the previous/next query buttons.

The map's browser side (click -> selection, double-click -> Clear, hover thumbnails, j/k) is
dashboard/map_bridge.js; its renderer is webgl_map.item_map."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import streamlit as st

from core.projection import MAP_POINTS
from core.run_dir import ARTIFACTS
from dashboard import artifacts, background, figures, logic, session, ui, webgl_map
from dashboard.explore.selection import SELECTION, keep, kept

MAX_POINTS = MAP_POINTS  # above this the map is thinned where points overlap; metrics still use every point
SEEN = "explore_map_seen"  # the chart value seen after the last draw
DRAWN = "explore_drawn"  # (item ids, coordinates) of the map last drawn: a lasso's polygon is in those coordinates
FIGURE = "explore_figure"  # what the map's figure was last built with: see figure_selection
BUILT = "explore_built"    # ((look, revision), the figure): the last figure, reused while they stay the same
ZOOM = "explore_zoom"      # the axis ranges the zoom buttons set: {"run", "view", "x", "y", "rev"}


def event_key(event) -> str:
    """The chart value as text, to tell a new selection, click or clear from the value seen last run."""
    selection = event.get("selection") if hasattr(event, "get") else None
    return json.dumps(selection, sort_keys=True, default=str)


def query_ui(run: str, n: int, selected: np.ndarray) -> np.ndarray:
    """Previous/next query (also j/k or ←/→): the query becomes the one selected item, neighbours shown.
    Returns the selection (that item after a step)."""
    q = ui.query_item(n)
    b1, b2, b3 = st.columns([1, 1, 6])
    step = (-1 if b1.button("‹ Previous", key="explore_prev") else 0) + (1 if b2.button("Next ›", key="explore_next") else 0)
    if step:
        q = (q + step) % n
        st.session_state[session.QUERY] = q
        st.session_state[session.UPLOAD] = None
        keep(SELECTION, run, [q])
        selected = np.asarray([q])
    b3.caption(f"Query #{q} (keys j/k or →/←; a click on the map makes the clicked item the query)")
    return selected


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
            st.session_state[session.QUERY] = int(selected[0])
            st.session_state[session.UPLOAD] = None
    selected = np.zeros(0, int) if selected is None else selected
    keep(SELECTION, run, selected)
    return np.asarray(st.session_state[SELECTION]["ids"], dtype=int), kind


def figure_selection(look: str, selected: np.ndarray, kind: str | None) -> tuple[np.ndarray, int]:
    """(the selection to draw into the map's figure, the figure's revision).

    The map's component (webgl_map.item_map) keeps a plot whose figure is unchanged, and redraws the WebGL plot for
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


def hover_thumbnails(run: str) -> str | None:
    """The URL folder of the run's hover thumbnails; None for a run without images (a hover then shows no grey
    square, and no job writes grey sheets)."""
    return background.thumbnail_url(run) if artifacts.has_images(run) else None


def thumbnails_failed_ui(run: str) -> None:
    """Say so when the job writing the hover thumbnails failed (a hover then shows grey squares), with the end of
    its log: the error names what to fix (e.g. a moved data folder, an unreadable image)."""
    job = background.thumbnail_job(run)
    if job is None or job.status != "failed":
        return
    st.warning("**Hover thumbnails could not be made** for this run, so hovering a point shows a grey square. "
               "Its images may have moved or be unreadable; the rest of the page does not need them.",
               icon=":material/hide_image:")
    with st.expander("What the thumbnail job said"):
        st.code(job.log_tail(2000) or "(no log)", language=None)


@st.cache_resource(show_spinner=False, max_entries=32)
def _drawn_points(run: str, method: str, key: int, _coords: np.ndarray) -> np.ndarray:
    from core.projection import drawn_points as saved_or_thinned, thinned_sample
    shown = (saved_or_thinned(Path(run) / ARTIFACTS, method, _coords) if method else
             thinned_sample(_coords, MAX_POINTS))
    shown.setflags(write=False)
    return shown


def drawn_points(run: str, view: tuple, projection: str, n: int) -> np.ndarray:
    """Which of the map's points it draws (core.projection.thinned_sample), once per view: every item's map reads
    the sample saved with its coordinates (core.projection.drawn_points); an isolated view thins its own points.
    A click or a lasso reruns the map without thinning a million points again."""
    view_ids, coords = view
    method = ui.PROJECTION_FILES[projection] if len(view_ids) == n else None
    key = hash(np.ascontiguousarray(coords).tobytes())
    return _drawn_points(run, method, key, coords)


def map_ui(run: str, art: artifacts.Artifacts, view: tuple, shown_projection: str, colour: tuple,
           scales: dict, colour_by: str, look: str, selected: np.ndarray, kind: str | None) -> bool:
    """Draw the map; True once the browser has drawn it (webgl_map.item_map)."""
    view_ids, coords = view     # view_ids: sorted item ids
    zoom = current_zoom(run, view_ids, shown_projection)
    look = f"{look}|zoom {zoom['rev'] if zoom else 0}"
    n, names = len(art.labels), art.class_names
    shown = drawn_points(run, view, shown_projection, len(art.labels))   # fewer points: a faster paint, lasso, redraw
    ids = view_ids[shown]
    categories, colours, values = colour
    drawn, revision = figure_selection(look, selected, kind)
    built = st.session_state.get(BUILT)
    if built is not None and built[0] == (look, revision):
        fig = built[1]      # the same figure as last run: not built again (a tenth of a second on a big map)
    else:
        thumbs = hover_thumbnails(run)
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
        if zoom:   # a new uirevision: plotly takes these ranges over the user's own zoom (and back on a reset)
            fig.update_layout(xaxis_range=zoom["x"], yaxis_range=zoom["y"], uirevision=f"zoom {zoom['rev']}")
        st.session_state[BUILT] = ((look, revision), fig)
    # shown while the browser loads plotly.js (a session's first seconds on the page)
    webgl_map.map_still(coords[shown], np.full(len(shown), "") if categories is None else categories[ids], colours)
    event = webgl_map.item_map(fig, key="explore_map")
    st.session_state[SEEN] = event_key(event)
    st.session_state[DRAWN] = (view_ids, coords)
    webgl_map.map_bridge()
    thumbnails_failed_ui(run)
    if len(shown) < len(view_ids):
        st.caption(f"The map draws {len(shown)} of {len(view_ids)} points, thinned where they overlap (sparse "
                   f"regions keep every point); box and lasso select over all of them, and every metric uses the "
                   f"full set.")
    return bool(event.get("drawn"))


def focus_ui(run: str, art: artifacts.Artifacts, view: tuple, focus: tuple | None) -> None:
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
                   "thumbs": hover_thumbnails(run), "ids": marked[on_map].tolist(),
                   "x": coords[at[on_map], 0].tolist(), "y": coords[at[on_map], 1].tolist(),
                   "text": [t for t, keep in zip(texts, on_map) if keep]}
    st.html(f'<div class="metriclens-focus" data-focus="{html.escape(json.dumps(payload))}"></div>')


# ---- zoom -------------------------------------------------------------------------------------------------
def zoom_ranges(points: np.ndarray, everything: np.ndarray) -> dict[str, list[float]]:
    """Axis ranges around `points` with a margin of a tenth on each side; at least a fiftieth of the whole map wide,
    so one point, or points on a line, still show their surroundings."""
    lo, hi = points.min(0), points.max(0)
    half = np.maximum((hi - lo) * 0.6, np.ptp(everything, 0) * 0.01)
    centre = (lo + hi) / 2
    return {"x": [float(centre[0] - half[0]), float(centre[0] + half[0])],
            "y": [float(centre[1] - half[1]), float(centre[1] + half[1])]}


def current_zoom(run: str, view_ids: np.ndarray, projection: str) -> dict | None:
    """The zoom the buttons set, while the map shows the same run and view it was set on."""
    zoom = st.session_state.get(ZOOM)
    return zoom if zoom and (zoom["run"], zoom["view"]) == (run, f"{projection}:{len(view_ids)}") else None


def zoom_ui(run: str, view: tuple, selected: np.ndarray, focus: tuple | None) -> None:
    """Zoom the map to the selection or to the clicked item and its neighbours, or back to every point (buttons
    with callbacks: the next run's map takes the ranges)."""
    view_ids, coords, projection = view

    def zoom_to(ids) -> None:
        at = np.minimum(np.searchsorted(view_ids, ids), len(view_ids) - 1)
        on_map = at[view_ids[at] == ids]
        if len(on_map):
            rev = (st.session_state.get(ZOOM) or {}).get("rev", 0) + 1
            st.session_state[ZOOM] = {"run": run, "view": f"{projection}:{len(view_ids)}", "rev": rev,
                                      **zoom_ranges(coords[on_map], coords)}

    z1, z2, z3, _ = st.columns([1.3, 1.5, 0.9, 2.5])
    z1.button("Zoom to the selection", key="explore_zoom_selection", disabled=not len(selected), on_click=zoom_to,
              args=(np.asarray(selected),), icon=":material/zoom_in:")
    z2.button("Zoom to the neighbours", key="explore_zoom_neighbours", disabled=focus is None, on_click=zoom_to,
              args=(np.sort(np.asarray([focus[0], *focus[1]])) if focus else None,), icon=":material/zoom_in:",
              help="the clicked item and its nearest neighbours")
    z3.button("Reset zoom", key="explore_zoom_reset", disabled=current_zoom(run, view_ids, projection) is None,
              on_click=lambda: st.session_state.pop(ZOOM, None), icon=":material/zoom_out_map:")
