"""MetricLens dashboard: `streamlit run app.py`.

The entrypoint is the frame around every page: the sidebar run picker, deep links
(`?page=attention&run=shapes_gap&query=12&compare=shapes_grouping`, read on load and written on
change) and the navigation over dashboard/pages. Known bad input (a damaged run, a moved data
set) ends as a clear st.error, never a traceback.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.checkpoint import CheckpointError
from dashboard import state, ui

st.set_page_config(page_title="MetricLens", page_icon=":material/travel_explore:", layout="wide")

# Material icons ship with Streamlit's frontend, so they render even where no emoji font is installed
TITLES = {"explore": ("Explore", ":material/scatter_plot:"), "retrieval": ("Retrieval", ":material/image_search:"),
          "attention": ("Attention", ":material/visibility:"), "cross": ("Cross-image", ":material/compare_arrows:"),
          "compare": ("Compare", ":material/balance:"), "train": ("Train", ":material/model_training:"),
          "learn": ("Learn", ":material/school:")}
# the default page lives at "/" (Streamlit ignores its url_path); the others at /retrieval, /attention, ...
PAGES = {key: st.Page(ui.PAGES[key], title=title, icon=icon, default=key == "explore",
                      **({} if key == "explore" else {"url_path": key}))
         for key, (title, icon) in TITLES.items()}


def run_label(summary: dict) -> str:
    m = summary.get("metrics") or {}
    if not m:
        status = "unfinished" if not summary.get("problem") else "damaged"
        return f"{summary['name']} · {summary.get('head', '?')} · {status}"
    # R@1 right after the name: the select box cuts long labels at its width, and the method is the part to lose
    return (f"{summary['name']} · R@1 {m.get('recall@1', float('nan')):.3f} · "
            f"{summary.get('method', '?')}/{summary.get('backbone', '?')}")  # the rest of the metrics show below


def run_key(summary: dict, runs: list[dict]) -> str:
    """Short name in links when it is unique, else the full path."""
    same = [r for r in runs if r["name"] == summary["name"]]
    return summary["name"] if len(same) == 1 else summary["path"]


def read_deep_link(runs: list[dict], current_page: str) -> list[dict]:
    """Once per session: take run, query, comparison run and page from the URL. A run given as a path
    outside the listed folders is added as 'another folder'. Returns the (possibly longer) run list."""
    if st.session_state.get("_deep_link_read"):
        return runs
    st.session_state["_deep_link_read"] = True
    params = st.query_params
    linked = Path(params.get("run") or "").expanduser()
    if params.get("run") and linked.is_absolute() and (linked / "config.json").exists() \
            and str(linked.resolve()) not in {r["path"] for r in runs}:
        st.session_state[state.EXTRA_ROOT] = str(linked)
        runs = state.discover_runs()
    by_key = {run_key(r, runs): r["path"] for r in runs} | {r["path"]: r["path"] for r in runs}
    if params.get("run") in by_key:
        st.session_state[state.RUN] = by_key[params["run"]]
    elif params.get("run"):
        st.session_state["_deep_link_problem"] = f"run {params['run']!r} from the link was not found"
    if params.get("compare") in by_key:
        st.session_state[state.COMPARE] = by_key[params["compare"]]
    elif params.get("compare"):  # the Compare page says so instead of comparing with another run
        st.session_state["_deep_link_missing_compare"] = params["compare"][:80]
    if (params.get("query") or "").isdigit():
        st.session_state[state.QUERY] = int(params["query"])
    page = params.get("page")
    if page in PAGES and page != current_page:
        st.switch_page(PAGES[page])
    return runs


def write_deep_link(runs: list[dict], current_page: str) -> None:
    by_path = {r["path"]: run_key(r, runs) for r in runs}
    wanted = {"page": current_page}
    if st.session_state.get(state.RUN) in by_path:
        wanted["run"] = by_path[st.session_state[state.RUN]]
    if st.session_state.get(state.QUERY) is not None and not st.session_state.get(state.UPLOAD):
        wanted["query"] = str(st.session_state[state.QUERY])
    if st.session_state.get(state.COMPARE) in by_path:
        wanted["compare"] = by_path[st.session_state[state.COMPARE]]
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


def sidebar_run_picker(runs: list[dict]) -> None:
    with st.sidebar:
        st.markdown("### :material/travel_explore: MetricLens")
        if not runs:
            st.warning("No runs found. Train one on the **Train** page, or give a folder of runs below.")
        else:
            paths = [r["path"] for r in runs]
            if st.session_state.get(state.RUN) not in paths:
                if st.session_state.get(state.RUN):  # say so rather than silently open another run
                    st.session_state["_deep_link_problem"] = (
                        f"Run {Path(st.session_state[state.RUN]).name!r} is not in the run list (moved, deleted or "
                        f"in a folder this session does not list); opened another run instead.")
                complete = [r["path"] for r in runs if r["complete"]]
                opening = [p for p in complete if Path(p).name == state.OPENING_RUN]
                st.session_state[state.RUN] = (opening or complete or paths)[0]
            st.session_state["w_run"] = st.session_state[state.RUN]
            labels = {r["path"]: run_label(r) for r in runs}

            def picked():
                st.session_state[state.RUN] = st.session_state["w_run"]
                st.session_state[state.UPLOAD] = None
            st.selectbox("Run", paths, key="w_run", format_func=labels.get, on_change=picked,
                         help="Runs in checkpoints/, in $METRICLENS_RUNS and in the folder below")
            summary = next(r for r in runs if r["path"] == st.session_state[state.RUN])
            metrics = summary.get("metrics") or {}
            if metrics:
                st.markdown(" · ".join(f"{name} **{metrics[key]:.3f}**" for name, key in
                                       [("R@1", "recall@1"), ("MAP@R", "map_at_r"), ("NMI", "nmi")] if key in metrics))
            if summary.get("problem"):
                st.error(summary["problem"])
            st.caption(f"`{summary['path']}`" + (f" — {summary['description']}" if summary.get("description") else ""))
        if st.session_state.get("_deep_link_problem"):
            st.warning(st.session_state.pop("_deep_link_problem"))
        st.session_state["w_extra_root"] = st.session_state.get(state.EXTRA_ROOT) or ""
        st.text_input("Another folder of runs", key="w_extra_root", placeholder="/path/to/runs",
                      on_change=lambda: st.session_state.update({state.EXTRA_ROOT: st.session_state["w_extra_root"]}))
        extra = st.session_state.get(state.EXTRA_ROOT)
        if extra and not Path(extra).expanduser().is_dir():
            st.error(f"{extra} is not a folder. Give a folder holding run directories (each with config.json "
                     f"and weights.safetensors), or a run directory itself.")
        elif extra and not state._candidate_runs(Path(extra).expanduser().resolve()):
            st.warning(f"No runs in {extra}: a run directory holds config.json and weights.safetensors.")


runs = state.discover_runs()
page = st.navigation(list(PAGES.values()))
current = next(key for key, p in PAGES.items() if p.title == page.title)
runs = read_deep_link(runs, current)
sidebar_run_picker(runs)
write_deep_link(runs, current)
try:
    page.run()
except Exception as err:  # Streamlit's stop/rerun/switch-page signals are BaseExceptions: they pass
    if isinstance(err, CheckpointError):
        st.error(f"**This run cannot be used:** {err}")
    elif isinstance(err, ui.dataset_error_type()):
        ui.dataset_error(err, st.session_state.get(state.RUN, ""))
    else:
        raise
write_deep_link(runs, current)
