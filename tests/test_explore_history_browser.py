"""Issue 27 on Explore in headless Chromium: Back and Forward restore the selection, the clicked item's neighbours
and its rings (not only the URL and caption), and the item table with its filter chips selects on the map.
Screenshots go to test-output/screenshots/ (git-ignored)."""
from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

import pytest

from dashboard_testing import CHROMIUM, PLOT_AREA, dashboard_server, demo_runs, settle
from test_browser import shot

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = str(demo_runs(tmp_path_factory.mktemp("history_runs"), 1)[0].resolve())
    env = dict(os.environ, METRICLENS_AUTO_UMAP="0", METRICLENS_RUNS=str(Path(run).parent))
    with dashboard_server(env) as (base, _):
        yield base, run


def open_explore(server, browser, **params):
    base, run = server
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(base + "/?" + urllib.parse.urlencode({"run": run, **params}))
    page.locator(PLOT_AREA).first.wait_for(timeout=90_000)
    settle(page)
    return page, errors


def focused(page) -> int | None:
    """The item whose star and rings the page hands the map (map_bridge.js draws them)."""
    payload = json.loads(page.locator(".metriclens-focus").first.get_attribute("data-focus") or "{}")
    return payload.get("item")


def shows(page, item: int) -> None:
    """Wait until the page lists `item`'s neighbours, then check its selection, rings and URL are that item's."""
    page.get_by_text(f"Nearest neighbours of #{item} ", exact=False).wait_for(timeout=60_000)
    settle(page, debounce=False)
    assert page.get_by_text("Nearest neighbours of #", exact=False).count() == 1
    assert page.get_by_text("Selection: 1 of", exact=False).count() == 1
    assert focused(page) == item
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    assert query["sel"] == [str(item)] and query["query"] == [str(item)]


def test_back_and_forward_restore_the_selection_and_neighbours(server, browser):
    page, errors = open_explore(server, browser, sel="5", query=5)
    shows(page, 5)
    for item in (6, 7):
        page.get_by_role("button", name="Next ›").click()
        shows(page, item)
    page.go_back()
    shows(page, 6)
    shot(page, "27_explore_back")
    page.go_back()
    shows(page, 5)
    page.go_forward()
    shows(page, 6)
    assert not errors, errors


def test_item_table_filters_and_selects_on_the_map(server, browser):
    page, errors = open_explore(server, browser)
    table = page.get_by_text("Items", exact=True)
    table.wait_for(timeout=60_000)
    page.locator("[data-testid='stButtonGroup']").get_by_text("wrong at top-1").click()
    settle(page)
    kept = page.get_by_text("items kept", exact=False)
    kept.wait_for(timeout=60_000)
    count = int(kept.inner_text().split("**")[-1].split()[0]) if "**" in kept.inner_text() else int(
        kept.inner_text().split()[0])
    kept.scroll_into_view_if_needed()
    shot(page, "28_explore_item_table_filtered")
    page.get_by_role("button", name=f"Select these {count} on the map").click()
    page.get_by_text(f"Selection: {count} of", exact=False).wait_for(timeout=60_000)
    settle(page)
    page.locator(PLOT_AREA).first.scroll_into_view_if_needed()
    shot(page, "29_explore_table_selected_on_map")
    assert not errors, errors
