"""This browser session: the session-state keys every page shares, its id, what it may do (teaching mode)
and the data folders it gave for runs whose data moved.

The keys hold plain values, not widget keys, so they survive page switches.
"""
from __future__ import annotations

import uuid

import streamlit as st

from dashboard import access

RUN, COMPARE, QUERY, UPLOAD = "run", "compare_run", "query", "upload_query"
EXTRA_ROOT, DATA_ROOTS, PAIR = "extra_runs_root", "data_root_overrides", "cross_pair"


def session_owner() -> str:
    """This browser session's id, for the jobs it starts (kept in its session state)."""
    return st.session_state.setdefault("_session_owner", uuid.uuid4().hex)


def teaching() -> bool:
    """Read-only teaching mode: METRICLENS_MODE=demo, or by default whenever the server is shared."""
    return access.mode(st.get_option("server.address")) == "demo"


def data_root_override(run_dir: str) -> str | None:
    """The data folder this session gave for a run whose data moved (never in teaching mode)."""
    return None if teaching() else (st.session_state.get(DATA_ROOTS) or {}).get(run_dir)
