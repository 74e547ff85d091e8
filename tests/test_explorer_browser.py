"""Issue 13, the Explore page in a real browser (headless Chromium, one server and browser for the module):
a click lists the item's neighbours and rings them on the map, the selection survives a colour change,
search selects by label, the export downloads those items, hovering shows a thumbnail, j moves to the
next query, and the page follows a dark colour scheme. Screenshots go to test-output/screenshots/."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import urllib.parse
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dashboard_testing import CHROMIUM, PLOT_AREA, dashboard_server, demo_runs, images_loaded, settle

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")]


@pytest.fixture(scope="module")
def app(tmp_path_factory, browser):
    """(base URL, run, browser) shared by the module's tests (the browser: conftest.py's)."""
    run = str(demo_runs(tmp_path_factory.mktemp("explorer_runs"), 1)[0].resolve())
    env = dict(os.environ, METRICLENS_AUTO_UMAP="0", METRICLENS_RUNS=str(Path(run).parent))
    with dashboard_server(env) as (base, _):
        yield base, run, browser


def shot(page, name: str) -> None:
    images_loaded(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def open_explore(app, **params):
    base, run, browser = app
    page = browser.new_page(viewport={"width": 1400, "height": 1500}, accept_downloads=True,
                            color_scheme=params.pop("scheme", "light"))
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(base + "/?" + urllib.parse.urlencode({"run": run, **params}))
    page.locator(PLOT_AREA).first.wait_for(timeout=90_000)
    settle(page)
    page.wait_for_timeout(900)  # the page's script attaches to the chart within 0.4 s of its draw
    return page, errors


MAP = "Array.from(document.querySelectorAll('.js-plotly-plot')).find(g => g.layout && g.layout.meta === 'metriclens-map')"
LONELY_POINT = """() => {
  const gd = %s;
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  const all = gd._fullData.flatMap(t => Array.from(t.x, (x, i) => [box.left + xa._offset + xa.l2p(x), box.top + ya._offset + ya.l2p(t.y[i]), t.customdata[i]]));
  let best = null;  // the point farthest from its nearest other point: a click there hits it alone
  for (const [px, py, id] of all.slice(0, 300)) {
    let gap = Infinity;
    for (const [qx, qy] of all) { const d = Math.hypot(qx - px, qy - py); if (d > 0 && d < gap) gap = d; }
    if (!best || gap > best.gap) best = {x: px, y: py, id: id, gap: gap};
  }
  return best;
}""" % MAP
RING_AT = """(() => {  // (ring centre, the point's own pixel) of an item, in the plot's pixels
  const gd = %s, id = %%d, xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const ring = document.querySelector('#metriclens-focus-layer circle[data-id="' + id + '"]');
  const t = gd._fullData.find(t => Array.from(t.customdata).includes(id)), k = Array.from(t.customdata).indexOf(id);
  return [[+ring.getAttribute('cx'), +ring.getAttribute('cy')], [xa._offset + xa.l2p(t.x[k]), ya._offset + ya.l2p(t.y[k])]];
})()""" % MAP
TRACES = "() => %s._fullData.map(t => ({name: t.name, ids: Array.from(t.customdata), sel: t.selectedpoints ? Array.from(t.selectedpoints) : null}))" % MAP


def assert_served_small(url: str, wait_s: float = 120.0) -> None:
    """The thumbnail sheet is served as a small JPEG (one 480 px sheet per 100 items) once the background
    process has written it (seconds after the first paint; longer on a busy machine)."""
    import time
    deadline = time.time() + wait_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.headers["Content-Type"] == "image/jpeg" and len(response.read()) < 120_000
                return
        except urllib.error.HTTPError:
            if time.time() > deadline:
                raise
            time.sleep(1)


def test_click_rings_neighbours_and_keeps_selection_across_recolouring(app):
    import numpy as np

    _, run, _ = app
    emb = np.load(Path(run) / "artifacts" / "embeddings.npy")
    page, errors = open_explore(app)
    point = page.evaluate(LONELY_POINT)
    page.mouse.move(point["x"], point["y"])
    page.locator("#metriclens-thumb").wait_for(state="visible", timeout=10_000)   # hover: the item's thumbnail
    sheet = page.evaluate("getComputedStyle(document.querySelector('#metriclens-thumb')).backgroundImage")
    page.mouse.click(point["x"], point["y"])
    item = point["id"]
    try:
        page.get_by_text(f"Nearest neighbours of #{item}", exact=False).wait_for(timeout=60_000)
    finally:
        shot(page, "10_explore_neighbours")
    settle(page)
    sims = emb @ emb[item]
    sims[item] = -np.inf
    expected = np.argsort(-sims, kind="stable")[:8].tolist()
    layer = page.locator("#metriclens-focus-layer")   # the star and rings the page's script draws over the map
    layer.wait_for(state="attached", timeout=10_000)
    assert int(layer.get_attribute("data-item")) == item and json.loads(layer.get_attribute("data-ids")) == expected
    drawn, plotted = page.evaluate(RING_AT % expected[0])
    assert abs(drawn[0] - plotted[0]) < 1 and abs(drawn[1] - plotted[1]) < 1   # the ring sits on its point
    assert page.get_by_text(re.compile(rf"^Query #{item} \(keys")).count() == 1   # the clicked item is the query

    url = sheet.split('"')[1]   # url("http://.../app/static/thumbs/<digest>/<sheet>.jpg")
    assert url.endswith(f"/{item // 100}.jpg")
    assert_served_small(url)
    page.mouse.move(point["x"] + 1, point["y"])   # hover again over the redrawn map: its thumbnail in the shot
    page.locator("#metriclens-thumb").wait_for(state="visible", timeout=10_000)
    page.wait_for_timeout(300)
    shot(page, "10_explore_neighbours")

    page.locator("[data-testid='stSelectbox']").filter(has_text="Colour by").click()
    page.get_by_role("option", name="MAP@R").click()
    settle(page)
    page.locator(".metriclens-map-plot .colorbar").first.wait_for(timeout=60_000)   # redrawn on a continuous scale
    page.get_by_text(f"Nearest neighbours of #{item}", exact=False).wait_for(timeout=60_000)
    selected = [i for t in page.evaluate(TRACES) if t["sel"] for j in t["sel"] for i in [t["ids"][j]]]
    assert selected == [item]
    page.get_by_text("Explore the embedding").click()   # out of the select box, whose input takes the keys
    page.keyboard.press("j")   # next query: the item after, with its neighbours
    page.get_by_text(f"Nearest neighbours of #{item + 1}", exact=False).wait_for(timeout=60_000)
    page.wait_for_url(re.compile(rf"query={item + 1}&.*sel={item + 1}\b"), timeout=30_000)   # the link follows
    assert not errors, errors


def test_search_selects_by_label_and_exports_it(app):
    _, run, _ = app
    items = json.loads((Path(run) / "artifacts" / "items.json").read_text())
    wanted = [i for i, it in enumerate(items) if it["class_name"] == "red diamond"]
    page, errors = open_explore(app)
    box = page.get_by_placeholder("e.g. red diamond", exact=False)
    box.fill("red diamond")
    box.press("Enter")
    page.get_by_text(f"Selection: {len(wanted)} of {len(items)} items", exact=False).wait_for(timeout=60_000)
    settle(page)
    selected = sorted(i for t in page.evaluate(TRACES) if t["sel"] for j in t["sel"] for i in [t["ids"][j]])
    assert selected == wanted
    shot(page, "11_explore_search")
    with page.expect_download() as download:
        page.get_by_role("button", name=f"Export {len(wanted)} as CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [int(r["item"]) for r in rows] == wanted and {r["class"] for r in rows} == {"red diamond"}
    assert {r["colour"] for r in rows} == {"red"} and {r["shape"] for r in rows} == {"diamond"}
    # issue 27: the map's coordinates, the scores and the neighbour ids come along
    assert {"x", "y", "top1_correct", "r_precision", "map_at_r", "first_match_rank", "neighbour_1"} <= set(rows[0])
    assert all(r["x"] != "nan" and int(r["neighbour_1"]) != int(r["item"]) for r in rows)
    assert "sel=" in page.url
    assert not errors, errors


def test_keys_step_the_query_on_other_pages(app):
    """Next/previous query by keyboard outside Explore: j and k step the Retrieval page's query."""
    base, run, browser = app
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(base + "/retrieval?" + urllib.parse.urlencode({"run": run, "query": 20}))   # Explore not visited
    box = page.locator("[data-testid='stNumberInput'] input").first
    box.wait_for(timeout=60_000)
    settle(page)
    page.get_by_text("Retrieval", exact=False).first.click()   # focus out of any input
    page.keyboard.press("j")
    page.wait_for_url(re.compile(r"query=21\b"), timeout=30_000)
    settle(page)
    page.keyboard.press("k")
    page.wait_for_url(re.compile(r"query=20\b"), timeout=30_000)
    assert box.input_value() == "20"
    assert not errors, errors


def brightness(colour: str) -> int:
    """r + g + b of a CSS colour as the browser reports it ('rgb(…)', 'rgba(…)' or '#rrggbb'); a
    transparent one counts as dark (the page shows through)."""
    if colour.startswith("#"):
        return sum(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    values = colour[colour.index("(") + 1:colour.index(")")].split(",")
    return 0 if len(values) == 4 and float(values[3]) == 0 else sum(int(float(v)) for v in values[:3])


def test_dark_scheme_gives_a_dark_page_and_map(app):
    page, errors = open_explore(app, scheme="dark")
    background = page.evaluate("getComputedStyle(document.querySelector('[data-testid=stApp]')).backgroundColor")
    assert brightness(background) < 200, background
    layout = page.evaluate("(() => { const l = (%s)._fullLayout; return [l.paper_bgcolor, l.font.color]; })()" % MAP)
    assert brightness(layout[0]) < 200 and brightness(layout[1]) > 400, layout   # dark chart, light text
    shot(page, "12_explore_dark")
    assert not errors, errors


def test_map_is_drawn_by_the_partial_bundle_not_streamlits_chart(app):
    """Issue 13, first paint: the map is drawn by plotly's partial WebGL bundle (static/vendor/plotly-gl2d, loaded
    from the page's first element) in the page's own component; Streamlit's 4.7 MB plotly chart code, which the
    browser fetched and compiled only once the first chart arrived, is never requested on Explore."""
    base, run, browser = app
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(base + "/?" + urllib.parse.urlencode({"run": run}))
    page.locator(PLOT_AREA).first.wait_for(timeout=90_000)   # either renderer: the asserts below say which drew it
    settle(page)
    page.wait_for_timeout(1000)   # anything fetched lazily after the last rerun
    bundle = [u for u in requested if "plotly-gl2d" in u]
    # once: the sidebar's <link rel=preload>, the page's loader and the component ask for the same URL
    assert len(bundle) == 1 and bundle[0].endswith("/app/static/vendor/plotly-gl2d/plotly-gl2d.min.js"), requested
    assert not [u for u in requested if re.search(r"/PlotlyChart\.[^/]*\.js", u)], requested
    assert page.evaluate("window.Plotly && window.Plotly.version") == "3.7.0"
    assert page.evaluate("typeof window.loadMapBundle") == "function"   # the page's own loader ran (webgl_map.PRELOAD_MAP_CODE)
    assert page.evaluate("!!(%s) && !document.querySelector('.stPlotlyChart')" % MAP)   # the map, no plotly chart
    assert page.locator(".metriclens-map-plot canvas").count() > 0   # drawn with WebGL
    page.close()


def test_work_after_paint_starts_once_the_browser_has_drawn_the_map(app, tmp_path):
    """The page's work after paint (explore.prefetch: faiss index, data set, hover thumbnails) waits for the
    map's report that it is drawn, then runs: a run never opened before gets its thumbnail sheets written."""
    import shutil
    import time

    base, run, browser = app
    fresh = tmp_path / "fresh_run"   # a new path: no thumbnails from an earlier server
    shutil.copytree(run, fresh, ignore=shutil.ignore_patterns("resume.pt"))
    thumbs = ROOT / "static" / "thumbs"
    before = set(thumbs.iterdir()) if thumbs.exists() else set()
    page, errors = open_explore((base, str(fresh), browser))
    deadline = time.time() + 120
    while not [d for d in (set(thumbs.iterdir()) if thumbs.exists() else set()) - before if (d / "0.jpg").exists()]:
        assert time.time() < deadline, "no thumbnail sheet written for a newly opened run: the work after paint never ran"
        time.sleep(1)
    assert not errors, errors
    page.close()
