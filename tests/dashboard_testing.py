"""The dashboard's test harness, for the tests and the dashboard benchmarks (never imported by the product):
runs to show (the shipped checkpoints/, or tiny fresh ones), a real server and a headless browser.

A clean clone ships finished runs in checkpoints/; the tests and the benchmark use the first of
them. When there are none (a fresh checkout before `make checkpoints`), or with
METRICLENS_TEST_FRESH_RUNS=1, tiny shapes runs are trained into a scratch folder (~10 s each), so
the suite still runs end to end.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from core.run_dir import ARTIFACTS, LABELS, is_complete, is_run_dir, list_runs

REPO = Path(__file__).resolve().parents[1]    # the repository root
SHIPPED = REPO / "checkpoints"
TINY_OVERRIDES = ["train.epochs=1", "data.max_per_class=8", "data.shapes.test_per_class=8",
                  "data.shapes.train_per_class=8",
                  "model.embed_dim=32", "train.batch_size=32"]


def is_finished(run: Path) -> bool:
    """Finished, with a model (the tests explain with it)."""
    return is_run_dir(run) and is_complete(run)


def shipped_runs() -> list[Path]:
    """Finished shipped runs, the one the dashboard opens on first (the browser test's screenshots show it)."""
    from dashboard.catalog import OPENING_RUN

    runs = [run for run in list_runs(SHIPPED) if is_finished(run)]
    return sorted(runs, key=lambda run: run.name != OPENING_RUN)


def same_data(a: Path, b: Path) -> bool:
    import numpy as np
    la, lb = (np.load(Path(r) / ARTIFACTS / LABELS) for r in (a, b))
    return la.shape == lb.shape and bool((la == lb).all())


def train_tiny(out: Path, seed: int = 0, config: str = "shapes_gap.yaml", epochs: int = 1) -> Path:
    """A shapes run with 8 images per class (epochs 0: the model as built, evaluated): enough for
    every page to render."""
    from core.config import RunConfig
    from core.train import train

    out = Path(out)
    if not is_finished(out):
        cfg = RunConfig.load(REPO / "configs" / config).with_overrides(
            TINY_OVERRIDES + [f"train.seed={seed}", f"train.epochs={epochs}", f"name={out.name}"])
        train(cfg, out)
    return out


_TINY: dict[int, list[Path]] = {}  # tiny runs made in this process (one pytest session shares them)


def demo_runs(scratch: Path, count: int = 2) -> list[Path]:
    """`count` finished runs on the same test data: shipped ones if there are enough, else tiny ones."""
    shipped = [] if os.environ.get("METRICLENS_TEST_FRESH_RUNS") else shipped_runs()
    if shipped:
        first = shipped[0]
        runs = [first] + [r for r in shipped[1:] if same_data(first, r)]
        if len(runs) >= count:
            return runs[:count]
    cached = _TINY.get(count)
    if not cached or not all(is_finished(r) for r in cached):
        _TINY[count] = [train_tiny(Path(scratch) / f"tiny_{i}", seed=i) for i in range(count)]
    return _TINY[count]


# ---- a real server and browser (tests/test_browser.py, benchmarks/dashboard_latency.py) ------------
CHROMIUM = "/usr/bin/chromium"
# a map's plot area: Streamlit's chart (Compare) or the item map component (Explore, dashboard/map_component.js)
PLOT_AREA = ".stPlotlyChart .nsewdrag, .metriclens-map-plot .nsewdrag"
# root runner: no sandbox; closed network: no background traffic (research/dashboard.md §3.6)
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, env: dict | None = None):
    """`streamlit run app.py` on 127.0.0.1:port (loopback only); the caller stops it."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    log = open(os.environ.get("METRICLENS_SERVER_LOG", os.devnull), "a")  # set it to see server errors
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)


def wait_healthy(port: int, proc, timeout: float = 60.0) -> None:
    import time
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                if r.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("streamlit did not become healthy")


def stop_server(proc) -> None:
    import subprocess
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def settle(page, timeout: float = 60_000, debounce: bool = True) -> None:
    """Wait until Streamlit has finished the rerun that a click or a drag started. `debounce=False`
    when the rerun is known to have started (e.g. its output is already on the page)."""
    if debounce:
        page.wait_for_timeout(250)  # the frontend debounces before it sends the rerun
    page.locator("[data-testid='stApp'][data-test-connection-state='CONNECTED']").wait_for(state="attached", timeout=timeout)
    page.locator("[data-testid='stApp'][data-test-script-state='notRunning']").wait_for(state="attached", timeout=timeout)


def images_loaded(page, timeout: float = 60_000) -> None:
    page.wait_for_function("Array.from(document.querySelectorAll('[data-testid=stImage] img'))"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=timeout)


def lasso(page, chart_index: int = 0, radius_share: float = 0.3, centre=(0.5, 0.5), release: bool = True) -> None:
    """A closed lasso in a plot area (inside .nsewdrag: a drag started on the chart's margins selects nothing).
    `release=False` leaves the mouse button down, so a caller can time the release alone."""
    import math
    box = page.locator(PLOT_AREA).nth(chart_index).bounding_box()
    cx, cy = box["x"] + box["width"] * centre[0], box["y"] + box["height"] * centre[1]
    r = radius_share * min(box["width"], box["height"])
    page.mouse.move(cx + r, cy)
    page.mouse.down()
    for i in range(1, 37):
        a = 2 * math.pi * i / 36
        page.mouse.move(cx + r * math.cos(a), cy + r * math.sin(a), steps=2)
    if release:
        page.mouse.up()


@contextlib.contextmanager
def dashboard_server(env: dict | None = None):
    """`streamlit run app.py` on a free loopback port, healthy: yields (base URL, process); stopped on exit.
    The one way the browser tests and the dashboard benchmarks start a server."""
    port = free_port()
    proc = start_server(port, env)
    try:
        wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_server(proc)


def item_maps(at) -> list:
    """The item maps drawn in an AppTest run (webgl_map.item_map: an st.components.v2 element, not a plotly chart), each
    with `.key` and `.proto.spec` (the figure's JSON) as Streamlit's plotly chart elements have them."""
    import json
    from types import SimpleNamespace

    maps = [e.proto for e in at.get("bidi_component") if e.proto.component_name == "metriclens_item_map"]
    return [SimpleNamespace(key=p.id.split("-", 2)[-1], proto=SimpleNamespace(spec=json.loads(p.json)["figure"]))
            for p in maps]
