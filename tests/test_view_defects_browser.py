"""Issue 27's defects outside Explore, in headless Chromium (one server for the module), in light and dark
themes: the star and ring label's halo follows the theme; Compare's lassoed selection is outlined on both
maps; Attention's all-channels grid and its PNG/SVG downloads. Screenshots go to test-output/screenshots/.
(The AppTest side of the same defects: tests/test_view_defects.py.)"""
from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest

from dashboard_testing import (CHROMIUM, PLOT_AREA, SHIPPED, dashboard_server, demo_runs, images_loaded, is_finished,
                               lasso, settle)

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")]


@pytest.fixture(scope="module")
def app(tmp_path_factory, browser):
    """(base URL, two runs of the same items, browser)."""
    runs = [str(r.resolve()) for r in demo_runs(tmp_path_factory.mktemp("defect_runs"), 2)]
    env = dict(os.environ, METRICLENS_AUTO_UMAP="0",
               METRICLENS_RUNS=os.pathsep.join(sorted({str(Path(r).parent) for r in runs})))
    with dashboard_server(env) as (base, _):
        yield base, runs, browser


def open_page(app, scheme: str, height: int = 1500, **params):
    base, _, browser = app
    page = browser.new_page(viewport={"width": 1400, "height": height}, accept_downloads=True, color_scheme=scheme)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(base + "/?" + urllib.parse.urlencode(params))
    return page, errors


def shot(page, name: str, full_page: bool = False) -> None:
    images_loaded(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def rgb(colour: str) -> tuple[int, ...]:
    if colour.startswith("#"):
        return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return tuple(int(float(v)) for v in colour[colour.index("(") + 1:colour.index(")")].split(",")[:3])


BACKGROUND = "getComputedStyle(document.querySelector('[data-testid=stApp]')).backgroundColor"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_star_label_halo_follows_the_theme(app, scheme):
    """Issue 27: the clicked item's label (and the star's edge) had a white halo, glaring on a dark page."""
    _, runs, _ = app
    page, errors = open_page(app, scheme, run=runs[0], sel="12", query="12")
    label = page.locator("#metriclens-focus-layer text")
    label.wait_for(state="attached", timeout=90_000)
    settle(page)
    background = rgb(page.evaluate(BACKGROUND))
    assert (sum(background) < 200) == (scheme == "dark")
    assert rgb(label.get_attribute("stroke")) == background
    assert rgb(page.locator("#metriclens-focus-layer path").first.get_attribute("stroke")) == background
    shot(page, f"27_explore_star_{scheme}")
    assert not errors, errors
    page.close()


MAPS = ("Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".filter(g => g.layout && g.layout.meta === 'metriclens-map')")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_compare_lasso_outlines_the_selection_on_both_maps(app, scheme):
    _, runs, _ = app
    page, errors = open_page(app, scheme, height=1300, page="compare", run=runs[0], compare=runs[1])
    page.locator(PLOT_AREA).nth(1).wait_for(timeout=90_000)
    settle(page)
    page.wait_for_timeout(900)    # the page's script attaches to the charts
    lasso(page, 0, radius_share=0.25)
    page.get_by_text("Selection:", exact=False).wait_for(timeout=90_000)
    settle(page)
    page.wait_for_function(f"{MAPS}.every(g => g._fullData.length === 2)", timeout=30_000)
    count = int(page.get_by_text("Selection:", exact=False).inner_text().split("Selection: ")[1].split()[0])
    outlined = page.evaluate(f"{MAPS}.map(g => [g._fullData[1].customdata.length, g._fullData[1].marker.line.color])")
    assert [n for n, _ in outlined] == [count, count] and count > 0      # the same items outlined on both maps
    assert {colour for _, colour in outlined} == {"#c800c8"}
    page.mouse.move(5, 5)
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, f"27_compare_selection_{scheme}")
    assert not errors, errors
    page.close()


@pytest.mark.skipif(not is_finished(SHIPPED / "shapes_csa"), reason="the shipped shapes_csa run is missing")
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_attention_grid_of_every_channel_and_its_downloads(app, scheme):
    page, errors = open_page(app, scheme, height=2600, page="attention", run="shapes_csa", query="7")
    toggle = page.get_by_text("All 64 channels of the query's csa_base")
    toggle.wait_for(timeout=180_000)
    settle(page)
    toggle.click()
    page.get_by_text("csa_base[63] · share", exact=False).wait_for(timeout=60_000)
    settle(page)
    grid = page.get_by_text("csa_base[0] · share", exact=False)
    grid.scroll_into_view_if_needed()
    page.mouse.move(5, 5)
    shot(page, f"27_attention_grid_{scheme}")
    if scheme == "light":   # the files do not depend on the page's theme
        buttons = page.locator("[data-testid=stDownloadButton]")
        assert buttons.count() >= 6
        for label, magic in (("PNG", b"\x89PNG"), ("SVG", b"<?xml")):
            with page.expect_download(timeout=60_000) as download:
                page.locator("[data-testid=stDownloadButton]").filter(has_text=label).first.click()
            path = download.value.path()
            assert Path(path).read_bytes()[:len(magic)] == magic
            assert download.value.suggested_filename.endswith("." + label.lower())
    assert not errors, errors
    page.close()
