"""The counterfactual re-ranking in a real browser (issue 26): a click on a cell of the query's grid hides it and the
list re-ranks; a box dragged over a region hides the region; a click on a hidden cell shows it again. Headless
Debian Chromium driven by Playwright; screenshots under test-output/screenshots/.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

import pytest

from dashboard_testing import CHROMIUM, dashboard_server, demo_runs, images_loaded, settle

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"
PICKER = "[class*='st-key-rerank_picker_retrieval']"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = [str(r.resolve()) for r in demo_runs(tmp_path_factory.mktemp("rerank_runs"), 1)]
    env = dict(os.environ, METRICLENS_AUTO_UMAP="0", METRICLENS_RUNS=str(Path(runs[0]).parent))
    with dashboard_server(env) as (base, _):
        yield base, runs[0]


def hidden(page, count: int, cells: int) -> None:
    """Wait until the panel says `count` of `cells` cells are hidden."""
    page.locator("[data-testid='stMarkdownContainer']", has_text=f"{count} of {cells} cells hidden").first.wait_for(
        timeout=60_000)
    settle(page)


def cell_centre(page, row: int, col: int, side: int) -> tuple[float, float]:
    """Where the marker of a cell is drawn (one marker per cell, in raster order), scrolled into the viewport
    (the mouse clicks at viewport coordinates; the panel sits below the neighbours)."""
    page.locator(PICKER).first.scroll_into_view_if_needed()
    box = page.locator(f"{PICKER} .scatterlayer .point").nth(row * side + col).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_click_and_drag_on_the_grid_rerank_the_list(server, browser):
    base, run = server
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{base}/retrieval?" + urllib.parse.urlencode({"run": run, "query": 2}))
    page.locator(f"{PICKER} .nsewdrag").first.wait_for(timeout=120_000)
    settle(page)
    summary = page.locator("[data-testid='stMarkdownContainer']", has_text="cells hidden").first.inner_text()
    cells = int(re.search(r"0 of (\d+) cells hidden", summary).group(1))
    side = int(round(cells ** 0.5))
    assert "top-1 #" in summary and "stays" in summary

    page.mouse.click(*cell_centre(page, side // 2, side // 2, side))       # one click: one cell hidden
    hidden(page, 1, cells)

    page.get_by_text("drag a box").click()                                # a box over the top half
    settle(page)
    (x0, y0), (x1, y1) = cell_centre(page, 0, 0, side), cell_centre(page, side // 2 - 1, side - 1, side)
    page.mouse.move(x0 - 4, y0 - 4)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1 + 4, y1 + 4, steps=5)
    page.mouse.up()
    hidden(page, 1 + side * side // 2, cells)
    images_loaded(page)
    moved = page.locator("[data-testid='stMarkdownContainer']", has_text="cells hidden").first.inner_text()
    assert f"{side * side // 2} of the former top" in moved or "still in the top" in moved
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator(PICKER).first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "rerank_retrieval.png"))

    page.get_by_text("click cells").click()
    settle(page)
    page.mouse.click(*cell_centre(page, side // 2, side // 2, side))       # the hidden cell again: shown
    hidden(page, side * side // 2, cells)
    assert not errors, errors
