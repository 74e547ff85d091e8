"""Issue 27's defects outside Explore, under Streamlit's AppTest on the shipped runs: Compare's selection stands
out and its colour scale fits the data; CSA's default channel is the one that concentrates; Attention's
all-channels grid and downloads; teaching mode says why there is no Train page; the Learn page's GAP panel
keeps the object's colour. (The dark-theme halo and the screenshots: tests/test_view_defects_browser.py.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard_testing import SHIPPED, item_maps, is_finished
from tests.test_dashboard_pages import open_app

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
CSA = SHIPPED / "shapes_csa"
LIGHT, DARK = "#ffffff", "#0e1117"   # Streamlit's page backgrounds


@pytest.fixture(scope="module", autouse=True)
def no_umap():
    saved = os.environ.get("METRICLENS_AUTO_UMAP")
    os.environ["METRICLENS_AUTO_UMAP"] = "0"  # never start UMAP's numba JIT in a test
    yield
    if saved is None:
        os.environ.pop("METRICLENS_AUTO_UMAP", None)
    else:
        os.environ["METRICLENS_AUTO_UMAP"] = saved


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from dashboard_testing import demo_runs

    return [str(r.resolve()) for r in demo_runs(tmp_path_factory.mktemp("defect_runs"), 2)]


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "title", "info", "error", "warning", "success")
                     for e in at.get(kind))


def plotly_list(value) -> list:
    """A figure array from the chart's JSON: a list, or a typed array ({"dtype", "bdata"}: base64 of the values)."""
    if isinstance(value, dict) and "bdata" in value:
        import base64
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def luminance(colour: str) -> float:
    rgb = np.asarray([int(colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    linear = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


# ---- Compare ----------------------------------------------------------------------------------------------
def test_compare_selection_stands_out_and_the_scale_fits_the_changes(runs):
    """Issue 27: most items do not change (grey) and a selection of them kept that grey against faded grey;
    the colour scale ran to the largest change, so a few outliers washed every other change out."""
    from dashboard import artifacts, logic

    at = open_app(runs[0], "compare", compare_run=runs[1])
    shift = logic.rank_shift(artifacts.retrieval(runs[0]), artifacts.retrieval(runs[1]), "first match rank")
    grey = np.flatnonzero(shift == 0)
    assert len(grey) > len(shift) / 2          # the case of the issue: most items do not change
    picked = sorted(grey[:: max(1, len(grey) // 12)][:12].tolist())
    at.session_state["compare_selection"] = {"runs": {"A": runs[0], "B": runs[1]}, "ids": picked}
    at.run()
    assert not at.exception
    assert "Selection: 12 items" in texts(at)
    maps = [m for m in item_maps(at) if m.key.startswith("compare_map_")]
    assert len(maps) == 2
    for m in maps:
        traces = json.loads(m.proto.spec)["data"]
        base, top = traces[0], traces[-1]
        # drawn on top, exactly the selection, outlined in a colour that is none of the scale's and stands out
        # 3:1 or more on a light and on a dark page
        assert sorted(int(np.ravel(c)[0]) for c in plotly_list(top["customdata"])) == picked
        line = top["marker"]["line"]
        assert line["width"] >= 2 and contrast(line["color"], LIGHT) >= 3 and contrast(line["color"], DARK) >= 3
        assert top["marker"]["size"] > base["marker"]["size"]
        # a symmetric scale clipped to the data: most changes inside it, the few largest beyond its ends
        low, high = base["marker"]["cmin"], base["marker"]["cmax"]
        changed = np.abs(shift[shift != 0])
        assert low == -high and 0 < high < changed.max()
        assert (changed <= high).mean() >= 0.9


# ---- Attention -------------------------------------------------------------------------------------------
needs_csa = pytest.mark.skipif(not is_finished(CSA), reason="the shipped shapes_csa run is missing")


def on_target(run: str, item: int, maps: np.ndarray) -> np.ndarray:
    """Each channel's share of its mass on the item's ground-truth target mask (the shapes set has masks)."""
    from core.map_scores import mass_on_object
    from core.run_items import RunItems

    mask = RunItems(run).annotation(item)["mask"]
    return np.asarray([mass_on_object(channel, mask) for channel in maps])


@needs_csa
def test_csa_default_channel_is_the_concentrated_one_on_the_target():
    """Issue 27: the default channel was the one with the largest sum, which is 1 for every channel of CSA's
    base maps, so on shapes_csa query 7 it lit a distractor. The default is now the channel whose mass is most
    compact (smallest spread around its centre), and on query 7 it lies on the target more than the old pick."""
    from dashboard import explanations

    run, query = str(CSA.resolve()), 7
    at = open_app(run, "attention", query=query)
    maps = explanations.explain(run, explanations.model_input(run, query)).maps
    assert {"csa_base", "csa_weights"} <= set(maps)
    for name in ("csa_base", "csa_weights"):
        box = at.selectbox(key=f"attention_ch_{name}")
        default = box.value
        old = int(maps[name].reshape(len(maps[name]), -1).sum(1).argmax())
        mass = on_target(run, query, maps[name])
        assert isinstance(default, int) and default != old
        assert mass[default] > mass[old] + 0.3, (name, default, mass[default], old, mass[old])
        assert mass[default] > 0.5     # most of the chosen map lies on the target


@needs_csa
def test_attention_grid_shows_every_channel_with_its_share_and_offers_downloads():
    from dashboard import explanations

    run, query = str(CSA.resolve()), 7
    at = open_app(run, "attention", query=query)
    maps = explanations.explain(run, explanations.model_input(run, query)).maps
    at.toggle(key="attention_grid_csa_base").set_value(True).run()
    assert not at.exception
    captions = [c for img in at.get("image") for c in [i.caption for i in img.proto.imgs]
                if c.startswith("csa_base[") and " · share " in c]
    assert len(captions) == len(maps["csa_base"])            # one small multiple per channel
    assert [c.split("]")[0] for c in captions] == [f"csa_base[{k}" for k in range(len(captions))]
    shares = np.asarray([float(c.split("share ")[1].split("%")[0]) for c in captions])
    assert abs(shares.sum() - 100) < 1                       # each channel's share of the query's map
    starred = [k for k, c in enumerate(captions) if c.endswith("★")]
    assert starred == [at.selectbox(key="attention_ch_csa_base").value]   # the channel shown first is marked
    downloads = [b.proto.label for b in at.get("download_button")]
    assert {"PNG", "SVG"} <= set(downloads) and len(downloads) >= 6   # every figure: the rows and the grid


def test_slide_figure_is_a_png_and_an_svg_of_the_panels():
    from PIL import Image
    import io

    from dashboard import slides

    rng = np.random.default_rng(0)
    panels = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(7)]
    figure = slides.Sheet(panels, [f"panel {i}" for i in range(7)], title="csa_base · query 7",
                          scale=(0.0, 0.25, False), columns=4)
    png = Image.open(io.BytesIO(figure.png()))
    assert png.format == "PNG" and png.width > 4 * 64 and png.height > 2 * 64
    svg = figure.svg().decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "panel 6" in svg and "csa_base · query 7" in svg
    assert svg.count("<image") >= 8                # seven panels and the colour bar


# ---- teaching mode and Learn -----------------------------------------------------------------------------
def test_teaching_mode_says_training_is_off_when_a_link_asks_for_train(runs, monkeypatch):
    monkeypatch.setenv("METRICLENS_MODE", "demo")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = "train"
    at.run()
    assert not at.exception
    assert at.title[0].value == "Explore the embedding"
    assert "Training is turned off in teaching mode" in texts(at)
    at.run()                                          # said on landing, not on every rerun
    assert "Training is turned off in teaching mode" not in texts(at)


def test_gap_lesson_keeps_the_objects_colour(runs, monkeypatch):
    """Issue 27: the GAP panel's uniform map was tinted at 0.6 opacity, which turned the green circle brown."""
    from streamlit.delta_generator import DeltaGenerator

    from core.run_items import RunItems
    from dashboard import dataset, logic

    shown: dict[str, np.ndarray] = {}
    real = DeltaGenerator.image

    def spy(self, image, caption=None, *args, **kwargs):
        if isinstance(caption, str) and isinstance(image, np.ndarray):
            shown[caption] = image
        return real(self, image, caption, *args, **kwargs)
    monkeypatch.setattr(DeltaGenerator, "image", spy)
    at = open_app(runs[0], "learn")
    assert any(h.value.startswith("GAP") for h in at.header)
    panel = next(image for caption, image in shown.items() if caption.startswith("uniform weights"))
    original = logic.to_uint8(dataset.model_input(runs[0], 0)).astype(float)   # the Learn page's test item 0
    step = panel.shape[0] // original.shape[0]
    panel = panel[::step, ::step].astype(float)
    target = RunItems(runs[0]).annotation(0)["mask"]
    assert target.sum() > 20
    # the object's colour as drawn (the median: thin grid lines may cross it) within a few levels of the image's
    drawn, true = np.median(panel[target], 0), np.median(original[target], 0)
    assert np.abs(drawn - true).max() < 12, (drawn, true)
    assert drawn.argmax() == true.argmax()
