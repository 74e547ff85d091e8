"""MetricLens dashboard: `streamlit run app.py`.

The entrypoint is the frame around every page: the sidebar run picker, deep links
(`?page=attention&run=shapes_gap&query=12&compare=shapes_grouping`, read on load and written on
change) and the navigation over dashboard/pages. Known bad input (a damaged run, a moved data
set) ends as a clear st.error, never a traceback. In teaching mode (dashboard/access.py) there is
no Train page and no folder box, and a link opens only runs of the allow-list `catalog.discover_runs`.
"""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st
import torch

from core.checkpoint import CheckpointError
from core.run_dir import CONFIG
from core.importer import NoModelError
from core.plugins import PluginError, load_plugins
from dashboard import catalog, session, ui, webgl_map

# The dashboard runs one image at a time. With several intra-op threads, PyTorch's workers spin while
# other processes hold the cores, and a forward took many times longer on the shared machine
# (benchmarks/notes/dashboard_latency.md); one thread is as fast when idle and stays fast under load.
# Training runs in its own process.
torch.set_num_threads(int(os.environ.get("METRICLENS_TORCH_THREADS", "1")))

# a local file: an emoji or :material: page icon makes the browser fetch the favicon from a CDN
st.set_page_config(page_title="MetricLens", page_icon=str(catalog.REPO / "static" / "favicon.png"), layout="wide")
try:
    TEACHING = session.teaching()
except ValueError as err:  # a mistyped METRICLENS_MODE: say so instead of guessing a mode
    st.error(str(err))
    st.stop()

try:  # the user's heads, explainers and lessons (core/plugins.py), before any page looks one up
    load_plugins(dashboard=True)
except PluginError as err:
    st.error(f"**A plug-in did not load:** {err}")

URL_WRITTEN = "_url_written"  # the query parameters this session wrote last (Back makes the URL differ)
TRAIN_OFF = "_train_link_in_teaching_mode"  # a link asked for the Train page, which teaching mode has not

# Material icons ship with Streamlit's frontend, so they render even where no emoji font is installed
ICONS = {"explore": ":material/scatter_plot:", "retrieval": ":material/image_search:", "attention": ":material/visibility:",
         "cross": ":material/compare_arrows:", "compare": ":material/balance:", "train": ":material/model_training:",
         "learn": ":material/school:"}
TITLES = {key: (title, ICONS[key]) for key, title in ui.PAGE_TITLES.items()}   # the titles messages use too
# the default page lives at "/" (Streamlit ignores its url_path); the others at /retrieval, /attention, ...
PAGES = {key: st.Page(ui.PAGES[key], title=title, icon=icon, default=key == "explore",
                      **({} if key == "explore" else {"url_path": key}))
         for key, (title, icon) in TITLES.items() if not (TEACHING and key == "train")}


def run_label(summary: dict) -> str:
    m = summary.get("metrics") or {}
    if not m:
        status = "unfinished" if not summary.get("problem") else "damaged"
        return f"{summary['name']} · {summary.get('head', '?')} · {status}"
    # R@1 right after the name: the select box cuts long labels at its width, and the method is the part to lose
    what = ("imported embeddings" if summary.get("imported")
            else f"{summary.get('method', '?')}/{summary.get('backbone', '?')}")
    return f"{summary['name']} · R@1 {m.get('recall@1', float('nan')):.3f} · {what}"  # the rest of the metrics show below


def run_key(summary: dict, runs: list[dict]) -> str:
    """Short name in links when it is unique, else the full path."""
    same = [r for r in runs if r["name"] == summary["name"]]
    return summary["name"] if len(same) == 1 else summary["path"]


def read_deep_link(runs: list[dict], current_page: str) -> list[dict]:
    """Once per session: take run, query, comparison run and page from the URL. Runs are looked up by
    name (or listed path) in the discovered runs: a link's text never reaches the file system, except
    outside teaching mode, where an absolute path to a run folder is added as 'another folder' (as if
    typed into the folder box). Returns the (possibly longer) run list."""
    if st.session_state.get("_deep_link_read"):
        return runs
    st.session_state["_deep_link_read"] = True
    params = st.query_params
    st.session_state["_link_params"] = params.to_dict()  # a page's own keys (Explore: sel, colour, size)
    listed = {r["path"] for r in runs}
    if not TEACHING and params.get("run") and params["run"] not in listed:
        linked = Path(params["run"]).expanduser()
        if linked.is_absolute() and (linked / CONFIG).exists() and str(linked.resolve()) not in listed:
            st.session_state[session.EXTRA_ROOT] = str(linked)
            runs = catalog.discover_runs()
    by_key = {run_key(r, runs): r["path"] for r in runs} | {r["path"]: r["path"] for r in runs}
    if params.get("run") in by_key:
        st.session_state[session.RUN] = by_key[params["run"]]
    elif params.get("run"):
        st.session_state["_deep_link_problem"] = (f"run {params['run'][:80]!r} from the link is not one of the "
                                                  f"listed runs")
    if params.get("compare") in by_key:
        st.session_state[session.COMPARE] = by_key[params["compare"]]
    elif params.get("compare"):  # the Compare page says so instead of comparing with another run
        st.session_state["_deep_link_missing_compare"] = params["compare"][:80]
    if (params.get("query") or "").isdigit():
        st.session_state[session.QUERY] = int(params["query"])
    page = params.get("page")
    if page == "train" and TEACHING:  # there is no Train page here: say so where the visitor lands
        st.session_state[TRAIN_OFF] = True
    if page in PAGES and page != current_page:
        st.switch_page(PAGES[page])
    return runs


def follow_history(runs: list[dict]) -> None:
    """Back and Forward: Streamlit pushes a history entry for every URL this app writes, and on Back it reruns
    with the URL the browser went back to. Any difference from the URL written last is the browser's, so take
    its query, run and comparison run (else the session's newer values would be written back over it)."""
    written = st.session_state.get(URL_WRITTEN)
    params = st.query_params.to_dict()
    if written is None or params == written:
        return
    by_key = {run_key(r, runs): r["path"] for r in runs} | {r["path"]: r["path"] for r in runs}
    query = params.get("query") or ""
    if query.isdigit() and query != written.get("query"):
        st.session_state[session.QUERY] = int(query)
        st.session_state[session.UPLOAD] = None
        st.session_state.pop("attention_neighbour", None)
    for name, key in (("run", session.RUN), ("compare", session.COMPARE)):
        if params.get(name) in by_key and params[name] != written.get(name):
            st.session_state[key] = by_key[params[name]]
    # the page's own keys (Explore: sel, colour) follow too: the page reads them as from a link, and the URL
    # written before the page runs keeps them
    own = {k: v for k, v in params.items() if k not in ("page", "run", "query", "compare")}
    st.session_state["_link_params"] = own
    st.session_state["_page_link"] = {params.get("page"): own}
    st.session_state[URL_WRITTEN] = params


def write_deep_link(runs: list[dict], current_page: str) -> None:
    by_path = {r["path"]: run_key(r, runs) for r in runs}
    wanted = {"page": current_page}
    if st.session_state.get(session.RUN) in by_path:
        wanted["run"] = by_path[st.session_state[session.RUN]]
    if st.session_state.get(session.QUERY) is not None and not st.session_state.get(session.UPLOAD):
        wanted["query"] = str(st.session_state[session.QUERY])
    if st.session_state.get(session.COMPARE) in by_path:
        wanted["compare"] = by_path[st.session_state[session.COMPARE]]
    wanted.update((st.session_state.get("_page_link") or {}).get(current_page, {}))  # e.g. Explore's selection
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)  # Streamlit's frontend pushes it as a new history entry
    st.session_state[URL_WRITTEN] = wanted


def sidebar_run_picker(runs: list[dict]) -> None:
    with st.sidebar:
        # the item maps' plotly bundle (webgl_map.item_map) is fetched from the first element the browser draws, while the
        # page computes its map: markdown is drawn at once, an st.html element only after its own code has loaded
        maps = st.session_state.get(ui.CURRENT_PAGE) in ("explore", "compare")
        st.markdown("### :material/travel_explore: MetricLens" + (webgl_map.PRELOAD_MAP_LINK if maps else ""),
                    unsafe_allow_html=True)
        if TEACHING:
            st.caption(":material/school: Teaching mode: read-only, the runs the host chose.")
        if not runs and TEACHING:
            st.warning("No runs found. The host lists runs by starting the server with METRICLENS_RUNS=folder.")
        elif not runs:
            st.warning("No runs found. Train one on the **Train** page, or give a folder of runs below.")
        else:
            paths = [r["path"] for r in runs]
            if st.session_state.get(session.RUN) not in paths:
                if st.session_state.get(session.RUN):  # say so rather than silently open another run
                    st.session_state["_deep_link_problem"] = (
                        f"Run {Path(st.session_state[session.RUN]).name!r} is not in the run list (moved, deleted or "
                        f"in a folder this session does not list); opened another run instead.")
                complete = [r["path"] for r in runs if r["complete"]]
                opening = [p for p in complete if Path(p).name == catalog.OPENING_RUN]
                st.session_state[session.RUN] = (opening or complete or paths)[0]
            st.session_state["w_run"] = st.session_state[session.RUN]
            labels = {r["path"]: run_label(r) for r in runs}

            def picked():
                st.session_state[session.RUN] = st.session_state["w_run"]
                st.session_state[session.UPLOAD] = None
            st.selectbox("Run", paths, key="w_run", format_func=labels.get, on_change=picked,
                         help="Runs in checkpoints/ and in $METRICLENS_RUNS" + ("" if TEACHING else " and in the folder below"))
            summary = next(r for r in runs if r["path"] == st.session_state[session.RUN])
            metrics = summary.get("metrics") or {}
            if metrics:
                st.markdown(" · ".join(f"{name} **{metrics[key]:.3f}**" for name, key in
                                       [("R@1", "recall@1"), ("MAP@R", "map_at_r"), ("NMI", "nmi")] if key in metrics))
            if summary.get("problem"):
                st.error(summary["problem"])
            where = summary["name"] if TEACHING else summary["path"]  # a visitor needs no server paths
            st.caption(f"`{where}`" + (f" — {summary['description']}" if summary.get("description") else ""))
        if st.session_state.get("_deep_link_problem"):
            st.warning(st.session_state.pop("_deep_link_problem"))
        if TEACHING:
            return
        st.session_state["w_extra_root"] = st.session_state.get(session.EXTRA_ROOT) or ""
        st.text_input("Another folder of runs", key="w_extra_root", placeholder="/path/to/runs",
                      on_change=lambda: st.session_state.update({session.EXTRA_ROOT: st.session_state["w_extra_root"]}))
        extra = st.session_state.get(session.EXTRA_ROOT)
        if extra and not Path(extra).expanduser().is_dir():
            st.error(f"{extra} is not a folder. Give a folder holding run directories (each with config.json "
                     f"and weights.safetensors), or a run directory itself.")
        elif extra and not catalog.candidate_runs(Path(extra).expanduser().resolve()):
            st.warning(f"No runs in {extra}: a run directory holds config.json and weights.safetensors.")


runs = catalog.discover_runs()
page = st.navigation(list(PAGES.values()))
current = next(key for key, p in PAGES.items() if p.title == page.title)
st.session_state[ui.CURRENT_PAGE] = current
runs = read_deep_link(runs, current)
follow_history(runs)
sidebar_run_picker(runs)
write_deep_link(runs, current)
st.html(webgl_map.MAP_STILL_CSS)
if st.session_state.pop(TRAIN_OFF, False):
    st.info(":material/school: **Training is turned off in teaching mode**, so the link's Train page opened "
            "Explore instead. This server shows the runs its host chose, read-only; to train, run MetricLens on your "
            "own machine (`make run`) or ask the host to train and share the run.")
try:
    page.run()
except Exception as err:  # Streamlit's stop/rerun/switch-page signals are BaseExceptions: they pass
    if isinstance(err, NoModelError):  # a page reached for the model of an imported run
        st.info(f":material/info: {err}")
    elif isinstance(err, CheckpointError):
        st.error(f"**This run cannot be used:** {err}")
    elif isinstance(err, ui.dataset_error_type()):
        ui.dataset_error(err, st.session_state.get(session.RUN, ""))
    else:
        raise
write_deep_link(runs, current)
