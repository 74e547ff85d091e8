import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("METRICLENS_CACHE", str(ROOT / ".cache"))

from core.config import RunConfig  # noqa: E402


def _tiny_cfg() -> RunConfig:
    cfg = RunConfig.load(ROOT / "configs" / "shapes_gap.yaml")
    return cfg.with_overrides(["data.max_per_class=12", "train.epochs=2", "train.batch_size=32",
                               "model.embed_dim=32", "data.shapes.test_per_class=12"])


@pytest.fixture
def tiny_cfg() -> RunConfig:
    """A shapes run small enough to train in seconds on a CPU."""
    return _tiny_cfg()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run directory, metrics) of one tiny_cfg run, trained once per test module: tests read it, and a
    test that changes a run copies it first."""
    from core.train import train

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    return run, train(_tiny_cfg(), run)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright, one per test module (the browser tests skip without it)."""
    from playwright.sync_api import sync_playwright

    from dashboard_testing import CHROMIUM, LAUNCH_ARGS

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()
