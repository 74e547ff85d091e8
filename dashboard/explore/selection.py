"""What is selected on the Explore map: the selection and the isolated set kept per run in the session, and
the panel under the map: the clicked item's nearest neighbours, or the selection's metrics, images, export
and isolate buttons (or, with nothing selected, the run's own metrics)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from dashboard import artifacts, catalog, item_rows, item_table, logic, session, tables, ui

GRID_LIMIT = 24         # a selection's images shown: three rows (each image is made, sent and decoded)
SELECTION, ISOLATED = "explore_selection", "explore_isolated"  # session keys: {"run", "ids"} kept per run


def kept(key: str, run: str) -> np.ndarray | None:
    """Ids kept under a session key for this run (a selection, an isolated set); None when there are none."""
    value = st.session_state.get(key)
    return np.asarray(value["ids"], dtype=int) if value and value.get("run") == run else None


def keep(key: str, run: str, ids) -> None:
    st.session_state[key] = {"run": run, "ids": np.unique(np.asarray(ids, dtype=int)).tolist()}  # sorted


def focus_on(run: str, item: int) -> None:
    """Make one item the selection and the query (a picked row of a table): its neighbours are listed next."""
    keep(SELECTION, run, [item])
    st.session_state[session.QUERY] = int(item)
    st.session_state[session.UPLOAD] = None


def rerun_area() -> None:
    """Run the selection area again: the fragment alone when this run is the fragment's own (a row picked in its
    table), else the page (Streamlit allows a fragment's rerun only from a fragment run)."""
    from streamlit.errors import StreamlitAPIException
    try:
        st.rerun(scope="fragment")
    except StreamlitAPIException:
        st.rerun()


def neighbours_ui(run: str, art: artifacts.Artifacts, item: int, neighbour_ids, sims) -> None:
    """The clicked item and its nearest neighbours as a table (number, label, cosine, ✓/✗, the items' fields),
    beside their images when the run has images."""
    st.subheader(f"Nearest neighbours of #{item} {art.class_names[item]}")
    rows = item_rows.neighbour_rows(art, neighbour_ids, sims, art.labels[item], artifacts.listed_fields(run), query=item)
    images = ui.images_or_error(run, [item, *neighbour_ids]) if artifacts.has_images(run) else None
    table_area = st.container()
    if images is not None:
        left, table_area = st.columns([2, 3])
        caps = [f"query #{item}"] + [ui.item_caption(art, int(i), float(s), bool(art.labels[i] == art.labels[item]))
                                     for i, s in zip(neighbour_ids, sims)]
        with left:
            ui.image_wall(images, caps, width=96)
    with table_area:
        picked = tables.item_table(rows, key=f"explore_neighbours_{item}")
    if picked is not None and picked != item:
        focus_on(run, picked)
        rerun_area()
    st.caption("Cosine similarity in the embedding (exact, over every item); ✓/✗: same class as the query; rank 0 "
               "is the item itself. The neighbours are ringed on the map: select a row, or click a ring, to move to "
               "that item.")


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


def export_csv(run: str, selected: np.ndarray, view: tuple) -> str:
    """The selection as CSV: the items' own columns (core.item_store.selection_csv), the fields read from the class
    names, the map's coordinates in `view`, the retrieval scores and the neighbour ids (item_table.export_columns)."""
    from core.item_store import selection_csv

    store = artifacts.item_store(run)
    # fields read from the class names (colour, shape) are not columns of the store: added here
    columns = {name: np.asarray(values) for name, values in artifacts.item_fields(run).items()
               if name != "class" and name not in store.table.column_names}
    columns |= item_table.export_columns(artifacts.retrieval(run), view[0], view[1])
    return selection_csv(store, selected, artifacts.artifacts(run).labels, columns)


def export_ui(run: str, selected: np.ndarray, view: tuple) -> None:
    # a callable: the CSV is made when the button is pressed, not on every rerun
    st.download_button(f"Export {len(selected)} as CSV", lambda: export_csv(run, selected, view), on_click="ignore",
                       file_name=f"{Path(run).name}_selection.csv", mime="text/csv", key="explore_export",
                       help=f"item, label, class, split, index in the split, path, every field; x and y on the map "
                            f"shown ({view[2]}); top-1 correct, R-precision, MAP@R, the first true match's rank; "
                            f"the ids of the {item_table.EXPORT_NEIGHBOURS} nearest other items (neighbour_1 "
                            f"nearest)")


def selection_ui(run: str, art: artifacts.Artifacts, selected: np.ndarray, fields: dict, view: tuple) -> None:
    n, names = len(art.labels), fields["class"]
    table = artifacts.retrieval(run)
    metrics = logic.selection_metrics(table, selected)
    s1, s2, s3, s4 = st.columns([2.6, 1.2, 1.6, 1.2])
    s1.subheader(f"Selection: {len(selected)} of {n} items")
    with s2:
        export_ui(run, selected, view)
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

    if artifacts.has_images(run):
        grid = logic.interleave_classes(selected, art.labels)[:GRID_LIMIT]
        images = ui.images_or_error(run, grid)
        if images is not None:
            caps = [ui.item_caption(art, int(i), match=bool(table.top1_correct[i])) for i in grid]
            ui.image_wall(images, caps)
            if len(selected) > GRID_LIMIT:
                st.caption(f"Showing {GRID_LIMIT} of {len(selected)} selected images, taking each class in turn "
                           f"(✓/✗: top-1 neighbour correct).")


def nothing_selected_ui(run: str) -> None:
    st.info("Lasso or box-select points on the map, or click one, to see their images and the retrieval metrics of "
            "the selection against the rest; or find items by name above. The selection stays when you recolour "
            "or switch the projection; double-click the map to clear it.")
    test = catalog.summary(run).get("metrics") or {}
    if test:
        m1, m2 = st.columns(2)
        m1.metric("R@1 (test set, metrics.json)", f"{test.get('recall@1', float('nan')):.3f}")
        m2.metric("MAP@R (test set, metrics.json)", f"{test.get('map_at_r', float('nan')):.3f}")
