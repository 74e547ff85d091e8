"""Saved selections on Explore: name the map's selection and keep it with the run (RUN/selections/<name>.json,
core/selections.py), list the saved ones and open one again. In teaching mode (the runs are the host's), or where
the run folder refuses the write, they are kept in .cache/selections/<run digest>/ on this server instead."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core.run_dir import SELECTIONS
from core.selections import SelectionError, list_selections, read_selection, save_selection
from dashboard import session
from dashboard.caching import cache_path, digest
from dashboard.explore.selection import ISOLATED, SELECTION, keep, rerun_area


def fallback_folder(run: str) -> Path:
    """Where this server keeps a run's selections when the run folder may not be written."""
    return cache_path(SELECTIONS, digest(str(Path(run).resolve())))


def save_ui(run: str, n: int, selected: np.ndarray, name_column, button_column) -> None:
    name = name_column.text_input("Name the selection", key="explore_save_name", max_chars=60,
                                  placeholder="e.g. confused birds",
                                  help="letters, digits, spaces and _ . - (anything else becomes _)")
    if not button_column.button("Save selection", key="explore_save", disabled=not len(selected) or not name.strip(),
                                help="select items on the map (or in the table) first" if not len(selected) else None):
        return
    try:
        path = save_selection(run, name, selected, n, fallback_folder(run), run_writable=not session.teaching())
    except (SelectionError, OSError) as err:
        st.error(f"The selection was not saved: {err}")
        return
    in_run = path.parent.parent == Path(run)
    where = ("with the run" + ("" if session.teaching() else f" ({path})") if in_run
             else "on this server (the run folder is read-only)")
    st.success(f"Saved {len(selected)} items as “{path.stem}” {where}.")


def saved_ui(run: str, n: int, selected: np.ndarray) -> None:
    """Save the selection under a name; open a saved one (it becomes the map's selection)."""
    st.markdown("**Saved selections**")
    c1, c2, c3, c4 = st.columns([2, 1, 2, 1], vertical_alignment="bottom")
    save_ui(run, n, selected, c1, c2)
    saved = list_selections(run, fallback_folder(run))
    chosen = c3.selectbox("Saved selections", list(saved), index=None, key="explore_saved",
                          placeholder=f"{len(saved)} saved: choose one" if saved else "none saved yet")
    if c4.button("Open", key="explore_open_saved", disabled=chosen is None):
        try:
            ids = read_selection(saved[chosen], n)
        except SelectionError as err:
            st.error(str(err))
            return
        keep(SELECTION, run, ids)
        st.session_state.pop(ISOLATED, None)
        rerun_area()
