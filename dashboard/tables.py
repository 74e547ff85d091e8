"""The item tables every page draws the same way: a query's neighbours, a selection, the hardest failures
(dashboard/item_rows.py makes their rows). Sortable by any column, ✓/✗ in colour, numbers formatted alike; a
picked row hands its item to the page (which makes it the query, or opens it)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.item_rows import OTHER, QUERY_MARK, SAME

ITEM_FORMAT = "#%d"
# the columns item_rows makes, the same on every page; any other column is a field of the items, shown as text
COLUMNS = {
    "rank": st.column_config.NumberColumn("rank", format="%d", width="small",
                                          help="by cosine similarity to the query, 1 = nearest (0: the query)"),
    "item": st.column_config.NumberColumn("item", format=ITEM_FORMAT, width="small",
                                          help="the item's number: its row of the run's embeddings"),
    "query": st.column_config.NumberColumn("query", format=ITEM_FORMAT, width="small"),
    "top-1": st.column_config.NumberColumn("top-1", format=ITEM_FORMAT, width="small",
                                           help="the item's nearest other item"),
    "true match": st.column_config.NumberColumn("true match", format=ITEM_FORMAT, width="small",
                                                help="the query's most similar item of its own class"),
    "cosine": st.column_config.NumberColumn("cosine", format="%.3f", help="cosine similarity in the embedding"),
    "true match cosine": st.column_config.NumberColumn("true match cosine", format="%.3f"),
    "true match rank": st.column_config.NumberColumn("true match rank", format="%d",
                                                     help="where the true match ranks among every other item"),
    "R-precision": st.column_config.NumberColumn("R-precision", format="%.2f",
                                                 help="share of the item's R nearest that share its class "
                                                      "(R: the number of other items of its class)"),
    "MAP@R": st.column_config.NumberColumn("MAP@R", format="%.2f",
                                           help="mean average precision over the item's R nearest"),
    "first match rank": st.column_config.NumberColumn("first match rank", format="%d",
                                                      help="rank of the item's nearest item of its own class among its "
                                                           "saved neighbours (1 = its top-1); one past the list: "
                                                           "not among them"),
    "same class": st.column_config.TextColumn("same class", width="small",
                                              help=f"{SAME}: the same class as the query, {OTHER}: another class"),
}
MARK_COLOURS = {SAME: "color: #1a7f37; font-weight: 600", OTHER: "color: #cf222e; font-weight: 600",
                QUERY_MARK: "color: #6e7781"}
ROW_PX, HEADER_PX = 35, 38          # st.dataframe's row and header heights
# ✓/✗ are coloured through a pandas Styler, whose pass over every cell grows with the rows and would slow a large
# selection's rerun (the lasso's latency): longer tables keep the plain marks
COLOURED_ROWS = 200


def mark_style(value) -> str:
    """The CSS of a cell of the same-class column: ✓ green, ✗ red, the query grey."""
    return MARK_COLOURS.get(value, "")


def _draw(frame: pd.DataFrame, key: str, selection_mode: str | None, max_rows_shown: int):
    marks = [c for c in ("same class",) if c in frame]
    shown = frame.style.map(mark_style, subset=marks) if marks and len(frame) <= COLOURED_ROWS else frame
    config = {name: COLUMNS.get(name, st.column_config.TextColumn(name)) for name in frame.columns}
    height = HEADER_PX + ROW_PX * min(len(frame), max_rows_shown) + 2   # all rows of a short table, no scrollbar
    return st.dataframe(shown, hide_index=True, width="stretch", height=height, column_config=config, key=key,
                        on_select="rerun" if selection_mode else "ignore", selection_mode=selection_mode or "single-row")


def item_table(frame: pd.DataFrame, key: str, pick_column: str | None = "item", max_rows_shown: int = 12) -> int | None:
    """Draw `frame` (a table of item_rows); returns the `pick_column` value of a row just selected (once per
    selection), else None. `key` should change with what the table lists (e.g. the query), so that a new table
    starts with no row selected."""
    event = _draw(frame, key, "single-row" if pick_column else None, max_rows_shown)
    rows = event.selection.rows if pick_column else []
    picked = int(frame[pick_column].iloc[rows[0]]) if rows else None
    applied = f"_{key}_picked"          # a selected row stays selected: act on it once
    if picked == st.session_state.get(applied):
        return None
    st.session_state[applied] = picked
    return picked


def items_picked(frame: pd.DataFrame, key: str, max_rows_shown: int = 12) -> list[int]:
    """Draw `frame` with rows to tick (several at once); returns the items of the ticked rows, in table order."""
    event = _draw(frame, key, "multi-row", max_rows_shown)
    return [int(frame["item"].iloc[row]) for row in event.selection.rows]
