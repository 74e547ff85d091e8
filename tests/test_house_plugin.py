"""The house plan's promise (docs/development.md): a new head, explainer or lesson is one file plus one
registration, and it trains, explains and renders on every page with no other file touched.

The toy plug-in is the worked examples of docs/development.md ("Adding a method"), copied from that page into a
module in a temporary folder named in METRICLENS_PLUGINS, so the page stays true: it registers itself through the public
registries only, and reaches every process by that one name (issue 24): the Train page's training subprocess and
the dashboard (app.py) import it; the test itself never does. Registries are restored afterwards, so the toy never leaks
into other tests."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]



def readme_plugin() -> str:
    """The worked examples of docs/development.md (the python blocks of "Adding a method"), as one module's source."""
    text = (ROOT / "docs" / "development.md").read_text()
    section = text.split("\n## Adding a method", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 4, "docs/development.md shows a head, a block, an explainer and a lesson"
    return "\n".join(blocks)


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    """The README's plug-in as a module in a temporary folder, on PYTHONPATH and named in METRICLENS_PLUGINS, not
    imported here: the processes under test import it. Every registry it touches and the plug-in loader's memory
    are restored afterwards."""
    from core import plugins, registry
    from core.explain import EXPLAINERS
    from dashboard import lessons

    for reg in (registry.HEADS, registry.BLOCKS, EXPLAINERS, lessons.LESSONS):
        monkeypatch.setattr(reg, "_items", dict(reg._items))
    monkeypatch.setattr(lessons, "_ORDER", list(lessons._ORDER))
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(plugins, "_hooked", set())
    saved_maps = dict(registry.MAP_DESCRIPTIONS)
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "toy_plugin.py").write_text(readme_plugin())
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv(plugins.ENV, "toy_plugin")
    yield folder
    sys.modules.pop("toy_plugin", None)
    registry.MAP_DESCRIPTIONS.clear()
    registry.MAP_DESCRIPTIONS.update(saved_maps)


@pytest.mark.slow  # trains two tiny runs through the Train page's command (~30 s) and renders all seven pages
def test_a_toy_head_explainer_and_lesson_train_explain_and_render_everywhere(toy_plugin, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core import checkpoint as ckpt
    from core.explain import explain, explainers
    from dashboard.jobs import train_command
    from dashboard_testing import TINY_OVERRIDES
    from dashboard.ui import PAGES

    # trains in a subprocess, from the exact command the Train page starts: the CLI imports the plug-in (and not
    # Streamlit: its lesson waits for the dashboard); the Compare page's second run is the toy as built, evaluated
    runs = tmp_path / "runs"
    overrides = TINY_OVERRIDES + ["model.head=toy_max", "model.blocks=[{name: toy_gate, after: stage3}]",
                                  "description=toy max-pooling head"]
    jobs = {name: subprocess.Popen(train_command(str(ROOT / "configs" / "shapes_gap.yaml"), str(runs / name), epochs,
                                                 0, overrides), cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
            for name, epochs in (("toy_run", 1), ("toy_untrained", 0))}
    for name, job in jobs.items():
        log = job.communicate(timeout=600)[0]
        assert job.returncode == 0, log[-3000:]
        assert "streamlit" not in log.lower(), log[-3000:]
    run, untrained = runs / "toy_run", runs / "toy_untrained"
    assert "toy_plugin" not in sys.modules     # nothing in this process has imported it yet

    # renders on every page: app.py loads the plug-in (and its lesson), with the head's map, the new explainer's
    # map and the lesson where they belong
    monkeypatch.setenv("METRICLENS_AUTO_UMAP", "0")
    monkeypatch.setenv("METRICLENS_RUNS", str(runs))
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

    # the weights trained: the learned scale moved, so gradients reached the new head; and it explains through
    # the one verb, with the new explainer offered for the model
    toy_plugin_module = sys.modules["toy_plugin"]
    model, cfg = ckpt.load_run(run)
    assert isinstance(model.head, toy_plugin_module.ToyMaxHead)
    assert float(model.head.scale.detach()) != 1.0
    image = torch.rand(3, cfg.data.image_size, cfg.data.image_size)
    learned = explain(model, image)
    assert set(learned.maps) == {"toy_winners", "toy_gate"} and learned.maps["toy_winners"].shape[0] == 1
    assert "share of channels" in learned.describe("toy_winners")
    assert "toy_brightness" in [e.name for e in explainers("maps", model)]
    assert explain(model, image, explainer="toy_brightness").maps["toy_brightness"].shape == (8, 8)
