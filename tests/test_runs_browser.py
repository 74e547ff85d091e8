"""Issue 13 in headless Chromium: Back steps through queries, the map area is never blank on first paint,
and Compare's linked maps on an imported run. Screenshots go to test-output/screenshots/ (git-ignored)."""
from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from dashboard_testing import CHROMIUM, PLOT_AREA, dashboard_server, demo_runs, images_loaded, lasso, settle

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from core.importer import import_run

    scratch = tmp_path_factory.mktemp("runs_browser")
    runs = [str(r.resolve()) for r in demo_runs(scratch, 2)]
    art = Path(runs[0]) / "artifacts"
    items = json.loads((art / "items.json").read_text())
    np.save(scratch / "embeddings.npy", np.load(art / "embeddings.npy"))
    (scratch / "labels.csv").write_text("label\n" + "\n".join(it["class_name"] for it in items) + "\n")
    imported = scratch / "imported" / "my_embeddings"
    import_run(scratch / "embeddings.npy", scratch / "labels.csv", imported)
    env = dict(os.environ, METRICLENS_AUTO_UMAP="0",
               METRICLENS_RUNS=os.pathsep.join(sorted({str(Path(r).parent) for r in runs} | {str(imported.parent)})))
    with dashboard_server(env) as (base, _):
        yield base, runs, str(imported)


def shot(page, name: str) -> None:
    images_loaded(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def query_in_url(page) -> str | None:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query).get("query", [None])[0]


def test_back_and_forward_step_through_queries(server, browser):
    """Issue 13, defect 4: every query change is a history entry, and Back shows the previous query (the page
    used to write the newer query straight back over the URL the browser went back to)."""
    base, runs, _ = server
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(base + "/retrieval?" + urllib.parse.urlencode({"run": runs[0], "query": 3}))
    box = page.locator("input[aria-label^='Query item']")
    box.wait_for(timeout=90_000)
    settle(page)
    for query in ("5", "9"):
        box.fill(query)
        box.press("Enter")
        settle(page)
        page.wait_for_function(f"new URLSearchParams(location.search).get('query') === '{query}'", timeout=30_000)
    for step, expected in ((page.go_back, "5"), (page.go_back, "3"), (page.go_forward, "5")):
        step()
        page.wait_for_function(f"new URLSearchParams(location.search).get('query') === '{expected}'", timeout=30_000)
        settle(page)
        page.wait_for_function(f"document.querySelector(\"input[aria-label^='Query item']\").value === '{expected}'",
                               timeout=30_000)
        settle(page)
        assert query_in_url(page) == expected  # the page did not write the newer query back
        assert page.get_by_text(f"#{expected} ·", exact=False).count() >= 1  # the query image's caption
    shot(page, "runs_back_button")


FIRST_PAINT = """
window.__paint = {};
const t0 = performance.now();
new MutationObserver(() => {
  const still = document.querySelector('[class*="st-key-map_still"] img');
  if (still && still.complete && still.naturalWidth && !window.__paint.still) window.__paint.still = performance.now() - t0;
  if (document.querySelector('.js-plotly-plot .main-svg') && !window.__paint.plot) window.__paint.plot = performance.now() - t0;
}).observe(document, {subtree: true, childList: true, attributes: true});
"""


# the point of Compare's map A farthest from its nearest other point: a click there hits it alone
COMPARE_LONELY_POINT = """() => {
  const gd = Array.from(document.querySelectorAll('.js-plotly-plot')).filter(g => g.layout && g.layout.uirevision === 'compare')[0];
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect(), t = gd._fullData[0];
  const all = Array.from(t.x, (x, i) => [box.left + xa._offset + xa.l2p(x), box.top + ya._offset + ya.l2p(t.y[i]), [].concat(t.customdata[i])[0]]);
  let best = null;
  for (const [px, py, id] of all.slice(0, 300)) {
    let gap = Infinity;
    for (const [qx, qy] of all) { const d = Math.hypot(qx - px, qy - py); if (d > 0 && d < gap) gap = d; }
    if (!best || gap > best.gap) best = {x: px, y: py, id: id, gap: gap};
  }
  return best;
}"""


def test_imported_run_map_at_first_paint_and_compare_with_linked_maps(server, browser):
    """An imported run on Explore (issue 13, defect 8: the map area stayed blank while the browser loaded
    plotly.js; a still picture of the same points stands there from the first paint and gives way to the
    interactive map), a page that needs its missing model, and Compare's linked maps."""
    base, runs, imported = server
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.add_init_script(FIRST_PAINT)
    page.goto(base + "/?" + urllib.parse.urlencode({"run": imported}))
    page.locator(".metriclens-map-plot .main-svg").first.wait_for(timeout=90_000)
    settle(page)
    paint = page.evaluate("window.__paint")
    assert "still" in paint and paint["still"] <= paint["plot"], paint
    assert not page.locator('[class*="st-key-map_still"]').first.is_visible()  # gone once the plot is drawn
    shot(page, "runs_imported_explore")
    page.goto(base + "/attention?" + urllib.parse.urlencode({"run": imported}))
    page.get_by_text("imported from embeddings; it has no model", exact=False).wait_for(timeout=60_000)
    page.goto(base + "/compare?" + urllib.parse.urlencode({"run": imported, "compare": runs[1]}))
    page.locator(PLOT_AREA).nth(1).wait_for(timeout=90_000)
    settle(page)
    lasso(page, chart_index=0, radius_share=0.25)
    page.get_by_text("Selection:", exact=False).first.wait_for(timeout=60_000)
    settle(page)
    page.locator(PLOT_AREA).nth(1).wait_for(timeout=60_000)
    page.wait_for_timeout(500)
    highlighted = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot'))
        .filter(g => g.layout && g.layout.uirevision === 'compare')
        .map(g => g.data.filter(t => t.name === 'selection').reduce((n, t) => n + t.x.length, 0))""")
    assert len(highlighted) == 2 and highlighted[0] > 0 and highlighted[0] == highlighted[1], highlighted
    page.get_by_text("Selection:", exact=False).first.scroll_into_view_if_needed()
    shot(page, "runs_compare_linked")
    # a click on one point of A's map selects that item on both maps (the map bridge, webgl_map.map_bridge, passes
    # plotly's click on as a one-point selection: in lasso mode Streamlit's chart alone ignores clicks)
    page.get_by_role("button", name="Clear selection").click()
    page.get_by_text("Lasso or box-select items on either map", exact=False).wait_for(timeout=60_000)
    settle(page)
    page.wait_for_timeout(900)  # the bridge attaches to a drawn chart within 0.4 s
    point = page.evaluate(COMPARE_LONELY_POINT)
    page.mouse.click(point["x"], point["y"])
    page.get_by_text("Selection: 1 items", exact=False).first.wait_for(timeout=60_000)
    settle(page)
    page.wait_for_timeout(500)
    picked = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot'))
        .filter(g => g.layout && g.layout.uirevision === 'compare')
        .map(g => g.data.filter(t => t.name === 'selection').map(t => t.customdata).flat(2))""")
    assert picked == [[point["id"]], [point["id"]]], (picked, point)
    assert not errors, errors
