"""The house plan's promise (README, Development): a new head, explainer or lesson is one file plus one
registration, and it trains, explains and renders on every page with no other file touched.

The toy plug-in below is written to a temporary module (tmp_path on sys.path) and registers itself
through the public registries only; the README's worked examples are the same code. Registries are
restored afterwards, so the toy never leaks into other tests."""
from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = textwrap.dedent('''
    """A toy plug-in: a max-pooling head with one learned scale, an explainer and a lesson."""
    import streamlit as st
    import torch
    import torch.nn.functional as F
    from torch import nn

    from core.explain import Explanation, register_explainer
    from core.models.heads.base import Head, HeadOutput
    from core.registry import register_head, register_map
    from dashboard import state
    from dashboard.lessons import register_lesson

    register_map("toy_winners", "toy max pooling: the share of channels whose maximum sits at each position")


    @register_head("toy_max")
    class ToyMaxHead(Head):
        """embedding = unit(W · (s · max over positions of X)), s one learned scale."""

        def __init__(self, in_channels, embed_dim, num_classes=None):
            super().__init__(in_channels, embed_dim, num_classes)
            self.out_dim = embed_dim
            self.proj = nn.Linear(in_channels, embed_dim)
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, features):                                          # B×C×h×w
            peak = features.amax((2, 3), keepdim=True)                        # B×C×1×1
            winners = (features == peak).float().mean(1, keepdim=True)       # B×1×h×w
            return HeadOutput(F.normalize(self.proj(self.scale * peak.flatten(1)), dim=-1), {"toy_winners": winners})


    @register_explainer("toy_brightness", kind="maps", title="brightness")
    def brightness(model, query, reference=None):
        """Mean brightness of the image on an 8×8 grid (a stand-in for any new explainer)."""
        grid = F.adaptive_avg_pool2d(query.mean(0, keepdim=True)[None], 8)[0, 0]
        return Explanation({"toy_brightness": grid.numpy()}, descriptions={"toy_brightness": "mean brightness"})


    @register_lesson("toy_max", title="Toy — max pooling with a learned scale")
    def toy_lesson(ctx):
        st.markdown(f"Max pooling keeps each channel's strongest position ({len(ctx.runs)} trained run(s)).")
        for run in ctx.runs[:1]:
            maps = state.explanation(run, ctx.pixels).maps["toy_winners"]
            ctx.panels(list(maps), ["toy winners"])
''')


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    """Import the plug-in from a temporary module; every registry it touches is restored afterwards."""
    from core import registry
    from core.explain import EXPLAINERS
    from dashboard import lessons

    for reg in (registry.HEADS, EXPLAINERS, lessons.LESSONS):
        monkeypatch.setattr(reg, "_items", dict(reg._items))
    monkeypatch.setattr(lessons, "_ORDER", list(lessons._ORDER))
    saved_maps = dict(registry.MAP_DESCRIPTIONS)
    (tmp_path / "toy_plugin.py").write_text(PLUGIN)
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
    from dashboard.testing import TINY_OVERRIDES
    from dashboard.ui import PAGES

    # trains: one tiny epoch on shapes; the learned scale moved, so gradients reached the new head
    run = tmp_path / "toy_run"
    cfg = RunConfig.load(ROOT / "configs" / "shapes_gap.yaml").with_overrides(
        TINY_OVERRIDES + ["model.head=toy_max", "name=toy_run", "description=toy max-pooling head"])
    train(cfg, run)
    model, _ = ckpt.load_run(run)
    assert isinstance(model.head, toy_plugin.ToyMaxHead)
    assert float(model.head.scale.detach()) != 1.0
    untrained = tmp_path / "toy_untrained"  # the Compare page's second run: the toy as built, evaluated
    train(cfg.with_overrides(["train.epochs=0", "name=toy_untrained"]), untrained)

    # explains: the head's map through the one verb, and the new explainer is offered for the model
    image = torch.rand(3, cfg.data.image_size, cfg.data.image_size)
    learned = explain(model, image)
    assert set(learned.maps) == {"toy_winners"} and learned.maps["toy_winners"].shape[0] == 1
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
    assert "toy_winners" in shown["attention"] and "toy_brightness" in shown["attention"]
    assert "Toy — max pooling with a learned scale" in shown["learn"] and "2 trained run(s)" in shown["learn"]  # both toy runs
    assert "toy winners" in shown["learn"]
