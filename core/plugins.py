"""Plug-ins: your own module of heads, blocks, backbones, explainers (and lessons), named once, loaded in every process.

Name the module (importable: on PYTHONPATH, or installed) in either place, or both:

    METRICLENS_PLUGINS=lab_heads,lab.explainers          # comma-separated module names
    [project.entry-points."metriclens.plugins"]          # an installed package's pyproject.toml
    lab = "lab_heads"

`load_plugins()` imports each named module once per process. The CLI calls it before every subcommand (so the
Train page's `python -m core train ...` subprocess has them), app.py at every start of the dashboard, and a
registry lookup of a name it does not know calls it before giving up (so `load_run` in your own script finds a
plug-in head too); the "unknown head" message then names the plug-ins that were loaded.

Lessons draw with Streamlit, which core and the CLI never import (importing it costs seconds and logs warnings
outside a server). A plug-in therefore registers its lessons inside a function named `metriclens_dashboard()`;
only the dashboard calls it (`load_plugins(dashboard=True)`, once per process). Everything else (heads, blocks,
backbones, explainers, map descriptions) registers at import, in every process.
"""
from __future__ import annotations

import functools
import importlib
import os
from importlib import metadata

ENV = "METRICLENS_PLUGINS"
GROUP = "metriclens.plugins"
DASHBOARD_HOOK = "metriclens_dashboard"

_loaded: dict[str, str] = {}      # module name -> where it was named (ENV or the entry point)
_hooked: set[str] = set()         # modules whose dashboard hook ran in this process


class PluginError(RuntimeError):
    """A named plug-in that cannot be imported (or whose dashboard hook failed); the message says what to fix."""


def named() -> list[tuple[str, str]]:
    """(module, where it is named) for every plug-in: METRICLENS_PLUGINS first, then the entry points."""
    found = [(name.strip(), ENV) for name in os.environ.get(ENV, "").split(",") if name.strip()]
    found += _entry_points()
    first: dict[str, str] = {}
    for name, where in found:
        first.setdefault(name, where)
    return list(first.items())


@functools.lru_cache(maxsize=1)
def _entry_points() -> list[tuple[str, str]]:
    """The installed packages' plug-ins, read once per process (app.py asks on every rerun; a scan takes ms)."""
    try:
        points = metadata.entry_points(group=GROUP)
    except Exception:  # a broken installed distribution must not stop the program: it names no plug-in
        return []
    return [(point.module, f"entry point {point.name!r} of group {GROUP}") for point in points]


def load_plugins(dashboard: bool = False) -> list[str]:
    """Import every named plug-in not imported yet (and, with `dashboard`, run each one's `metriclens_dashboard()`
    once); the names loaded so far. PluginError when one cannot be imported."""
    for name, where in named():
        if name not in _loaded:
            try:
                importlib.import_module(name)
            except Exception as err:
                raise PluginError(
                    f"plug-in {name!r} (named in {where}) cannot be imported: {type(err).__name__}: {err}. Put the "
                    f"folder holding {name.split('.')[0]}.py (or its package) on PYTHONPATH, or remove it from "
                    f"{ENV}") from err
            _loaded[name] = where
        if dashboard and name not in _hooked:
            _hooked.add(name)  # once, even if it fails: a rerun must not register its lessons twice
            hook = getattr(importlib.import_module(name), DASHBOARD_HOOK, None)
            if callable(hook):
                try:
                    hook()
                except Exception as err:
                    raise PluginError(f"plug-in {name!r}: its {DASHBOARD_HOOK}() failed: "
                                      f"{type(err).__name__}: {err}") from err
    return loaded()


def loaded() -> list[str]:
    return list(_loaded)


def note() -> str:
    """One sentence for an "unknown name" message: which plug-ins are loaded, or how to name one."""
    if _loaded:
        return f"plug-ins loaded: {', '.join(f'{n} ({w})' for n, w in _loaded.items())}"
    return (f"no plug-ins loaded; a name registered in your own module is found once the module is named in "
            f"{ENV}=module (importable from PYTHONPATH) or in a {GROUP!r} entry point")
