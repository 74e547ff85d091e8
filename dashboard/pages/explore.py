"""Explore: the test embeddings on a 2-D map; select points to see their images and metrics."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import streamlit as st

from dashboard import figures, logic, state, ui

MAX_POINTS = 20_000      # above this the map shows a stratified sample; metrics still use every point
GRID_LIMIT = 40
SELECTION, SEEN = "explore_selection", "explore_map_seen"   # kept ids; the chart value last seen
# Streamlit's chart forces clickmode='event' while the drag mode is lasso or box, so a click on a point selects
# nothing and its plotly_click reaches no handler. This passes the clicked point on as a one-point selection,
# and a double-click on to the Clear button (a kept selection is not the chart's own value, which Streamlit's
# double-click would reset).
CLICK_BRIDGE = """<script>
(function () {
  const win = window.parent && window.parent.document ? window.parent : window;
  if (win.__metriclensClickBridge) return;
  win.__metriclensClickBridge = true;
  const point = (p) => ({curveNumber: p.curveNumber, pointNumber: p.pointNumber, pointIndex: p.pointIndex,
                         x: p.x, y: p.y, customdata: p.customdata});
  win.setInterval(function () {
    win.document.querySelectorAll(".js-plotly-plot").forEach(function (gd) {
      if (gd.__metriclensClick || !gd.layout || gd.layout.meta !== "metriclens-map" || !gd.on) return;
      gd.__metriclensClick = true;
      gd.on("plotly_click", function (ev) {
        if (!ev || !ev.points || !ev.points.length) return;
        if (String((gd._fullLayout || {}).clickmode || "").indexOf("select") >= 0) return;  // selects by itself
        gd.emit("plotly_selected", {points: [point(ev.points[0])], selections: []});
      });
      gd.on("plotly_deselect", function () {  // a double-click in lasso/box mode
        // the page's own Clear button when it is there (the kept selection is not the chart's value, and a
        // marker sent through a chart that was just redrawn could miss); else a "clear" marker, id -1
        const clear = Array.from(win.document.querySelectorAll("button")).find(b => b.innerText.trim() === "Clear selection");
        if (clear) { clear.click(); return; }
        gd.emit("plotly_selected", {points: [{curveNumber: -1, pointNumber: -1, pointIndex: -1, customdata: -1}],
                                    selections: []});
      });
    });
  }, 400);
})();
</script>"""


def event_key(event) -> str:
    """The chart value as text, to tell a new selection, click or clear from the value seen last run."""
    selection = event.get("selection") if hasattr(event, "get") else None
    return json.dumps(selection, sort_keys=True, default=str)

st.title("Explore the embedding")
run = ui.require_run()
model, cfg, art = ui.load_or_stop(run)
n = len(art.labels)
# the retrieval table (an all-vs-all search) is only built when a colouring or a selection needs it,
# so the first map is drawn from the artifacts alone


@st.fragment(run_every=1.0)
def wait_for_umap(run_dir: str) -> None:
    """Polls the background UMAP process; the full page reruns once the coordinates are on disk."""
    job = state.start_umap(run_dir)
    if (Path(run_dir) / "artifacts" / "coords_umap.npy").exists():
        st.rerun(scope="app")
    if job["error"]:
        st.error(f"UMAP failed; the PCA map below still works. Run `python -m core umap {run_dir}` to see why. "
                 f"Last output: {job['error']}")
        return
    elapsed = time.time() - job["started"]
    st.progress(min(elapsed / 60.0, 0.95),
                text=f"Computing UMAP in the background ({elapsed:.0f} s; a fresh process also compiles numba code, "
                     f"~40 s). Showing PCA meanwhile; the map switches by itself and UMAP is kept for next time.")


# ---- controls -------------------------------------------------------------------------------------
c1, c2, c3 = st.columns([1.2, 1.6, 2.2])
projection = c1.radio("Projection", ui.projections(run), horizontal=True, key="explore_projection")
multi_maps = [name for name, shape in state.map_shapes(run).items() if shape[0] > 1]
colour_options = ["class", "top-1 neighbour correct"]
if len(art.groups) > 1:
    colour_options.append("dominant group")
colour_options += [f"dominant {name} channel" for name in multi_maps]
colour_by = c2.selectbox("Colour by", colour_options, key="explore_colour",
                         help="dominant group: the embedding group contributing most to the similarity with the "
                              "item's top-1 neighbour; dominant channel: the map channel holding the most mass")
if len(colour_options) == 2:
    c2.caption("This model has one group and no multi-channel maps, so there is nothing 'dominant' to colour by.")

coords = state.coords(run, ui.PROJECTION_FILES[projection])
shown_projection = projection
if coords is None:
    shown_projection = "PCA"
    coords = state.coords(run, "pca")
    if os.environ.get("METRICLENS_AUTO_UMAP", "1") != "0" or st.session_state.get(f"umap_requested_{run}"):
        wait_for_umap(run)
    elif c3.button("Compute UMAP", help="in the background; cached next to the run in artifacts/coords_umap.npy"):
        st.session_state[f"umap_requested_{run}"] = True
        st.rerun()

# ---- colours ----------------------------------------------------------------------------------------
names = np.asarray(art.class_names)
colours = None
if colour_by == "class":
    categories = names
elif colour_by == "top-1 neighbour correct":
    table = state.retrieval(run)
    categories = np.where(table.top1_correct, "top-1 correct", "top-1 wrong")
    colours = figures.CORRECT_COLOURS
elif colour_by == "dominant group":
    dom = logic.dominant_group(art.embeddings, state.retrieval(run).neighbours[:, 0], art.groups)
    categories = np.asarray([f"group {g}" for g in dom])
else:
    map_name = colour_by.removeprefix("dominant ").removesuffix(" channel")
    try:
        bar = st.empty()

        def progress(done: int, total: int) -> None:
            bar.progress(done / total, text=f"Computing the {map_name} maps of every test image: {done} of {total} "
                                            f"(once per run; kept in .cache/ for next time)")
        mass = state.map_channel_mass(run, progress)[map_name]
        bar.empty()
        categories = np.asarray([f"{map_name} channel {k}" for k in mass.argmax(1)])
    except ui.dataset_error_type() as err:
        ui.dataset_error(err, run)
        categories = names

shown = logic.stratified_sample(art.labels, MAX_POINTS)
sampled = len(shown) < n

# ---- selection: kept by item id, apart from the figure, so recolouring or re-projecting keeps it ----------
# The chart's value is read before the chart is drawn: it belongs to the figure of the previous run (the one
# the user lassoed, clicked or double-clicked). A changed figure is a new chart whose value starts empty, so
# only a value that differs from the one seen after the last draw is a user action.
kept = st.session_state.get(SELECTION)
if not kept or kept.get("run") != run:
    kept = {"run": run, "ids": []}
before = st.session_state.get("explore_map")
if event_key(before) != st.session_state.get(SEEN):
    drawn_on = st.session_state.get("explore_coords_seen")
    drawn_on = coords if drawn_on is None or len(drawn_on) != n else drawn_on
    picked = logic.selected_ids(before, drawn_on, use_geometry=sampled)
    kept = {"run": run, "ids": [] if (picked < 0).any() else picked[picked < n].tolist()}  # -1: double-click clear
st.session_state[SELECTION] = kept
selected = np.asarray(kept["ids"], dtype=int)

hover = [f"#{i} {names[i]}" for i in shown]
fig = figures.embedding_map(coords[shown], shown, categories[shown], hover, colours, selected=selected,
                            title=f"{shown_projection} of {n} test embeddings" + (f" ({len(shown)} shown)" if sampled else ""))
if len(set(categories.tolist())) > 40:  # a legend that long only scrolls
    fig.update_layout(showlegend=False)
ui.map_still(coords[shown], categories[shown], colours)  # shown while the browser loads plotly.js
event = st.plotly_chart(fig, key="explore_map", on_select="rerun", selection_mode=("points", "box", "lasso"),
                        width="stretch", config={"displaylogo": False})
st.session_state[SEEN] = event_key(event)
st.session_state["explore_coords_seen"] = coords  # a lasso's polygon is in the coordinates it was drawn on
st.html(CLICK_BRIDGE, unsafe_allow_javascript=True)
if sampled:
    st.caption(f"The map shows a stratified sample of {len(shown)} of {n} points; box and lasso select over all "
               f"{n} points, and every metric uses the full set.")

if not len(selected):
    st.info("Lasso or box-select points on the map, or click one, to see their images and the retrieval metrics of "
            "the selection against the rest. The selection stays when you recolour or switch the projection; "
            "double-click the map to clear it.")
    test = state.summary(run).get("metrics") or {}
    if test:
        m1, m2 = st.columns(2)
        m1.metric("R@1 (test set, metrics.json)", f"{test.get('recall@1', float('nan')):.3f}")
        m2.metric("MAP@R (test set, metrics.json)", f"{test.get('map_at_r', float('nan')):.3f}")
    state.warm_up()
    # prefetch after paint: the map is on screen, so the first selection need not pay for these
    state.retrieval(run)
    try:
        state.splits(run)
    except ui.dataset_error_type():
        pass  # reported where images are needed
    st.stop()

table = state.retrieval(run)
metrics = logic.selection_metrics(table, selected)
s1, s2 = st.columns([4, 1])
s1.subheader(f"Selection: {len(selected)} of {n} items")
if s2.button("Clear selection", key="explore_clear"):
    st.session_state[SELECTION] = {"run": run, "ids": []}
    st.rerun()
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
