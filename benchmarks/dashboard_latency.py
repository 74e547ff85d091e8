"""Dashboard latency in a real browser: `python -m benchmarks.dashboard_latency [--repeats 3]`.

- cold start: `streamlit run app.py` launched -> the Explore map drawn in headless Chromium
  (a fresh server process each time, so imports, model load and artifacts are all paid); also
  until the app is idle, after the page's prefetch-after-paint (retrieval table, data set);
- interaction: a user action -> its result drawn (Streamlit idle again and every image loaded):
  * explore_lasso: releasing a lasso on the map -> the selection's image grid and metrics;
  * retrieval_query: a new query item -> its neighbours;
  * attention_query: a new query item -> every map and the Captum attribution.
  Each interaction uses a new query, so nothing is served from a cache it filled itself.
- scale (`--sizes 1000,120000,1000000`, issue 27): per size, clustered 128-d embeddings of up to 10,000
  classes with labels and two metadata columns (benchmarks/scale_data.py) imported with `python -m core import`
  (its wall and CPU time and peak RSS measured, `--umap`: also `python -m core umap`), the data functions the
  dashboard calls timed before and after (benchmarks/scale_core.py; results in dashboard_scale.md), then, unless
  `--core-only`, on a running server:
  * map_first_paint: opening the run (its first visit: artifacts, fields, PCA map) -> the map drawn;
  * map_until_idle: the same visit until the app is idle (its prefetch: the faiss index, the data set, the
    all-vs-all retrieval table for the selection metrics, the thumbnail sheets started). Past 20,000 items
    the table is scored once per run by a low-priority process and kept in .cache/retrieval/; a kept table
    is read, not scored again, unless `--fresh-tables` deletes the synthetic runs' tables first (then this
    measure includes the scoring, as it did before tables were kept);
  * lasso_to_grid: releasing a lasso -> the selection's grid and metrics drawn;
  * click_to_neighbours: a click on a point -> its nearest neighbours listed, ringed and drawn;
  * map_reload_paint (informational): the run's page loaded again in the same browser tab -> the map drawn:
    the browser has Streamlit's and plotly's code cached and the server has the run's artifacts, so this is
    the map itself (figure, transfer, WebGL plot) without the first load of plotly.js, which map_first_paint
    (a fresh browser profile) pays.

- session (`--session --sizes 1000000`, issue 27): one user's whole session on the largest size, step after step
  in one tab without waiting for the server's work after paint: open, click at once, more clicks, lasso, search,
  recolour, Retrieval, Compare with a second run of the same items (other embeddings, imported once), each against
  its target, and the server's peak RSS (its process tree, from /proc) with one run open and over the session.
  Writes `--name` (e.g. dashboard_session_1m).

Runs on the shipped runs (checkpoints/, the first two with the same test data; tiny fresh runs when
there are none). Medians are reported with every sample, the machine and its load average: on a
shared 2-core machine the load of other jobs moves these numbers a lot.
Writes benchmarks/results/dashboard_latency.json and .md. Targets: cold start <= 10 s, interaction <= 1 s.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from benchmarks.common import require_chromium
from tests.dashboard_testing import dashboard_server
from core import run_dir as rd
from tests.dashboard_testing import CHROMIUM, LAUNCH_ARGS, PLOT_AREA, REPO, demo_runs, images_loaded, lasso, settle

RESULTS = REPO / "benchmarks" / "results"
TARGETS = {"cold_start_s": 10.0, "interaction_s": 1.0, "map_first_paint": 3.0, "lasso_to_grid": 1.0,
           "click_to_neighbours": 0.5, "map_until_idle": None, "map_reload_paint": None}


def cold_start(browser, env: dict, run: str) -> tuple[float, float]:
    """(server launch -> map drawn, server launch -> app idle, i.e. its prefetch after paint done)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    start = time.perf_counter()
    try:
        with dashboard_server(env) as (base, _):
            page.goto(base + "/?" + urllib.parse.urlencode({"run": run}))
            page.wait_for_function(MAP_DRAWN, polling="raf", timeout=120_000)   # plot area and WebGL points
            drawn = time.perf_counter() - start
            page.wait_for_function(IDLE, polling="raf", timeout=120_000)
            return drawn, time.perf_counter() - start
    finally:
        page.close()


# Done = the result's text is on the page, Streamlit is idle again and every image has loaded. Checked
# on every animation frame: Playwright's locator waits back off to 500 ms polls, which made the
# first measurements bimodal (0.5 s or 1.0 s) from the polling alone.
DONE = """(marker) => {
  const app = document.querySelector("[data-testid='stApp']");
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (!document.body.textContent.includes(marker)) return false;  // textContent: no forced layout
  return Array.from(document.querySelectorAll('[data-testid=stImage] img')).every(i => i.complete && i.naturalWidth > 0);
}"""


# plot area and WebGL points of the first map: Explore's own renderer (dashboard/map_component.js), or Streamlit's chart
MAP_DRAWN = ("() => !!(document.querySelector('.metriclens-map-plot .nsewdrag, .stPlotlyChart .nsewdrag') && "
             "document.querySelector('.metriclens-map-plot canvas, .stPlotlyChart canvas'))")
IDLE = "() => !!document.querySelector(\"[data-testid='stApp'][data-test-script-state='notRunning']\")"


def timed(page, action, marker: str) -> float:
    start = time.perf_counter()
    action()
    page.wait_for_function(DONE, arg=marker, polling="raf", timeout=60_000)
    return time.perf_counter() - start


def set_query(page, value: int) -> None:
    box = page.locator("[data-testid='stNumberInput'] input").first  # the query picker is the first one
    box.fill(str(value))
    box.press("Enter")


@contextlib.contextmanager
def measured_page(browser):
    """A new page; on a failure its screenshot goes to test-output/ and the URL is printed."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        yield page
    except Exception:
        shot = REPO / "test-output" / "dashboard_latency_failure.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        print(f"failed at {page.url}; screenshot in {shot}", file=sys.stderr)
        raise
    finally:
        page.close()


def clear_selection(page) -> None:
    """Explore keeps a selection until it is cleared: clear it, so the next gesture starts from none."""
    clear = page.get_by_role("button", name="Clear selection")
    if clear.count():
        clear.click()
        page.get_by_text("or click one", exact=False).wait_for(timeout=120_000)
    settle(page)


CENTRES = [(0.35, 0.4), (0.6, 0.55), (0.45, 0.65), (0.55, 0.35), (0.4, 0.5)]


def lasso_samples(page, repeats: int, radius_share: float) -> list[float]:
    """Releasing a lasso on Explore's map -> the selection's image grid and metrics drawn, `repeats` times
    (the drawing of the lasso is the user's gesture; latency runs from releasing the button)."""
    out = []
    for i in range(repeats):
        clear_selection(page)
        page.locator(PLOT_AREA).first.scroll_into_view_if_needed()
        lasso(page, radius_share=radius_share, centre=CENTRES[i % len(CENTRES)], release=False)
        out.append(timed(page, page.mouse.up, "Selection:"))
    return out


def interactions(browser, base: str, run: str, repeats: int, first_query: int) -> dict[str, list[float]]:
    link = lambda q: "?" + urllib.parse.urlencode({"run": run, "query": q})  # noqa: E731
    out: dict[str, list[float]] = {"retrieval_query": [], "attention_query": []}
    with measured_page(browser) as page:
        page.goto(base + "/" + link(first_query))
        page.locator(PLOT_AREA).first.wait_for(timeout=120_000)
        settle(page, 120_000)
        out = {"explore_lasso": lasso_samples(page, repeats, 0.22), **out}
        for name, path, marker in [("retrieval_query", "/retrieval", "#{q} · "), ("attention_query", "/attention", "query #{q} · ")]:
            page.goto(base + path + link(first_query))
            settle(page, 120_000)
            images_loaded(page)
            for i in range(repeats):
                q = first_query + 1 + i
                out[name].append(timed(page, lambda: set_query(page, q), marker.format(q=q)))
    return out


# ---- scale: SOP-sized synthetic runs -------------------------------------------------------------------
def imported_run(n: int, fresh: bool = False) -> tuple[Path, dict | None]:
    """The clustered run of `n` items, imported (and measured) when missing or `fresh`: (run, import record)."""
    from benchmarks import scale_data

    run = REPO / "benchmarks" / "runs" / "latency_scale" / scale_data.input_name(n)
    if (run / rd.METRICS).exists() and not fresh:
        return run, None
    embeddings, labels = scale_data.clustered_inputs(scale_data.INPUTS / scale_data.input_name(n), n)
    record = scale_data.measured_import(embeddings, labels, run)
    if record["returncode"] != 0:
        raise RuntimeError(f"import of {n} items failed:\n{record['log_tail']}")
    return run, record


def imported_copy(n: int, fresh: bool = False) -> Path:
    """A second run of the same `n` items with other embeddings (benchmarks/scale_data.perturbed_inputs), for
    Compare in the session; imported once like `imported_run` (its import is not measured)."""
    from benchmarks import scale_data

    run = REPO / "benchmarks" / "runs" / "latency_scale" / f"{scale_data.input_name(n)}_b"
    if (run / rd.METRICS).exists() and not fresh:
        return run
    source = scale_data.INPUTS / scale_data.input_name(n)
    scale_data.clustered_inputs(source, n)
    embeddings, labels = scale_data.perturbed_inputs(source, scale_data.INPUTS / run.name)
    record = scale_data.measured_import(embeddings, labels, run)
    if record["returncode"] != 0:
        raise RuntimeError(f"import of the copy of {n} items failed:\n{record['log_tail']}")
    return run


def core_measures(sizes: list[int], args, command: str) -> list[str]:
    """Import (measured), UMAP (with --umap) and the data functions per size -> dashboard_scale.json/.md. Runs
    of other sizes measured by earlier calls keep their rows (each import and UMAP row carries its date)."""
    from benchmarks import scale_core, scale_data

    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": scale_core.machine(), "command": command,
               "imports": [], "umap": [], "functions": {}}
    saved = RESULTS / "dashboard_scale.json"
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    measured = {scale_data.input_name(n) for n in sizes}
    for part in ("imports", "umap"):
        results[part] = [r for r in previous.get(part, []) if r["run"] not in measured]
    results["functions"] = {run: rows for run, rows in previous.get("functions", {}).items() if run not in measured}
    kept = {r["run"]: r for r in previous.get("imports", [])}
    kept_umap = {r["run"]: r for r in previous.get("umap", [])}
    runs = []
    for n in sizes:
        run, record = imported_run(n, args.fresh_imports)
        imported_now = record is not None
        if imported_now:
            record["date"] = time.strftime("%Y-%m-%d %H:%M")
        record = record or kept.get(run.name)   # a run imported by an earlier call keeps that call's figures
        if record:
            metrics = json.loads((run / rd.METRICS).read_text())
            results["imports"].append({**record, "run": run.name, "items": n, "metrics": metrics,
                                       "classes": metrics["imported"]["classes"],
                                       "load_average": record.get("load_average")})
        if args.umap:
            results["umap"].append({**scale_data.measured_umap(run), "run": run.name,
                                    "date": time.strftime("%Y-%m-%d %H:%M")})
        elif not imported_now and run.name in kept_umap:   # measured by an earlier call, on the same import
            results["umap"].append(kept_umap[run.name])
        results["functions"][run.name] = scale_core.function_timings(run, before=not args.skip_before)
        runs.append(str(run))
        results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        scale_core.write(results)   # after each size: a long call that fails later keeps what it measured
    return runs


# the points farthest from their nearest neighbour among a few hundred on screen, loneliest first: a click there hits
# one alone. `rank` picks one of them (each click of a session a new item, so no answer comes from a cache it filled)
LONELY_POINT = """(rank) => {
  const gd = Array.from(document.querySelectorAll('.js-plotly-plot')).find(g => g.layout && g.layout.meta === 'metriclens-map');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  const all = gd._fullData.flatMap(t => Array.from(t.x, (x, i) => [box.left + xa._offset + xa.l2p(x), box.top + ya._offset + ya.l2p(t.y[i]), t.customdata[i]]));
  const found = [];
  for (let k = 0; k < Math.min(300, all.length); k++) {
    const [px, py, id] = all[Math.floor(k * all.length / Math.min(300, all.length))];
    let gap = Infinity;
    for (const [qx, qy] of all) { const d = Math.hypot(qx - px, qy - py); if (d > 0 && d < gap) gap = d; }
    found.push({x: px, y: py, id: id, gap: gap});
  }
  found.sort((a, b) => b.gap - a.gap);
  return found[Math.min(rank || 0, found.length - 1)];
}"""


def warm_server(browser, base: str) -> float:
    """Open the shipped opening run on Explore (a fresh server's first page imports PyTorch, pytorch-metric-learning,
    SciPy and the pages: seconds, once per server process), so a big run's first visit measures that visit alone.
    Returns the seconds until that map was drawn."""
    from tests.dashboard_testing import shipped_runs
    shipped = shipped_runs()
    with measured_page(browser) as page:
        start = time.perf_counter()
        page.goto(base + "/" + ("?" + urllib.parse.urlencode({"run": str(shipped[0])}) if shipped else ""))
        page.wait_for_function(MAP_DRAWN, polling="raf", timeout=120_000)
        drawn = time.perf_counter() - start
        settle(page, 120_000)
    return drawn


def scale_measures(browser, base: str, run: str, repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"map_first_paint": [], "map_until_idle": [], "lasso_to_grid": [],
                                   "click_to_neighbours": [], "map_reload_paint": []}
    with measured_page(browser) as page:
        start = time.perf_counter()
        page.goto(base + "/?" + urllib.parse.urlencode({"run": run}))
        page.wait_for_function(MAP_DRAWN, polling="raf", timeout=120_000)
        out["map_first_paint"].append(time.perf_counter() - start)
        page.wait_for_function(DONE, arg="or click one", polling="raf", timeout=600_000)
        out["map_until_idle"].append(time.perf_counter() - start)
        settle(page, 600_000)
        page.wait_for_timeout(1000)  # the page's click script attaches to the chart
        out["lasso_to_grid"] = lasso_samples(page, repeats, 0.12)
        for i in range(repeats):
            clear_selection(page)
            page.wait_for_timeout(800)
            page.locator(PLOT_AREA).first.scroll_into_view_if_needed()   # Clear may have scrolled it away
            point = page.evaluate(LONELY_POINT, i)
            page.mouse.move(point["x"], point["y"])
            page.wait_for_timeout(300)
            out["click_to_neighbours"].append(timed(page, lambda: page.mouse.click(point["x"], point["y"]),
                                                    "Nearest neighbours of #"))
        for _ in range(repeats):
            start = time.perf_counter()
            page.goto(base + "/?" + urllib.parse.urlencode({"run": run}))
            page.wait_for_function(MAP_DRAWN, polling="raf", timeout=120_000)
            out["map_reload_paint"].append(time.perf_counter() - start)
            settle(page, 600_000)
    return out


# ---- a whole session on one big run (issue 27: "measure whole sessions, not single steps on an idle server") ----
SESSION_TARGETS = {"open_first_paint": 5.0, "first_click_to_neighbours": 1.0, "click_to_neighbours": 1.0,
                   "lasso_to_grid": 2.0, "search_to_selection": 1.0, "recolour": 2.0, "retrieval_open": 5.0,
                   "retrieval_query": 1.0, "compare_open": 5.0, "compare_lasso": 2.0}
SEARCHES = ["class_12 site_b", "class_45", "class_7 b3", "class_89 site_c", "class_3"]   # classes every size has
RECOLOURS = ["MAP@R", "site", "R-precision", "class", "batch"]
# the map drawn and its click handler attached (map_bridge.js): the first moment a user's click is taken
CLICKABLE = ("() => { const gd = Array.from(document.querySelectorAll('.js-plotly-plot')).find(g => g.layout && "
             "g.layout.meta === 'metriclens-map'); return !!(gd && gd.__metriclensClick && "
             "document.querySelector('.metriclens-map-plot canvas')); }")
# the map's figure replaced (a new datarevision: explore.figure_selection), drawn, and the app idle
REDRAWN = """(rev) => {
  const app = document.querySelector("[data-testid='stApp']");
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  const gd = Array.from(document.querySelectorAll('.js-plotly-plot')).find(g => g.layout && g.layout.meta === 'metriclens-map');
  return !!(gd && gd.layout.datarevision !== rev && gd._fullData && document.querySelector('.metriclens-map-plot canvas'));
}"""
MAP_REVISION = ("() => { const gd = Array.from(document.querySelectorAll('.js-plotly-plot')).find(g => g.layout && "
                "g.layout.meta === 'metriclens-map'); return gd ? gd.layout.datarevision : null; }")


SESSION_NOTE = (
    "A whole session (`--session`, issue 27): one browser tab, each step right after the one before, without waiting "
    "for the server's work after paint. The run: clustered 128-d embeddings imported with `python -m core import` "
    "(benchmarks/scale_data.py, no images); Compare's run B: the same items with other embeddings (each row moved by "
    "noise, `scale_data.perturbed_inputs`), imported the same way. open_first_paint: Explore's first visit of the run "
    "until its map is drawn; first_click_to_neighbours: a click on a point as soon as the map takes clicks, until its "
    "nearest neighbours are listed, ringed and drawn; click_to_neighbours: later clicks (each on another item); "
    "lasso_to_grid: releasing a lasso until the selection's metrics and table are drawn; search_to_selection: Enter in "
    "'Find and select' until the matches are the selection; recolour: a new 'Colour by' until the map's new figure is "
    "drawn; retrieval_open: the Retrieval page's link opened in the same tab until the query's neighbours are listed; "
    "retrieval_query: a new query number until its neighbours are listed; compare_open: Compare's link with run B "
    "until both maps and the table of disagreements are drawn; compare_lasso: a lasso on A's map until the selection "
    "is shown on both. Each time is measured until Streamlit is idle again. server_first_page (informational): the "
    "fresh server's first page, the shipped opening run on Explore, opened first so that the big run's first visit "
    "does not include the server's one-time imports (PyTorch, pytorch-metric-learning, SciPy).")


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc: psutil is not a dependency)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += parents.get(tree[-1], [])
    return tree


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """The server's resident memory, its process and every child summed, sampled every `every` seconds in a
    thread; `mark(name)` records the peak so far under a name (e.g. before a second run is opened)."""

    def __init__(self, pid: int, every: float = 0.2):
        import threading
        self.pid, self.every, self.peak, self.marks = pid, every, 0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss_bytes(p) for p in process_tree(self.pid)))
            self._stop.wait(self.every)

    def mark(self, name: str) -> None:
        self.marks[name] = round(self.peak / 2**30, 3)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.mark("session")


def recoloured(page, option: str) -> float:
    """Choose `option` in Explore's "Colour by" -> the map's new figure drawn and the app idle."""
    page.locator("[data-testid='stSelectbox']").filter(has_text="Colour by").click()
    choice = page.get_by_role("option", name=option, exact=True)
    choice.wait_for(timeout=30_000)
    revision = page.evaluate(MAP_REVISION)
    start = time.perf_counter()
    choice.click()
    page.wait_for_function(REDRAWN, arg=revision, polling="raf", timeout=120_000)
    return time.perf_counter() - start


def session_measures(browser, base: str, run: str, other: str, server_pid: int, repeats: int) -> tuple[dict, dict]:
    """One user's session on `run`, step after step in one tab, without waiting for the server's work after
    paint: open Explore (first visit) -> click a point as soon as the map takes clicks -> more clicks -> lasso ->
    search -> recolour -> Retrieval (opened, then new queries) -> Compare with `other` (the same items, other
    embeddings; opened, then a lasso). Returns (seconds per step, peak server RSS in GB: after Explore and
    Retrieval with one run open, and over the whole session with Compare's two)."""
    out = {name: [] for name in SESSION_TARGETS}
    with PeakRss(server_pid) as rss, measured_page(browser) as page:
        start = time.perf_counter()
        page.goto(base + "/?" + urllib.parse.urlencode({"run": run}))
        page.wait_for_function(MAP_DRAWN, polling="raf", timeout=120_000)
        out["open_first_paint"].append(time.perf_counter() - start)
        page.wait_for_function(CLICKABLE, polling="raf", timeout=120_000)
        point = page.evaluate(LONELY_POINT, 0)
        out["first_click_to_neighbours"].append(timed(page, lambda: page.mouse.click(point["x"], point["y"]),
                                                      "Nearest neighbours of #"))
        for i in range(repeats):
            clear_selection(page)
            page.wait_for_function(CLICKABLE, polling="raf", timeout=120_000)
            page.locator(PLOT_AREA).first.scroll_into_view_if_needed()
            point = page.evaluate(LONELY_POINT, i + 1)
            page.mouse.move(point["x"], point["y"])
            out["click_to_neighbours"].append(timed(page, lambda: page.mouse.click(point["x"], point["y"]),
                                                    "Nearest neighbours of #"))
        out["lasso_to_grid"] = lasso_samples(page, repeats, 0.12)
        for text in SEARCHES[:repeats]:
            clear_selection(page)
            box = page.get_by_placeholder("e.g. red diamond, #12, a file name")
            box.fill(text)
            out["search_to_selection"].append(timed(page, lambda: box.press("Enter"), "Selection:"))
        clear_selection(page)
        for option in RECOLOURS[:repeats]:
            out["recolour"].append(recoloured(page, option))
            settle(page)
        query = 1000
        start = time.perf_counter()
        page.goto(base + "/retrieval?" + urllib.parse.urlencode({"run": run, "query": query}))
        page.wait_for_function(DONE, arg=f"#{query} · ", polling="raf", timeout=120_000)
        out["retrieval_open"].append(time.perf_counter() - start)
        settle(page)
        for i in range(repeats):
            q = query + 1 + i
            out["retrieval_query"].append(timed(page, lambda: set_query(page, q), f"#{q} · "))
        rss.mark("one_run_open")
        start = time.perf_counter()
        page.goto(base + "/compare?" + urllib.parse.urlencode({"run": run, "compare": other}))
        page.locator(PLOT_AREA).nth(1).wait_for(timeout=300_000)
        page.wait_for_function(DONE, arg="Queries where they disagree most", polling="raf", timeout=300_000)
        out["compare_open"].append(time.perf_counter() - start)
        settle(page)
        page.wait_for_timeout(900)   # the bridge attaches to the drawn charts
        for i in range(repeats):
            if page.get_by_role("button", name="Clear selection").count():
                page.get_by_role("button", name="Clear selection").click()
                page.get_by_text("Lasso or box-select items", exact=False).wait_for(timeout=120_000)
                settle(page)
            page.locator(PLOT_AREA).first.evaluate("e => e.scrollIntoView({block: 'center'})")   # all of it on screen
            lasso(page, chart_index=0, radius_share=0.12, centre=CENTRES[i % len(CENTRES)], release=False)
            out["compare_lasso"].append(timed(page, page.mouse.up, "Selection:"))
    return out, rss.marks


def _kept_table(run: str) -> bool:
    from dashboard.artifacts import TABLE_IN_PROCESS_MAX
    from dashboard.background import retrieval_file
    import numpy as np
    big = len(np.load(Path(run) / rd.ARTIFACTS / rd.LABELS, mmap_mode="r")) > TABLE_IN_PROCESS_MAX
    return big and retrieval_file(run).exists()


def machine() -> dict:
    import streamlit
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "streamlit": streamlit.__version__,
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


def write(results: dict, name: str = "dashboard_latency") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = ["# Dashboard latency", "",
             f"- date: {results['date']}", f"- command: `{results['command']}`",
             f"- machine: {m['platform']}, {m['cpus']} CPUs ({m['processor']}), Python {m['python']}, "
             f"Streamlit {m['streamlit']}, {m.get('browser', 'Chromium')}",
             f"- load average (1, 5, 15 min) at start {m['load_average_start']}, at end {m.get('load_average_end')}",
             f"- runs: {', '.join(Path(r).name for r in results['runs'])}",
             *([f"- retrieval tables read from .cache/retrieval/ (scored at an earlier visit, not in map_until_idle): "
                f"{', '.join(m.get('kept_retrieval_tables') or []) or 'none'}"] if "kept_retrieval_tables" in m else []),
             *([f"- server peak RSS (GB; the server process and its children, sampled every 0.2 s): "
                f"{m['server_peak_rss_gb'].get('one_run_open')} with one run open (Explore, Retrieval; target 4), "
                f"{m['server_peak_rss_gb'].get('session')} over the whole session (Compare holds both runs)"]
               if m.get("server_peak_rss_gb") else []), "",
             "| measure | run | median (s) | samples (s) | target (s) | met |", "|---|---|---|---|---|---|"]
    for row in results["measures"]:
        target = "—" if row["target_s"] is None else f"{row['target_s']:g}"
        met = "—" if row["met"] is None else ("yes" if row["met"] else "no")
        lines.append(f"| {row['measure']} | {row['run']} | {row['median_s']:.2f} | "
                     f"{', '.join(f'{s:.2f}' for s in row['samples_s'])} | {target} | {met} |")
    if any(row["measure"] == "first_click_to_neighbours" for row in results["measures"]):
        lines += ["", SESSION_NOTE]
        (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
        return
    lines += ["", "Cold start: server launch to the Explore map drawn. Interactions: action to result drawn "
              "(Streamlit idle, every image loaded); each uses a new query. See the module docstring.", "",
              "Scale rows (`clustered_*`): clustered embeddings of up to 10,000 classes imported with `python -m core "
              "import` (benchmarks/scale_data.py; no images), on a running server. "
              "map_first_paint: opening the run, first visit, until the map is drawn (WebGL, at most 10,000 "
              "points, thinned where they overlap); map_until_idle: until the page's prefetch after paint is done (the "
              "faiss index, the data set, the all-vs-all retrieval table behind the selection metrics: read when kept "
              "from an earlier visit, see above); lasso_to_grid: "
              "releasing a lasso until the selection's images and metrics are drawn; click_to_neighbours: a "
              "click on a point until its 8 nearest neighbours are listed, ringed on the map and drawn; map_reload_paint: "
              "the run's page loaded again in the same tab (Streamlit's and plotly's code in the browser's cache, the "
              "run's artifacts in the server's) until the map is drawn. server_first_page (informational, with "
              "--skip-shipped): a fresh server's first page, the shipped opening run on Explore, opened before the "
              "scale runs so that their first visit does not include the server's one-time imports of PyTorch, "
              "pytorch-metric-learning and SciPy."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="samples per measure (median reported)")
    parser.add_argument("--query", type=int, default=40, help="first query item of the interaction runs")
    parser.add_argument("--runs", help="comma-separated run directories (default: the first two shipped runs "
                                       "on the same data, or tiny fresh ones when there are none)")
    parser.add_argument("--sizes", default="1000,120000",
                        help="comma-separated item counts of clustered imported runs ('' for none), e.g. "
                             "1000,120000,1000000; imported once into benchmarks/runs/latency_scale/ (git-ignored)")
    parser.add_argument("--fresh-imports", action="store_true", help="import the runs again (and measure it)")
    parser.add_argument("--core-only", action="store_true", help="import, UMAP and data functions only, no browser")
    parser.add_argument("--umap", action="store_true", help="also measure `python -m core umap` per size (minutes)")
    parser.add_argument("--skip-before", action="store_true",
                        help="time only core's functions, not the per-item versions they replace")
    parser.add_argument("--fresh-tables", action="store_true",
                        help="delete the synthetic runs' kept retrieval tables first, so map_until_idle includes "
                             "scoring every item against all others (minutes at 120k on a loaded 2-core machine)")
    parser.add_argument("--name", default="dashboard_latency", help="results file name (e.g. dashboard_latency_1m)")
    parser.add_argument("--session", action="store_true",
                        help="a whole session on the largest of --sizes instead of the single steps (open, click at "
                             "once, clicks, lasso, search, recolour, Retrieval, Compare with a second run of the same "
                             "items, imported once), with the server's peak RSS; implies --skip-shipped")
    parser.add_argument("--skip-shipped", action="store_true", help="only the synthetic runs (no cold start, "
                                                                      "no Retrieval/Attention measures)")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.dashboard_latency " + " ".join(argv if argv is not None else sys.argv[1:])
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    if args.session:
        return session_main(max(sizes), args, command)
    synthetic = core_measures(sizes, args, command) if sizes else []
    if args.core_only:
        print(f"wrote {RESULTS / 'dashboard_scale.json'} and .md")
        return 0
    if not require_chromium():
        return 2
    from playwright.sync_api import sync_playwright

    info = machine()
    if args.runs:
        runs = [str(Path(r).resolve()) for r in args.runs.split(",")]
    else:
        runs = [str(r.resolve()) for r in demo_runs(Path(tempfile.mkdtemp(prefix="latency_runs_")), 2)]
    if args.fresh_tables:
        from dashboard.background import retrieval_file
        for run in synthetic:
            retrieval_file(run).unlink(missing_ok=True)
    info["kept_retrieval_tables"] = [Path(run).name for run in synthetic if _kept_table(run)]
    env = dict(os.environ, METRICLENS_AUTO_UMAP="0",
               METRICLENS_RUNS=os.pathsep.join(sorted({str(Path(r).parent) for r in runs + synthetic})))
    measures = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        info["browser"] = f"Chromium {browser.version} (headless, software GL)"
        if not args.skip_shipped:
            samples = [cold_start(browser, env, runs[0]) for _ in range(args.repeats)]
            measures.append(("cold_start", runs[0], [s[0] for s in samples], TARGETS["cold_start_s"]))
            measures.append(("cold_start_until_idle", runs[0], [s[1] for s in samples], None))  # informational
        with dashboard_server(env) as (base, _):
            for run in [] if args.skip_shipped else runs:
                for name, values in interactions(browser, base, run, args.repeats, args.query).items():
                    measures.append((name, run, values, TARGETS["interaction_s"]))
            if synthetic and args.skip_shipped:   # else the shipped runs' interactions warmed the server
                measures.append(("server_first_page", "shipped opening run", [warm_server(browser, base)], None))
            for run in synthetic:
                for name, values in scale_measures(browser, base, run, args.repeats).items():
                    measures.append((name, run, values, TARGETS[name]))
        browser.close()
    finish(info, runs + synthetic, command, measures, args.name)
    return 0


def finish(info: dict, runs: list[str], command: str, measures: list[tuple], name: str) -> None:
    """Write and print the measures [(measure, run, samples, target)]."""
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": info, "runs": runs, "command": command,
               "measures": [{"measure": measure, "run": Path(run).name, "samples_s": [round(s, 3) for s in values],
                             "median_s": round(statistics.median(values), 3), "target_s": target,
                             "met": None if target is None else statistics.median(values) <= target}
                            for measure, run, values, target in measures]}
    write(results, name)
    for row in results["measures"]:
        print(f"{row['measure']:>26s} {row['run']:>20s}  median {row['median_s']:.2f} s  {row['samples_s']}")
    print(f"wrote {RESULTS / name}.json and .md")


def session_main(n: int, args, command: str) -> int:
    """--session: the run of `n` items and a copy of the same items (both imported once), one session."""
    if not require_chromium():
        return 2
    from playwright.sync_api import sync_playwright

    run, other = str(imported_run(n)[0]), str(imported_copy(n))
    info = machine()
    env = dict(os.environ, METRICLENS_AUTO_UMAP="0", METRICLENS_RUNS=str(Path(run).parent))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        info["browser"] = f"Chromium {browser.version} (headless, software GL)"
        with dashboard_server(env) as (base, server):
            warm = warm_server(browser, base)
            steps, info["server_peak_rss_gb"] = session_measures(browser, base, run, other, server.pid, args.repeats)
        browser.close()
    measures = [("server_first_page", "shipped opening run", [warm], None)]
    measures += [(name, run, values, SESSION_TARGETS[name]) for name, values in steps.items()]
    finish(info, [run, other], command, measures, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
