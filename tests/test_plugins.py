"""Plug-ins reach every process (issue 24): a module named in METRICLENS_PLUGINS or in a `metriclens.plugins` entry
point is imported by the CLI (so by the Train page's training subprocess), the dashboard and a registry lookup.

Real input: a backbone plug-in in one file (`@register_backbone`), trained on shapes and loaded again in fresh
processes, once named by the environment variable and once by an installed package's entry point."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKBONE_PLUGIN = textwrap.dedent('''
    """A backbone in one file: two strided convolutions, 64 px in -> 16×16 features."""
    from collections import OrderedDict

    from torch import nn

    from core.models.backbones import Backbone
    from core.registry import register_backbone


    @register_backbone("toy_strided")
    def toy_strided(pretrained: bool = False) -> Backbone:
        stages = OrderedDict(stem=nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU()),
                             body=nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU()))
        return Backbone(stages, {"stem": 16, "body": 32}, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
''')


@pytest.fixture
def fresh_loader(monkeypatch):
    """The plug-in loader's memory and the registries as they were; imported plug-ins forgotten afterwards."""
    from core import plugins, registry

    for reg in (registry.BACKBONES, registry.HEADS):
        monkeypatch.setattr(reg, "_items", dict(reg._items))
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(plugins, "_hooked", set())
    monkeypatch.delenv(plugins.ENV, raising=False)
    before = set(sys.modules)
    yield plugins
    for name in set(sys.modules) - before:
        if name.startswith(("toy_", "lab_")):
            sys.modules.pop(name, None)


def write_module(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    return folder


def test_a_registry_lookup_loads_the_named_plugins_and_says_which(fresh_loader, tmp_path, monkeypatch):
    from core.registry import BACKBONES, UnknownName

    monkeypatch.syspath_prepend(str(write_module(tmp_path, "toy_backbone_a", BACKBONE_PLUGIN)))
    with pytest.raises(UnknownName, match=r"unknown backbone 'toy_strided'.*no plug-ins loaded.*METRICLENS_PLUGINS"):
        BACKBONES.get("toy_strided")
    monkeypatch.setenv("METRICLENS_PLUGINS", "toy_backbone_a")
    assert BACKBONES.get("toy_strided")().channels == {"stem": 16, "body": 32}   # imported on the lookup's miss
    with pytest.raises(UnknownName, match=r"unknown backbone 'nope'.*plug-ins loaded: toy_backbone_a \(METRICLENS_PLUGINS\)"):
        BACKBONES.get("nope")
    monkeypatch.setenv("METRICLENS_PLUGINS", "toy_backbone_a, toy_not_there")
    with pytest.raises(UnknownName, match=r"plug-in 'toy_not_there' .*cannot be imported.*PYTHONPATH"):
        BACKBONES.get("nope")


def test_only_the_dashboard_runs_a_plugins_lesson_hook_once(fresh_loader, tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    source = f"def metriclens_dashboard():\n    open({str(calls)!r}, 'a').write('x')\n"
    monkeypatch.syspath_prepend(str(write_module(tmp_path, "toy_lessons", source)))
    monkeypatch.setenv("METRICLENS_PLUGINS", "toy_lessons")
    assert fresh_loader.load_plugins() == ["toy_lessons"] and not calls.exists()   # the CLI: imported, no hook
    fresh_loader.load_plugins(dashboard=True)
    fresh_loader.load_plugins(dashboard=True)                                      # app.py on every rerun
    assert calls.read_text() == "x"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "METRICLENS_PLUGINS"}
    return env | extra


@pytest.mark.slow  # trains a tiny run and starts three fresh interpreters (~30 s)
def test_a_plugin_backbone_trains_and_loads_in_fresh_processes(tmp_path):
    """Trained through the CLI with METRICLENS_PLUGINS; evaluated in a fresh process found by its entry point (an
    installed package's `metriclens.plugins` group); without either the command says how to name it."""
    site = write_module(tmp_path / "site", "lab_backbone", BACKBONE_PLUGIN)
    info = site / "lab_backbone-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-backbone\nVersion: 0.1\n")
    elsewhere = write_module(tmp_path / "elsewhere", "lab_backbone", BACKBONE_PLUGIN)
    from dashboard_testing import TINY_OVERRIDES

    run = tmp_path / "run"
    train = [sys.executable, "-m", "core", "train", "--config", str(ROOT / "configs" / "shapes_gap.yaml"), "--out",
             str(run), *TINY_OVERRIDES, "model.backbone=toy_strided"]
    done = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=_env(PYTHONPATH=str(elsewhere), METRICLENS_PLUGINS="lab_backbone"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["model"]["backbone"] == "toy_strided"

    evaluate = [sys.executable, "-m", "core", "evaluate", str(run), "--json"]
    missing = subprocess.run(evaluate, cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env=_env(PYTHONPATH=str(site)))
    assert missing.returncode == 2 and "unknown backbone 'toy_strided'" in missing.stderr
    assert "METRICLENS_PLUGINS" in missing.stderr, missing.stderr[-2000:]
    (info / "entry_points.txt").write_text("[metriclens.plugins]\nlab = lab_backbone\n")
    found = subprocess.run(evaluate, cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env=_env(PYTHONPATH=str(site)))
    assert found.returncode == 0, found.stderr[-3000:]
    metrics = json.loads(found.stdout)
    shipped = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["recall@1"] == pytest.approx(shipped["recall@1"])   # the same weights, rebuilt elsewhere


def test_a_plugin_that_does_not_import_stops_the_cli_with_a_message(fresh_loader, tmp_path, monkeypatch, capsys):
    from core.__main__ import main

    monkeypatch.setenv("METRICLENS_PLUGINS", "toy_missing_plugin")
    assert main(["umap", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "plug-in 'toy_missing_plugin' (named in METRICLENS_PLUGINS) cannot be imported" in err
    assert "embeddings.npy" not in err          # stopped before the command ran
