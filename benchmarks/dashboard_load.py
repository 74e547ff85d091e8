"""A class on one server: `python -m benchmarks.dashboard_load [--sessions 10]`.

Starts `streamlit run app.py` on 127.0.0.1 in teaching mode (METRICLENS_MODE=demo, as `make share`
would) on the shipped runs, then:

1. warm-up: one session per run opens Explore, Retrieval and Attention (loads the model, fills the
   shared caches) -> server RSS "before";
2. load: `--sessions` headless-Chromium sessions (each its own browser context, i.e. its own
   Streamlit session) open at the same moment, split over Explore, Retrieval and Attention and over
   the runs, each with its own query -> time until every page is drawn (its marker on the page,
   Streamlit idle, every image decoded, the map's WebGL canvas present);
3. interaction under load: every session at once draws a lasso (Explore) or types a new query
   (Retrieval, Attention) -> time until its result is drawn; each session then checks that it shows
   its *own* query (no state leaks between sessions) -> server RSS "after" (sessions still open);
4. a second crowd of as many new sessions on the same pages and queries (the shared caches now hold
   their results) -> RSS growth that is the sessions' own cost alone.

Exceptions: Streamlit exception boxes on the pages, browser page errors, and tracebacks in the
server's log; all must be 0. RSS is the server process's VmRSS; the growth per session is compared
with what loading one model adds to a process's RSS (measured in a fresh process). Writes
benchmarks/results/dashboard_load.json and .md. On the shared 2-core machine the load of other jobs
(and Chromium itself, which runs on the same cores) moves these numbers a lot.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from benchmarks.common import require_chromium
from tests.dashboard_testing import dashboard_server
from benchmarks.dashboard_latency import DONE, MAP_DRAWN, machine
from core.run_dir import WEIGHTS
from tests.dashboard_testing import CHROMIUM, LAUNCH_ARGS, PLOT_AREA, REPO, shipped_runs

RESULTS = REPO / "benchmarks" / "results"
# page -> (path, marker of a drawn page, marker of the interaction's result; {q} = the session's query)
PAGES = {"explore": ("/", "Lasso or box-select", "Selection:"),
         "retrieval": ("/retrieval", "#{q} · ", "#{q} · "),
         "attention": ("/attention", "query #{q} · ", "query #{q} · ")}
TIMEOUT_MS = 300_000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class PeakRss(threading.Thread):
    """The server's highest RSS while the load runs (sampled every 0.2 s)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self):
        while not self.done.wait(0.2):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, RuntimeError):
                return


async def drawn(page, marker: str, with_map: bool) -> None:
    await page.wait_for_function(DONE, arg=marker, polling="raf", timeout=TIMEOUT_MS)
    if with_map:  # Explore: the WebGL map too
        await page.wait_for_function(MAP_DRAWN, polling="raf", timeout=TIMEOUT_MS)


async def lasso(page, centre=(0.5, 0.5), radius_share=0.25) -> None:
    box = await page.locator(PLOT_AREA).first.bounding_box()
    cx, cy = box["x"] + box["width"] * centre[0], box["y"] + box["height"] * centre[1]
    r = radius_share * min(box["width"], box["height"])
    await page.mouse.move(cx + r, cy)
    await page.mouse.down()
    for i in range(1, 25):
        a = 2 * math.pi * i / 24
        await page.mouse.move(cx + r * math.cos(a), cy + r * math.sin(a), steps=2)


async def set_query(page, value: int) -> None:
    box = page.locator("[data-testid='stNumberInput'] input").first
    await box.fill(str(value))
    await box.press("Enter")


class Session:
    def __init__(self, index: int, page_name: str, run: str, query: int):
        self.index, self.page_name, self.run, self.query = index, page_name, run, query
        self.errors: list[str] = []
        self.draw_s = self.interaction_s = None
        self.own_state = None

    def url(self, base: str) -> str:
        return base + PAGES[self.page_name][0] + "?" + urllib.parse.urlencode({"run": Path(self.run).name,
                                                                               "query": self.query})

    async def open(self, browser, base: str, start: float):
        self.context = await browser.new_context(viewport={"width": 1300, "height": 950})
        self.page = await self.context.new_page()
        self.page.on("pageerror", lambda err: self.errors.append(f"page error: {err}"))
        await self.page.goto(self.url(base), timeout=TIMEOUT_MS)
        await drawn(self.page, PAGES[self.page_name][1].format(q=self.query), self.page_name == "explore")
        self.draw_s = time.perf_counter() - start
        await self.count_exceptions()

    async def interact(self):
        new_query = self.query + 1
        start = time.perf_counter()
        if self.page_name == "explore":
            await lasso(self.page, centre=(0.4 + 0.02 * self.index, 0.5))
            start = time.perf_counter()  # drawing the lasso is the user's gesture; time from the release
            await self.page.mouse.up()
        else:
            await set_query(self.page, new_query)
        await drawn(self.page, PAGES[self.page_name][2].format(q=new_query), self.page_name == "explore")
        self.interaction_s = time.perf_counter() - start
        if self.page_name != "explore":  # this session's own query, not another session's
            self.own_state = await self.page.evaluate(
                "(q) => document.body.textContent.includes(q)", PAGES[self.page_name][2].format(q=new_query))
        await self.count_exceptions()

    async def count_exceptions(self):
        boxes = await self.page.locator("[data-testid='stException']").count()
        self.errors += [f"{boxes} exception box(es) on {self.page_name}"] if boxes else []


async def load(base: str, pid: int, runs: list[str], sessions: int, warm: bool) -> dict:
    from playwright.async_api import async_playwright

    out: dict = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        out["browser"] = f"Chromium {browser.version} (headless, software GL)"
        out["rss_mb_idle"] = round(rss_mb(pid), 1)
        if warm:  # one session per run through the three pages: models loaded, shared caches filled
            for run in runs:
                for name in PAGES:
                    s = Session(0, name, run, 5)
                    await s.open(browser, base, time.perf_counter())
                    await s.context.close()
        await asyncio.sleep(2)
        out["rss_mb_before"] = round(rss_mb(pid), 1)
        names = list(PAGES)
        crowd = [Session(i, names[i % len(names)], runs[i % len(runs)], 10 + 7 * i) for i in range(sessions)]
        peak = PeakRss(pid)
        peak.start()
        start = time.perf_counter()
        await asyncio.gather(*(s.open(browser, base, start) for s in crowd))
        out["all_drawn_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        await asyncio.gather(*(s.interact() for s in crowd))
        out["all_interactions_s"] = round(time.perf_counter() - start, 2)
        await asyncio.sleep(2)
        out["rss_mb_after"] = round(rss_mb(pid), 1)
        peak.done.set()
        out["rss_mb_peak"] = round(max(peak.peak, out["rss_mb_after"]), 1)
        for s in crowd:
            await s.context.close()
        await asyncio.sleep(2)
        out["rss_mb_after_close"] = round(rss_mb(pid), 1)
        again = [Session(s.index, s.page_name, s.run, s.query) for s in crowd]
        start = time.perf_counter()
        await asyncio.gather(*(s.open(browser, base, start) for s in again))
        out["second_crowd_drawn_s"] = round(time.perf_counter() - start, 2)
        await asyncio.sleep(2)
        out["rss_mb_second_crowd"] = round(rss_mb(pid), 1)
        out["second_crowd_errors"] = sum(len(s.errors) for s in again)
        for s in again:
            await s.context.close()
        await browser.close()
    out["sessions"] = [{"session": s.index, "page": s.page_name, "run": Path(s.run).name, "query": s.query,
                        "draw_s": round(s.draw_s, 2), "interaction_s": round(s.interaction_s, 2),
                        "shows_own_query": s.own_state, "errors": s.errors} for s in crowd]
    return out


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dashboard_load.json").write_text(json.dumps(results, indent=2))
    m, r = results["machine"], results
    lines = ["# Dashboard under load: concurrent sessions", "",
             f"- date: {r['date']}", f"- command: `{r['command']}`",
             f"- machine: {m['platform']}, {m['cpus']} CPUs ({m['processor']}), Python {m['python']}, "
             f"Streamlit {m['streamlit']}, {r['browser']} on the same machine",
             f"- load average (1, 5, 15 min) at start {m['load_average_start']}, at end {m.get('load_average_end')}",
             f"- server: 127.0.0.1, METRICLENS_MODE=demo; runs: {', '.join(Path(x).name for x in r['runs'])}", "",
             "| measure | value |", "|---|---|",
             f"| sessions (Explore / Retrieval / Attention) | {r['summary']['pages']} |",
             f"| time until every page is drawn (s) | {r['all_drawn_s']:.1f} (per session: median "
             f"{r['summary']['draw_median_s']:.1f}, max {r['summary']['draw_max_s']:.1f}) |",
             f"| interaction latency under load (s) | median {r['summary']['interaction_median_s']:.2f}, "
             f"max {r['summary']['interaction_max_s']:.2f} (all {len(r['sessions'])} at once) |",
             f"| exceptions (pages, browser, server log) | {r['summary']['exceptions']} |",
             f"| sessions showing their own query after the interaction | {r['summary']['own_state']} |",
             f"| server RSS idle → after warm-up (before) → after load (MB) | {r['rss_mb_idle']:.0f} → "
             f"{r['rss_mb_before']:.0f} → {r['rss_mb_after']:.0f} (peak {r['rss_mb_peak']:.0f}; "
             f"{r['rss_mb_after_close']:.0f} after the sessions closed) |",
             f"| growth per session, new queries (MB) | {r['summary']['growth_per_session_mb']:.2f} (includes "
             f"the shared caches filling with their results) |",
             f"| second crowd, same pages and queries: drawn in (s), RSS (MB), growth per session (MB) | "
             f"{r['second_crowd_drawn_s']:.1f}, {r['rss_mb_after_close']:.0f} → {r['rss_mb_second_crowd']:.0f}, "
             f"{r['summary']['second_growth_per_session_mb']:.2f} |",
             f"| one model loaded, RSS added in a fresh process (MB) | {r['summary']['model_rss_mb']:.1f} "
             f"(weights file {r['summary']['model_mb']:.1f} MB) |", "",
             "| session | page | run | draw (s) | interaction (s) | errors |", "|---|---|---|---|---|---|"]
    for s in r["sessions"]:
        lines.append(f"| {s['session']} | {s['page']} | {s['run']} | {s['draw_s']:.1f} | {s['interaction_s']:.2f} | "
                     f"{len(s['errors'])} |")
    lines += ["", "Draw: all sessions open at the same moment; each until its page's marker is on the page, Streamlit "
              "is idle, every image is decoded (and on Explore the WebGL map exists). Interaction: all at once, a "
              "lasso release (Explore) or a new query (Retrieval, Attention) until its result is drawn. "
              "See the module docstring."]
    (RESULTS / "dashboard_load.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--runs", default="shapes_grouping,shapes_gap",
                        help="comma-separated names of shipped runs the sessions share (round robin)")
    parser.add_argument("--no-warm-up", dest="warm", action="store_false",
                        help="start the crowd on a cold server (models are then loaded under load)")
    args = parser.parse_args(argv)
    if not require_chromium():
        return 2
    shipped = {r.name: str(r.resolve()) for r in shipped_runs()}
    missing = [n for n in args.runs.split(",") if n not in shipped]
    if missing:
        print(f"not shipped (finished) runs: {missing}; have {sorted(shipped)} (make checkpoints)", file=sys.stderr)
        return 2
    runs = [shipped[n] for n in args.runs.split(",")]
    info = machine()
    log = Path(tempfile.mkdtemp(prefix="dashboard_load_")) / "server.log"
    os.environ["METRICLENS_SERVER_LOG"] = str(log)  # start_server sends the server's stderr there
    env = dict(os.environ, METRICLENS_AUTO_UMAP="0", METRICLENS_MODE="demo")
    with dashboard_server(env) as (base, proc):
        out = asyncio.run(load(base, proc.pid, runs, args.sessions, args.warm))
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    server_log = log.read_text(errors="replace")
    tracebacks = server_log.count("Traceback (most recent call last)")
    draws = [s["draw_s"] for s in out["sessions"]]
    lat = [s["interaction_s"] for s in out["sessions"]]
    model_mb = statistics.mean((Path(r) / WEIGHTS).stat().st_size / 2**20 for r in runs)
    probe = ("import gc, torch, core.models.embedder; from core import checkpoint; from benchmarks.dashboard_load "
             "import rss_mb; import os; gc.collect(); before = rss_mb(os.getpid()); m = checkpoint.load_run({!r}); "
             "gc.collect(); print(rss_mb(os.getpid()) - before)")
    import subprocess
    model_rss = statistics.mean(float(subprocess.run([sys.executable, "-c", probe.format(r)], cwd=REPO, text=True,
                                                     capture_output=True, check=True).stdout.split()[-1]) for r in runs)
    pages = [sum(s["page"] == p for s in out["sessions"]) for p in PAGES]
    own = [s["shows_own_query"] for s in out["sessions"] if s["shows_own_query"] is not None]
    out["summary"] = {
        "pages": " / ".join(map(str, pages)),
        "draw_median_s": statistics.median(draws), "draw_max_s": max(draws),
        "interaction_median_s": statistics.median(lat), "interaction_max_s": max(lat),
        "exceptions": sum(len(s["errors"]) for s in out["sessions"]) + out["second_crowd_errors"] + tracebacks,
        "server_tracebacks": tracebacks, "own_state": f"{sum(own)}/{len(own)}",
        "growth_per_session_mb": round((out["rss_mb_after"] - out["rss_mb_before"]) / args.sessions, 2),
        "second_growth_per_session_mb": round((out["rss_mb_second_crowd"] - out["rss_mb_after_close"]) / args.sessions, 2),
        "model_mb": round(model_mb, 2), "model_rss_mb": round(model_rss, 2)}
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": info, "runs": runs,
               "command": " ".join(["python -m benchmarks.dashboard_load", *(argv if argv is not None else sys.argv[1:])]),
               "browser": out.pop("browser"), **out}
    write(results)
    if tracebacks:
        print(server_log[-3000:], file=sys.stderr)
    print(json.dumps(results["summary"], indent=2))
    print(f"wrote {RESULTS / 'dashboard_load.json'} and .md")
    return 0 if results["summary"]["exceptions"] == 0 and all(own) else 1


if __name__ == "__main__":
    sys.exit(main())
