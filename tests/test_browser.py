"""The dashboard in a real browser: headless Debian Chromium driven by Playwright.

Starts `streamlit run app.py` on 127.0.0.1 (free port), opens every page, lassoes points on the
map, follows a retrieval to its explanation, uploads a file that is not an image, clicks a patch,
and saves screenshots under test-output/screenshots/ (git-ignored). Skipped without /usr/bin/chromium
(`make browser` installs it; never `playwright install`, which downloads).
"""
from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest

from dashboard_testing import CHROMIUM, PLOT_AREA, dashboard_server, demo_runs, images_loaded, lasso, settle

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = [str(r.resolve()) for r in demo_runs(tmp_path_factory.mktemp("browser_runs"), 2)]
    env = dict(os.environ, METRICLENS_AUTO_UMAP="0",
               METRICLENS_RUNS=os.pathsep.join(sorted({str(Path(r).parent) for r in runs})))
    with dashboard_server(env) as (base, _):
        yield base, runs


def shot(page, name: str) -> None:
    """Screenshot once the page has drawn: its images decoded and no placeholder skeleton left (charts,
    tables and images render after the script run ends, so a settled page can still be half drawn)."""
    images_loaded(page)
    page.wait_for_function("document.querySelectorAll('[data-testid=stSkeleton]').length === 0", timeout=60_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def test_every_page_in_chromium(server, browser):
    base, runs = server
    link = "?" + urllib.parse.urlencode({"run": runs[0], "compare": runs[1], "query": 3})
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))

    # Explore: the map, then a lasso -> grid of images and metrics of the selection
    page.goto(base + "/" + link)
    page.locator(PLOT_AREA).first.wait_for(timeout=90_000)
    settle(page)
    shot(page, "01_explore")
    lasso(page)
    page.get_by_text("Selection:", exact=False).first.wait_for(timeout=60_000)
    page.locator("[data-testid='stImage'] img").first.wait_for(timeout=60_000)  # the grid of the selection
    settle(page)
    assert page.get_by_text("R@1 of the selection").count() == 1
    images_loaded(page)
    shot(page, "02_explore_lasso")

    # Explore -> Retrieval for an item of the selection
    page.get_by_role("button", name="Neighbours →").click()
    page.get_by_text("Top 8 neighbours", exact=False).wait_for(timeout=60_000)
    settle(page)
    assert page.get_by_text("Hardest failures").count() >= 1
    # the map's hover thumbnail left with the map (after a lasso no plotly_unhover came, and it stayed on top)
    page.locator("#metriclens-thumb").wait_for(state="hidden", timeout=5_000)
    shot(page, "03_retrieval")

    # an upload that is not an image: a clear error, no traceback
    page.get_by_text("Upload an image").click()
    settle(page)
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(
        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"this is not a png"}])
    page.get_by_text("Upload refused", exact=False).wait_for(timeout=30_000)
    assert page.locator("[data-testid='stException']").count() == 0
    shot(page, "04_retrieval_bad_upload")
    page.get_by_text("A test image").click()
    settle(page)

    # a retrieval click: explain the similarity on the Attention page
    page.get_by_role("button", name="Explain in Attention →").click()
    page.get_by_text("What moved the similarity", exact=False).wait_for(timeout=60_000)
    settle(page)
    shot(page, "05_attention")

    # Cross-image: click a patch of A (on a run with a trained CIA branch when one is listed: learned maps)
    import json
    cross_run = next((r for r in runs if json.loads((Path(r) / "config.json").read_text())["model"].get("cia")),
                     runs[0])
    page.goto(base + "/cross?" + urllib.parse.urlencode({"run": cross_run, "query": 3}))
    page.get_by_text("Click a patch of A", exact=False).wait_for(timeout=60_000)
    settle(page)
    if page.get_by_text("not available in this build", exact=False).count() == 0:
        picker = page.locator(".stPlotlyChart .nsewdrag").first.bounding_box()
        page.mouse.click(picker["x"] + picker["width"] * 0.2, picker["y"] + picker["height"] * 0.2)
        settle(page)
    shot(page, "06_cross")

    for name, marker in [("compare", "The same query in both runs"), ("train", "Start training"),
                         ("learn", "GSP — generalized sum pooling")]:
        page.goto(f"{base}/{name}{link}")
        page.get_by_text(marker, exact=False).first.wait_for(timeout=60_000)
        settle(page)
        assert page.locator("[data-testid='stException']").count() == 0, name
        shot(page, f"07_{name}")
    assert not errors, errors


POINT_ON_SCREEN = """() => {
  const gd = Array.from(document.querySelectorAll('.js-plotly-plot')).find(g => g.layout && g.layout.meta === 'metriclens-map');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  // the point farthest from its nearest other point: a click there hits it alone
  let best = null;
  const all = gd._fullData.flatMap(t => Array.from(t.x, (x, i) => [x, t.y[i], t.customdata[i]]));  // typed arrays
  for (const [x, y, id] of all.slice(0, 400)) {
    const px = box.left + xa._offset + xa.l2p(x), py = box.top + ya._offset + ya.l2p(y);
    let gap = Infinity;
    for (const [x2, y2] of all) {
      const d = Math.hypot(box.left + xa._offset + xa.l2p(x2) - px, box.top + ya._offset + ya.l2p(y2) - py);
      if (d > 0 && d < gap) gap = d;
    }
    if (!best || gap > best.gap) best = {x: px, y: py, id: id, gap: gap};
  }
  return best;
}"""


def test_explore_click_selects_and_selection_survives_recolouring(server, browser):
    """Issue 13, defects 1 and 2 in the real page: a click on a point selects that item (Streamlit forces
    clickmode='event' under lasso, so the page passes the click on itself); changing "Colour by" keeps it;
    a double-click clears it."""
    base, runs = server
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(base + "/?" + urllib.parse.urlencode({"run": runs[0]}))
    page.locator(PLOT_AREA).first.wait_for(timeout=90_000)
    settle(page)
    page.wait_for_timeout(1000)  # the click bridge attaches within 0.4 s of the chart's first draw
    point = page.evaluate(POINT_ON_SCREEN)
    page.mouse.move(point["x"], point["y"])
    page.wait_for_timeout(300)
    page.mouse.click(point["x"], point["y"])
    page.get_by_text("Selection: 1 of", exact=False).wait_for(timeout=60_000)
    settle(page)
    images_loaded(page)
    assert page.get_by_text(f"#{point['id']} ", exact=False).count() >= 1  # the clicked item, in the grid
    shot(page, "08_explore_click")

    page.locator("[data-testid='stSelectbox']").filter(has_text="Colour by").click()
    page.get_by_role("option", name="top-1 neighbour correct").click()
    settle(page)
    page.locator(".metriclens-map-plot .legendtext", has_text="top-1 correct").first.wait_for(timeout=60_000)  # redrawn
    page.get_by_text("Selection: 1 of", exact=False).wait_for(timeout=60_000)
    shot(page, "09_explore_recoloured_keeps_selection")
    page.wait_for_timeout(1000)  # the click bridge attaches to the redrawn chart
    plot = page.locator(PLOT_AREA).first.bounding_box()
    page.mouse.dblclick(plot["x"] + plot["width"] * 0.5, plot["y"] + 8)  # not a corner: those are axis handles
    page.get_by_text("or click one", exact=False).wait_for(timeout=60_000)
    settle(page)
    assert page.get_by_text("Selection:", exact=False).count() == 0
    assert not errors, errors
def test_nothing_is_fetched_from_the_network(server, browser):
    """Every request but loopback is aborted (as on a machine without internet): no page may miss a
    favicon, font, icon or script, and none may even try to reach another host."""
    base, runs = server
    outside, failed = [], []

    def only_loopback(route):
        host = urllib.parse.urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    context.route("**/*", only_loopback)
    page = context.new_page()
    def record_failure(request):
        # a local request cancelled by the browser (the next page's navigation, or Streamlit replacing an image
        # while it loads) is not a fetch that failed; anything else is
        local = urllib.parse.urlsplit(request.url).hostname in ("127.0.0.1", "localhost")
        if not (local and request.failure == "net::ERR_ABORTED"):
            failed.append(f"{request.url}: {request.failure}")

    page.on("requestfailed", record_failure)
    link = "?" + urllib.parse.urlencode({"run": runs[0], "query": 3})
    for name, marker in [("", "Lasso or box-select"), ("retrieval", "Hardest failures"),
                         ("attention", "What moved the similarity"), ("learn", "GSP — generalized sum pooling")]:
        page.goto(f"{base}/{name}{link}")
        page.get_by_text(marker, exact=False).first.wait_for(timeout=90_000)
        settle(page)
        images_loaded(page)
        page.wait_for_load_state("networkidle")
    icon = page.evaluate("Array.from(document.querySelectorAll('link[rel~=icon]')).map(l => l.href)")
    context.close()
    assert icon and all(href.startswith(base) for href in icon), icon  # the local favicon
    assert not outside, f"requests to other hosts: {outside}"
    assert not failed, failed
