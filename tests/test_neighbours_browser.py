"""Issue 24 in headless Chromium, the bring-your-own-embeddings flow: 5,000 × 128 embeddings and a labels CSV with two
extra fields, no images, imported with `python -m core import`. A click on the map lists the item's nearest
neighbours as a table; a lasso lists the selection; Retrieval lists the top-k and the hardest failures. Each listed
neighbour is checked against a brute-force top-k. Screenshots go to test-output/screenshots/ (git-ignored)."""
from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from dashboard_testing import CHROMIUM, PLOT_AREA, dashboard_server, lasso, settle
from tests.test_explorer_browser import LONELY_POINT

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"
N, DIM, CLASSES = 5000, 128, 50

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")]

# the cells of the accessible table Streamlit's dataframe keeps beside its canvas: [[header...], [row...], ...]
TABLE_CELLS = """(index) => Array.from(document.querySelectorAll('[data-testid=stDataFrame]')[index]
    .querySelectorAll('table tr')).map(r => Array.from(r.children).map(c => c.innerText.trim()))"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An embeddings-only import as a researcher makes one: clustered 5,000 × 128 embeddings (some classes overlap,
    so some top-1s are wrong), labels.csv with label, site (a few values) and specimen (one per item)."""
    from core.__main__ import main

    scratch = tmp_path_factory.mktemp("neighbours_browser")
    rng = np.random.default_rng(24)
    labels = rng.integers(CLASSES, size=N)
    emb = (rng.normal(size=(CLASSES, DIM))[labels] + 2.0 * rng.normal(size=(N, DIM))).astype(np.float32)
    np.save(scratch / "embeddings.npy", emb)
    (scratch / "labels.csv").write_text("label,site,specimen\n" + "".join(
        f"species_{c:02d},site_{i % 7},S{i:05d}\n" for i, c in enumerate(labels)))
    run = scratch / "runs" / "my_embeddings"
    assert main(["import", "--embeddings", str(scratch / "embeddings.npy"), "--labels", str(scratch / "labels.csv"),
                 "--out", str(run)]) == 0
    env = dict(os.environ, METRICLENS_AUTO_UMAP="0", METRICLENS_RUNS=str(run.parent))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    with dashboard_server(env) as (base, _):
        yield base, run.name, unit, labels


def brute_force_top(unit: np.ndarray, item: int, k: int) -> list[int]:
    sims = unit @ unit[item]
    sims[item] = -np.inf
    return np.argsort(-sims, kind="stable")[:k].tolist()


def table(page, index: int) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the page's index-th table, once it is drawn."""
    page.locator("[data-testid=stDataFrame]").nth(index).locator("table tr").nth(1).wait_for(state="attached",
                                                                                           timeout=30_000)
    cells = page.evaluate(TABLE_CELLS, index)
    return cells[0], cells[1:]


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def test_an_embeddings_only_import_lists_its_neighbours_as_text(server, browser):
    base, run, unit, labels = server
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(base + "/?" + urllib.parse.urlencode({"run": run}))
    page.locator(PLOT_AREA).first.wait_for(timeout=90_000)
    settle(page)
    page.wait_for_timeout(900)     # the page's script attaches to the map within 0.4 s of its draw

    # a click: the item's own row, then its 8 nearest neighbours, with the CSV's fields
    point = page.evaluate(LONELY_POINT)
    page.mouse.click(point["x"], point["y"])
    item = point["id"]
    page.get_by_text(f"Nearest neighbours of #{item}", exact=False).wait_for(timeout=60_000)
    settle(page)
    header, rows = table(page, 0)
    assert header[:5] == ["rank", "item", "label", "cosine", "same class"] and {"site", "specimen"} <= set(header)
    assert [int(r[1]) for r in rows] == [item, *brute_force_top(unit, item, 8)]
    assert rows[0][header.index("specimen")] == f"S{item:05d}" and rows[0][4] == "query"
    assert [r[4] for r in rows[1:]] == ["✓" if labels[int(r[1])] == labels[item] else "✗" for r in rows[1:]]
    assert page.locator("[data-testid=stImage]").count() == 0       # no images: no empty frames either
    page.get_by_text(f"Nearest neighbours of #{item}", exact=False).scroll_into_view_if_needed()
    shot(page, "24_embeddings_only_neighbours")

    # a lasso: the selection's table, each item with its top-1 neighbour
    page.locator(PLOT_AREA).first.scroll_into_view_if_needed()
    lasso(page, 0, 0.2)
    page.get_by_text("Selection:", exact=False).first.wait_for(timeout=60_000)
    settle(page)
    header, rows = table(page, 0)
    assert header[:5] == ["item", "label", "split", "top-1", "top-1 label"] and len(rows) > 1
    first = int(rows[0][0])
    assert int(rows[0][3]) == brute_force_top(unit, first, 1)[0]
    shot(page, "24_embeddings_only_selection")

    # Retrieval: the top-k of a query and the hardest failures, as tables
    page.goto(base + "/retrieval?" + urllib.parse.urlencode({"run": run, "query": 17}))
    page.get_by_text("Hardest failures").wait_for(timeout=90_000)
    settle(page)
    header, rows = table(page, 0)
    assert [int(r[1]) for r in rows] == [17, *brute_force_top(unit, 17, 8)]
    header, rows = table(page, 1)
    assert header[:4] == ["query", "label", "top-1", "top-1 label"] and len(rows) == 8
    assert all(labels[int(r[2])] != labels[int(r[0])] for r in rows)   # each listed top-1 is of another class
    shot(page, "24_embeddings_only_retrieval")
    assert not errors, errors
