"""Teaching lessons, one per method, registered beside it: `@register_lesson("gsp")` in lessons/gsp.py.

A lesson is a function `lesson(ctx: LessonContext) -> None` that draws its section of the Learn page with
Streamlit (so lessons live on the dashboard side: core never imports Streamlit). The page loops over
`lessons()` in registration order and hands each one the finished runs that use its method (`ctx.runs`:
runs whose head, a block or the training branch has the lesson's name), so a lesson shows a trained model
when there is one and a stand-alone demo otherwise. A method's knobs are turned on a documented copy (e.g.
`head.with_transport(mu, gamma)`), never by setting attributes of the shared, cached model.

Adding one: a module in this package (imported below, or anywhere before the page runs) with

    @register_lesson("my_head", title="My head — one line on what it does")
    def my_head(ctx):
        st.markdown("How it pools …")
        run = ctx.first_run("my_head.yaml", "there is no trained map to show.")
        if run is not None:
            out = explanations.explain(run, ctx.pixels)
            for name, maps in out.maps.items():
                ctx.panels(list(maps), [f"{name}[{k}]" for k in range(len(maps))])
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import streamlit as st

from core.registry import Registry
from dashboard import figures

LESSONS = Registry("lesson")
_ORDER: list[str] = []  # registration order: the page's order (the built-ins import in BUILT_IN's order)


@dataclass(frozen=True)
class Lesson:
    name: str                                # the method, as a run's config names it (head, block or branch)
    title: str                               # the section header
    render: Callable[["LessonContext"], None]


def register_lesson(name: str, *, title: str | None = None) -> Callable:
    def deco(fn):
        LESSONS.register(name)(Lesson(name, title or name, fn))
        _ORDER.append(name)
        return fn
    return deco


def lessons() -> list[Lesson]:
    return [LESSONS.get(name) for name in _ORDER if name in LESSONS.names()]


@dataclass
class LessonContext:
    """What every lesson gets: one fixed image, its features, the runs that use the lesson's method."""
    pixels: np.ndarray            # 3×H×W in [0, 1], the model input every demo explains
    features: np.ndarray          # C×h×w: the selected run's features of that image, or its pixel colours
    runs: list[str]               # finished runs with this lesson's method and the image's size, selected first
    selected: str | None          # the run picked in the sidebar (it feeds `features`)
    item: int | None              # the image's test item in the selected run (None: the fixed demo image)
    opacity: float

    @property
    def image(self) -> np.ndarray:
        from dashboard.logic import to_uint8
        return to_uint8(self.pixels)

    def panels(self, maps: list[np.ndarray], captions: list[str], scale: float | None = None, per_row: int = 6,
               mark: tuple[int, int] | None = None) -> None:
        """Maps over the fixed image; `mark` outlines one feature cell (a query position) on each."""
        _, grid_h, grid_w = self.features.shape
        image = self.image
        for start in range(0, len(maps), per_row):
            cols = st.columns(per_row)
            for col, m, cap in zip(cols, maps[start:start + per_row], captions[start:start + per_row]):
                panel = figures.enlarge(figures.overlay(image, m, self.opacity, scale=scale), 140)
                if mark is not None:
                    panel = figures.mark_cell(panel, *mark, grid_h, grid_w)
                col.image(panel, caption=cap, width="stretch")

    def first_run(self, config: str, what: str) -> str | None:
        """The trained run this lesson shows (the sidebar's run when it uses the method, else the first found);
        without one, say what is missing (`what`: the sentence's end) and which config trains it, and return None."""
        if self.runs:
            return self.runs[0]
        st.info(f"No finished run of this method was found, so {what} Train one on the **Train** page (config "
                f"{config}) or run `python -m core train --config configs/{config} --out checkpoints/{Path(config).stem}`.")
        return None


BUILT_IN = ("gap", "grouping", "gsp", "csa", "dsl", "cia")  # the order of the Learn page
for _name in BUILT_IN:
    importlib.import_module(f"{__name__}.{_name}")
for _mod in pkgutil.iter_modules(__path__):  # any other lesson dropped into this package, after them
    if _mod.name not in BUILT_IN:
        importlib.import_module(f"{__name__}.{_mod.name}")
