"""Compare: two runs on the same test items, side by side: metrics, a linked pair of maps coloured by
how each query's retrieval changed, rank shifts, one query in both, and where they disagree most."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import artifacts, catalog, figures, item_rows, logic, session, ui, webgl_map
from dashboard.caching import artifact_stamp
from dashboard.tables import item_table  # the module's name is taken below: this page's retrieval tables

MAX_POINTS = 20_000        # per map; above it a stratified sample is drawn and box/lasso select by geometry
SELECTION = "compare_selection"
STILL_COLOURS = {"1": figures.SHIFT_SCALE[2][1], "0": figures.SHIFT_SCALE[1][1], "-1": figures.SHIFT_SCALE[0][1]}
MEASURES = {"first match rank": "ranks gained", "R-precision": "R-prec. gained"}


def pick_run_b_ui(run_a: str) -> tuple[str, dict]:
    """Run B, chosen here (or in the link); a run named in the link that is not a finished, listed run is
    said, never replaced silently by another one: B stays empty until the user picks it."""
    others = [r for r in catalog.discover_runs() if r["path"] != run_a and r["complete"]]
    if not others:
        st.info("Comparing needs a second finished run. Train one on the **Train** page (e.g. the same config with "
                "another seed or head), import embeddings (`python -m core import`), or add a folder of runs in "
                "the sidebar.")
        st.stop()
    paths = [r["path"] for r in others]
    labels = {r["path"]: r["name"] for r in others}
    missing = st.session_state.pop("_deep_link_missing_compare", None)
    wanted = st.session_state.get(session.COMPARE)
    if missing is None and wanted not in (None, run_a) and wanted not in paths:
        missing = wanted
    if missing is not None:
        st.warning(f"Run B {Path(str(missing)).name[:80]!r} is not a finished run in the run list, so nothing is "
                   f"compared yet. Pick run B below.")
        st.session_state[session.COMPARE] = None
        st.session_state["_compare_wait"] = True
    elif st.session_state.get(session.COMPARE) not in paths and not st.session_state.get("_compare_wait"):
        st.session_state[session.COMPARE] = paths[0]  # first visit, or B became the sidebar run: the first other run
    st.session_state["compare_widget"] = st.session_state[session.COMPARE]

    def chose() -> None:
        st.session_state[session.COMPARE] = st.session_state["compare_widget"]
        st.session_state["_compare_wait"] = False
    st.selectbox("Compare the sidebar run (A) with (B)", paths, key="compare_widget", format_func=labels.get,
                 on_change=chose, placeholder="pick run B")
    if st.session_state[session.COMPARE] not in paths:
        st.info("Pick run B above to compare it with the sidebar run.")
        st.stop()
    return st.session_state[session.COMPARE], labels


@st.cache_data(show_spinner=False, max_entries=16)
def _different_items(run_a: str, run_b: str, stamps: tuple[float, float]) -> str | None:
    art_a, art_b = artifacts.artifacts(run_a), artifacts.artifacts(run_b)
    return logic.different_items(art_a.labels, art_b.labels, art_a.store, art_b.store)


@st.cache_resource(show_spinner=False, max_entries=8)
def _shown(run: str, stamp: float) -> np.ndarray:
    shown = logic.stratified_sample(artifacts.artifacts(run).labels, MAX_POINTS)
    shown.setflags(write=False)
    return shown


def same_items_ui(name_a: str, name_b: str, run_a: str, run_b: str) -> None:
    """Stop, saying why, when the two runs' items cannot be paired one by one (checked once per pair of runs)."""
    problem = _different_items(run_a, run_b, (artifact_stamp(run_a), artifact_stamp(run_b)))
    if problem:
        st.error(f"**{name_a}** and **{name_b}** were not evaluated on the same test items: {problem}. A per-item "
                 f"comparison would pair unrelated items, so nothing is compared. Pick two runs of the same data "
                 f"set and split (an imported run must list its items in the same order).")
        st.stop()


def metrics_ui(run_a: str, run_b: str, name_a: str, name_b: str) -> None:
    ma, mb = catalog.summary(run_a)["metrics"], catalog.summary(run_b)["metrics"]
    keys = [k for k in ma if k in mb]
    metrics = pd.DataFrame({"metric": keys, f"A: {name_a}": [ma[k] for k in keys],
                            f"B: {name_b}": [mb[k] for k in keys], "B − A": [mb[k] - ma[k] for k in keys]})
    st.dataframe(metrics, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in metrics.columns[1:]})


def chart_value(value) -> str:
    """A chart's selection as text, to tell a new lasso/box (or a double-click clear) from the value last seen."""
    selection = value.get("selection") if hasattr(value, "get") else None
    return json.dumps(selection, sort_keys=True, default=str)


def projection_ui(run: str, projection: str) -> tuple[np.ndarray, str]:
    coords = artifacts.coords(run, ui.PROJECTION_FILES[projection]) if projection != "PCA" else None
    return (coords, projection) if coords is not None else (artifacts.coords(run, "pca"), "PCA")


def linked_maps_ui(runs: dict[str, str], arts: dict, tables: dict) -> np.ndarray:
    """Both runs' maps of the same items; a lasso or box in either selects those items in both. Returns the
    selected item ids (kept by id, so recolouring or re-projecting keeps them)."""
    st.subheader("The same items on both maps")
    c1, c2 = st.columns([1, 2])
    projection = c1.radio("Projection", ui.projections(*runs.values()), horizontal=True, key="compare_projection")
    measure = c2.radio("Colour by the change from A to B of", list(MEASURES), horizontal=True, key="compare_measure",
                       help="first match rank: ranks the first true match moved up in B (blue) or down (red); "
                            "R-precision: its gain in B")
    art = arts["A"]
    n = len(art.labels)
    shift = logic.rank_shift(tables["A"], tables["B"], measure)
    shown = _shown(runs["A"], artifact_stamp(runs["A"]))   # the items both maps draw
    names = np.asarray(art.class_names)
    hover = [f"#{i} {names[i]} · {measure} A {_measure_value(tables['A'], measure, i)} → "
             f"B {_measure_value(tables['B'], measure, i)}" for i in shown]
    coords = {side: projection_ui(runs[side], projection) for side in runs}

    kept = st.session_state.get(SELECTION)
    if not kept or kept.get("runs") != runs:
        kept = {"runs": runs, "ids": []}
    for side in runs:  # a new value on either chart (read before drawing: it belongs to the last draw) selects
        key = f"compare_map_{side}"
        value = st.session_state.get(key)
        if chart_value(value) != st.session_state.get(f"{key}_seen"):
            ids = logic.selected_ids(value, coords[side][0], use_geometry=len(shown) < n)
            kept = {"runs": runs, "ids": ids[(ids >= 0) & (ids < n)].tolist()}  # -1: the bridge's "clear"
    st.session_state[SELECTION] = kept
    selected = np.asarray(kept["ids"], dtype=int)

    columns = st.columns(2)
    for column, side in zip(columns, runs):
        xy, used = coords[side]
        fig = figures.shift_map(xy[shown], shown, shift[shown], hover, bar_title=MEASURES[measure],
                                title=f"{side}: {Path(runs[side]).name} ({used})", selected=selected)
        key = f"compare_map_{side}"
        with column:
            webgl_map.map_still(xy[shown], np.sign(np.nan_to_num(shift[shown])).astype(int).astype(str), STILL_COLOURS,
                         key=f"map_still_{side}")  # while the browser loads plotly.js
            event = webgl_map.item_map(fig, key=key)
        st.session_state[f"{key}_seen"] = chart_value(event)
    webgl_map.map_bridge()  # a click on a point selects it (Streamlit's lasso mode alone passes no click on)
    if projection != "PCA" and any(used == "PCA" for _, used in coords.values()):
        st.caption("A run without UMAP coordinates is shown on PCA (Explore computes UMAP; "
                   "`python -m core umap RUN_DIR` does too).")
    if not len(selected):
        st.caption("Lasso or box-select items on either map: the same items light up on the other. Blue: B "
                   "retrieves that query better than A; red: worse; grey: no change (the scale ends at the "
                   f"{figures.SHIFT_PERCENTILE}th percentile of the changes' size, so a few large ones do not "
                   "wash out the rest). Double-click a map to clear.")
        return selected
    better, worse = int((shift[selected] > 0).sum()), int((shift[selected] < 0).sum())
    s1, s2 = st.columns([5, 1])
    s1.markdown(f"**Selection: {len(selected)} items** (outlined in magenta on both maps) — B better for {better}, worse for {worse}; mean R-precision "
                f"A {np.nanmean(tables['A'].r_precision[selected]):.3f} → B "
                f"{np.nanmean(tables['B'].r_precision[selected]):.3f}")
    if s2.button("Clear selection", key="compare_clear"):
        st.session_state[SELECTION] = {"runs": runs, "ids": []}
        st.rerun()
    return selected


def _measure_value(table, measure: str, i: int) -> str:
    return str(table.first_match_rank[i]) if measure == "first match rank" else f"{table.r_precision[i]:.2f}"


@st.cache_resource(show_spinner=False, max_entries=8)
def _overlap(run_a: str, run_b: str, stamps: tuple[float, float], k: int) -> np.ndarray:
    from core.neighbours import topk_overlap
    out = topk_overlap(artifacts.retrieval(run_a).neighbours, artifacts.retrieval(run_b).neighbours, k)
    out.setflags(write=False)
    return out


def overlap(runs: dict[str, str], k: int) -> np.ndarray:
    """Per query, the Jaccard overlap of the two runs' top-k lists (core.neighbours.topk_overlap, vectorised),
    once per pair of runs, artifacts versions and k: a lasso or a recolouring reruns the page, not this."""
    return _overlap(runs["A"], runs["B"], (artifact_stamp(runs["A"]), artifact_stamp(runs["B"])), k)


def rank_shift_ui(runs: dict[str, str], tables: dict) -> tuple[int, np.ndarray]:
    table_a, table_b = tables["A"], tables["B"]
    k = ui.int_slider(st, "Top-k for the neighbourhood overlap", 1,
                      min(table_a.neighbours.shape[1], table_b.neighbours.shape[1]), 8, key="compare_k")
    rank_a, rank_b = table_a.first_match_rank, table_b.first_match_rank
    jaccard = overlap(runs, k)
    h1, h2 = st.columns(2)
    h1.plotly_chart(figures.histogram(rank_b - rank_a, "Rank change of the first true match (B − A)",
                                      "rank in B − rank in A (negative: B finds it sooner)"),
                    key="compare_rank_hist", width="stretch")
    h2.plotly_chart(figures.histogram(jaccard, f"Neighbourhood overlap (Jaccard of top-{k})", "Jaccard", nbins=20),
                    key="compare_jaccard_hist", width="stretch")
    better, worse = int((rank_b < rank_a).sum()), int((rank_b > rank_a).sum())
    st.caption(f"B ranks the first true match sooner for {better} queries and later for {worse}; mean top-{k} "
               f"overlap {jaccard.mean():.2f}. Ranks beyond {table_a.neighbours.shape[1]} count as "
               f"{table_a.neighbours.shape[1] + 1}.")
    return k, jaccard


def same_query_ui(runs: dict[str, str], arts: dict, tables: dict, k: int) -> None:
    st.subheader("The same query in both runs")
    art_a = arts["A"]
    ui.query_picker(art_a, "compare")
    q = ui.query_item(len(art_a.labels))
    query_img = ui.images_or_error(runs["A"], [q]) if artifacts.has_images(runs["A"]) else None
    left, right = st.columns([1, 6])
    if query_img is not None:
        left.image(figures.enlarge(query_img[0], 140), caption=f"query {ui.item_caption(art_a, q)}", width="stretch")
    else:
        left.markdown(f"**Query {ui.item_caption(art_a, q)}**")
    with right:
        for side in runs:
            run, art, table = runs[side], arts[side], tables[side]
            st.markdown(f"**{side}: {Path(run).name}** — first true match at rank {table.first_match_rank[q]}, "
                        f"R-precision {table.r_precision[q]:.2f}")
            ids, sims = table.neighbours[q, :k], table.similarities[q, :k]
            # eight columns whatever k: with k columns, k = 1 stretched one thumbnail over the whole width
            if not (artifacts.has_images(run) and ui.neighbours_row(run, art, ids, sims, int(art.labels[q]), columns=8)):
                # no images: the same neighbours as a table (a picked row becomes the query)
                picked = item_table(item_rows.neighbour_rows(art, ids, sims, art.labels[q], artifacts.listed_fields(run)),
                                    key=f"compare_neighbours_{side}_{q}_{k}")
                if picked is not None:
                    ui.set_query(picked)
                    st.rerun()


def disagreements_ui(arts: dict, tables: dict, jaccard: np.ndarray, k: int, selected: np.ndarray) -> None:
    """The queries where the runs disagree most (within the maps' selection when there is one)."""
    st.subheader("Queries where they disagree most" + (" (in the selection)" if len(selected) else ""))
    rank_a, rank_b = tables["A"].first_match_rank, tables["B"].first_match_rank
    pool = selected if len(selected) else np.arange(len(rank_a))
    worst = pool[logic.disagreements(rank_a[pool], rank_b[pool], jaccard[pool], 10)]
    frame = pd.DataFrame({"query": worst, "class": [arts["A"].class_names[i] for i in worst],
                          "rank A": rank_a[worst], "rank B": rank_b[worst],
                          f"top-{k} Jaccard": jaccard[worst].round(2)})
    event = st.dataframe(frame, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                         key="compare_disagreements")
    rows = (event or {}).get("selection", {}).get("rows", []) if hasattr(event, "get") else []
    picked = int(worst[rows[0]]) if rows else None
    if picked is not None and picked != st.session_state.get("compare_last_pick"):  # apply a new pick once
        st.session_state["compare_last_pick"] = picked
        st.session_state[session.QUERY] = picked
        st.rerun()
    st.caption("Select a row to show that query in both runs above.")


st.title("Compare two runs")
run_a = ui.require_run()
run_b, labels = pick_run_b_ui(run_a)
_, _, art_a = ui.load_or_stop(run_a)
_, _, art_b = ui.load_or_stop(run_b)
name_a, name_b = Path(run_a).name, labels[run_b]
same_items_ui(name_a, name_b, run_a, run_b)
runs, arts = {"A": run_a, "B": run_b}, {"A": art_a, "B": art_b}
tables = {"A": artifacts.retrieval(run_a), "B": artifacts.retrieval(run_b)}
metrics_ui(run_a, run_b, name_a, name_b)
selected = linked_maps_ui(runs, arts, tables)
k, jaccard = rank_shift_ui(runs, tables)
same_query_ui(runs, arts, tables, k)
disagreements_ui(arts, tables, jaccard, k, selected)
