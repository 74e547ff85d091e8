"""The item table under the Explore map, linked to it both ways: every item (or, when the map holds a selection,
the selected ones) with its label, split, top-1 ✓/✗, R-precision, MAP@R, the rank of its first true match and
every field; filters as chips; sorted over the whole filtered set, a page of rows shown; the rows kept (or ticked)
selected on the map; an item of the table opened on another page. Which items the filters keep, and their order,
is dashboard/item_table.py (whole columns at once)."""
from __future__ import annotations

from pathlib import PurePath

import numpy as np
import streamlit as st

from dashboard import artifacts, item_rows, item_table, tables, ui
from dashboard.caching import digest
from dashboard.explore.selection import ISOLATED, SELECTION, keep, rerun_area
from dashboard.item_table import SCORES, SORTS, WRONG_TOP1, Filters

PAGE_ROWS = 1000        # rows sent to the browser: the first of the filtered, sorted set (the count says how many)
CHIPS = "explore_filter_chips"


def page_fields(run: str, page: np.ndarray, fields: dict) -> dict[str, np.ndarray]:
    """The fields listed for the rows shown, taken for those rows only (never a pass over every item): the items'
    metadata columns from the store, the attributes read from the class names, and the file name."""
    import pyarrow as pa

    store = artifacts.item_store(run)
    rows = store.table.take(pa.array(page, pa.int64()))
    out = {name: np.asarray(rows.column(name).to_pylist(), dtype=object) for name in store.metadata_columns}
    out.update((name, np.asarray(values[page], dtype=object)) for name, values in fields.items()
               if name not in ("class", "split") and name not in out)
    paths = rows.column("path").to_pylist()
    if any(paths):
        out["file"] = np.asarray([PurePath(p).name if p else "" for p in paths], dtype=object)
    return out


def filters_ui(run: str, table, fields: dict) -> Filters:
    """The filter chips, and a control for each chosen one (a range of a score, values of a field)."""
    chips = st.pills("Filter the items", [WRONG_TOP1, *SCORES, *fields], selection_mode="multi", key=CHIPS,
                     help="choose chips to filter by; every chosen filter must hold. A score's range leaves out "
                          "items without that score (the only item of its class)") or []
    controls = [chip for chip in chips if chip != WRONG_TOP1]
    ranges, values = {}, {}
    columns = st.columns(min(len(controls), 4)) if controls else []
    tag = digest(run)       # per run: another run's classes are not this run's
    for k, chip in enumerate(controls):
        column = columns[k % len(columns)]
        if chip == "first match rank":
            depth = int(table.neighbours.shape[1])
            # a run's saved scores may rank a first match beyond the neighbours it lists: the range covers them all
            last = max(depth + 1, int(np.max(table.first_match_rank, initial=1)))
            ranges[chip] = column.slider(chip, 1, last, (1, last), key=f"explore_range_{chip}_{tag}",
                                         help=f"rank of the first item of the same class (1: right at top-1; "
                                              f"{depth} neighbours are listed per item)")
        elif chip in SCORES:
            ranges[chip] = column.slider(chip, 0.0, 1.0, (0.0, 1.0), step=0.05, key=f"explore_range_{chip}_{tag}")
        else:
            options = sorted(map(str, fields[chip].categories))
            chosen = column.multiselect(f"{chip} is one of", options, key=f"explore_values_{chip}_{tag}",
                                        placeholder="any value")
            if chosen:
                values[chip] = tuple(chosen)
    return Filters(WRONG_TOP1 in chips, ranges, values)


def select_on_map_ui(run: str, n: int, kept: np.ndarray, picked: list[int], selected: np.ndarray) -> None:
    """'Select on the map': the ticked rows, else every item the filters keep, become the map's selection."""
    target = np.asarray(sorted(picked) if picked else kept, dtype=int)
    label = (f"Select the {len(target)} ticked on the map" if picked else
             f"Select these {len(target)} on the map")
    unchanged = np.array_equal(target, selected) or (not len(selected) and len(target) == n)   # all: no selection
    if st.button(label, key="explore_table_select", disabled=unchanged or not len(target),
                 help="make the rows the map's selection (the table then lists them); Clear selection lists every "
                      "item again"):
        keep(SELECTION, run, target)
        st.session_state.pop(ISOLATED, None)
        rerun_area()


def open_ui(art: artifacts.Artifacts, page: np.ndarray, picked: list[int], has_model: bool) -> None:
    """Open one item of the table on Retrieval or Attention; a single ticked row is the item offered."""
    if len(picked) == 1 and picked[0] != st.session_state.get("_explore_open_applied"):
        st.session_state["explore_open"] = picked[0]    # once per tick: the box stays free to change after
    st.session_state["_explore_open_applied"] = picked[0] if len(picked) == 1 else None
    o1, o2, o3 = st.columns([2, 1, 1])
    target = o1.selectbox("Open an item of the table", page.tolist(), key="explore_open",
                          format_func=lambda i: ui.item_caption(art, int(i)))
    if o2.button("Neighbours →", key="explore_to_retrieval", disabled=target is None):
        ui.go_to("retrieval", int(target))
    if has_model and o3.button("Attention →", key="explore_to_attention", disabled=target is None):
        ui.go_to("attention", int(target))       # no model: Attention shows nothing


def items_ui(run: str, art: artifacts.Artifacts, selected: np.ndarray, has_model: bool) -> None:
    from dashboard.explore.saved_selections import saved_ui

    table, fields = artifacts.retrieval(run), artifacts.filter_fields(run)
    n = len(art.labels)
    st.subheader("Items" + (" of the selection" if len(selected) else ""))
    filters = filters_ui(run, table, fields)
    s1, s2, s3 = st.columns([1.4, 1, 3])
    by = s1.selectbox("Sort by", SORTS, key="explore_sort")
    descending = s2.toggle("Descending", key="explore_sort_descending")
    within = selected if len(selected) else None
    kept = np.flatnonzero(item_table.filter_mask(table, fields, filters, within))
    page = item_table.sorted_ids(kept, by, table, fields["class"], descending)[:PAGE_ROWS]
    s3.caption(f"**{len(kept)}** of {len(selected) if within is not None else n} "
               f"{'selected items' if within is not None else 'items'} kept"
               + (f"; the first {PAGE_ROWS} listed" if len(kept) > PAGE_ROWS else "")
               + ". Sort here over all of them; a column's header sorts the listed rows only.")
    frame = item_rows.selection_rows(art, table, page, {})
    for name, values in page_fields(run, page, fields).items():
        if name not in frame:        # a field named like a column of the table (e.g. "rank") is not listed twice
            frame[name] = values
    picked = tables.items_picked(frame, key=f"explore_items_{hash(page.tobytes())}")
    b1, b2 = st.columns([2, 3])
    with b1:
        select_on_map_ui(run, n, kept, picked, selected)
    b2.caption("Tick rows to select only those; a lasso, box or click on the map lists its items here.")
    if len(page):
        open_ui(art, page, picked, has_model)
    saved_ui(run, n, selected)
