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


# the point farthest from its nearest neighbour among a few hundred on screen: a click there hits it alone
LONELY_POINT = """() => {
  const gd = Array.from(document.querySelectorAll('.js-plotly-plot')).find(g => g.layout && g.layout.meta === 'metriclens-map');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  const all = gd._fullData.flatMap(t => Array.from(t.x, (x, i) => [box.left + xa._offset + xa.l2p(x), box.top + ya._offset + ya.l2p(t.y[i]), t.customdata[i]]));
  let best = null;
  for (let k = 0; k < Math.min(300, all.length); k++) {
    const [px, py, id] = all[Math.floor(k * all.length / Math.min(300, all.length))];
    let gap = Infinity;
    for (const [qx, qy] of all) { const d = Math.hypot(qx - px, qy - py); if (d > 0 && d < gap) gap = d; }
    if (!best || gap > best.gap) best = {x: px, y: py, id: id, gap: gap};
  }
  return best;
}"""


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
            point = page.evaluate(LONELY_POINT)
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
             f"- retrieval tables read from .cache/retrieval/ (scored at an earlier visit, not in map_until_idle): "
             f"{', '.join(m.get('kept_retrieval_tables') or []) or 'none'}", "",
             "| measure | run | median (s) | samples (s) | target (s) | met |", "|---|---|---|---|---|---|"]
    for row in results["measures"]:
        target = "—" if row["target_s"] is None else f"{row['target_s']:g}"
        met = "—" if row["met"] is None else ("yes" if row["met"] else "no")
        lines.append(f"| {row['measure']} | {row['run']} | {row['median_s']:.2f} | "
                     f"{', '.join(f'{s:.2f}' for s in row['samples_s'])} | {target} | {met} |")
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
              "run's artifacts in the server's) until the map is drawn."]
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
    parser.add_argument("--skip-shipped", action="store_true", help="only the synthetic runs (no cold start, "
                                                                      "no Retrieval/Attention measures)")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.dashboard_latency " + " ".join(argv if argv is not None else sys.argv[1:])
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
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
            for run in synthetic:
                for name, values in scale_measures(browser, base, run, args.repeats).items():
                    measures.append((name, run, values, TARGETS[name]))
        browser.close()
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": info, "runs": runs + synthetic,
               "command": command,
               "measures": [{"measure": name, "run": Path(run).name, "samples_s": [round(s, 3) for s in values],
                             "median_s": round(statistics.median(values), 3), "target_s": target,
                             "met": None if target is None else statistics.median(values) <= target}
                            for name, run, values, target in measures]}
    write(results, args.name)
    for row in results["measures"]:
        print(f"{row['measure']:>16s} {row['run']:>20s}  median {row['median_s']:.2f} s  {row['samples_s']}")
    print(f"wrote {RESULTS / args.name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
