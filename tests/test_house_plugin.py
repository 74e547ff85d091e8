"""The house plan's promise (README, Development): a new head, explainer or lesson is one file plus one
registration, and it trains, explains and renders on every page with no other file touched.

The toy plug-in is the README's worked examples ("Adding a method"), copied from README.md into a
temporary module (tmp_path on sys.path), so the README stays true: it registers itself through the public
registries only. Registries are restored afterwards, so the toy never leaks into other tests."""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]



def readme_plugin() -> str:
    """The README's worked examples (the python blocks of "Adding a method"), as one module's source."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Adding a method", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 4, "the README's house plan shows a head, a block, an explainer and a lesson"
    return "\n".join(blocks)


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    """Import the plug-in from a temporary module; every registry it touches is restored afterwards."""
    from core import registry
    from core.explain import EXPLAINERS
    from dashboard import lessons

    for reg in (registry.HEADS, registry.BLOCKS, EXPLAINERS, lessons.LESSONS):
        monkeypatch.setattr(reg, "_items", dict(reg._items))
    monkeypatch.setattr(lessons, "_ORDER", list(lessons._ORDER))
    saved_maps = dict(registry.MAP_DESCRIPTIONS)
    (tmp_path / "toy_plugin.py").write_text(readme_plugin())
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_plugin")
    yield module
    sys.modules.pop("toy_plugin", None)
    registry.MAP_DESCRIPTIONS.clear()
    registry.MAP_DESCRIPTIONS.update(saved_maps)


@pytest.mark.slow  # trains a tiny run (~10 s) and renders all seven pages
def test_a_toy_head_explainer_and_lesson_train_explain_and_render_everywhere(toy_plugin, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core import checkpoint as ckpt
    from core.config import RunConfig
    from core.explain import explain, explainers
    from core.train import train
    from dashboard_testing import TINY_OVERRIDES
    from dashboard.ui import PAGES

    # trains: one tiny epoch on shapes; the learned scale moved, so gradients reached the new head
    run = tmp_path / "toy_run"
    cfg = RunConfig.load(ROOT / "configs" / "shapes_gap.yaml").with_overrides(
        TINY_OVERRIDES + ["model.head=toy_max", "model.blocks=[{name: toy_gate, after: stage3}]", "name=toy_run",
                          "description=toy max-pooling head"])
    train(cfg, run)
    model, _ = ckpt.load_run(run)
    assert isinstance(model.head, toy_plugin.ToyMaxHead)
    assert float(model.head.scale.detach()) != 1.0
    untrained = tmp_path / "toy_untrained"  # the Compare page's second run: the toy as built, evaluated
    train(cfg.with_overrides(["train.epochs=0", "name=toy_untrained"]), untrained)

    # explains: the head's map through the one verb, and the new explainer is offered for the model
    image = torch.rand(3, cfg.data.image_size, cfg.data.image_size)
    learned = explain(model, image)
    assert set(learned.maps) == {"toy_winners", "toy_gate"} and learned.maps["toy_winners"].shape[0] == 1
    assert "share of channels" in learned.describe("toy_winners")
    assert "toy_brightness" in [e.name for e in explainers("maps", model)]
    assert explain(model, image, explainer="toy_brightness").maps["toy_brightness"].shape == (8, 8)

    # renders on every page, with the head's map, the new explainer's map and the lesson where they belong
    monkeypatch.setenv("METRICLENS_AUTO_UMAP", "0")
    monkeypatch.setenv("METRICLENS_RUNS", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["run"] = str(run.resolve())
    at.session_state["compare_run"] = str(untrained.resolve())
    at.run()
    shown = {}
    for page, path in PAGES.items():
        at.switch_page(path).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
        shown[page] = " ".join([m.value for m in at.markdown] + [h.value for h in at.header] +
                               [c.caption for img in at.get("image") for c in img.proto.imgs])
    assert all(name in shown["attention"] for name in ("toy_winners", "toy_gate", "toy_brightness"))
    assert "Toy — max pooling with a learned scale" in shown["learn"] and "2 trained run(s)" in shown["learn"]  # both toy runs
    assert "toy winners" in shown["learn"]
