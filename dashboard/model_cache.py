"""The models: one loaded copy of each run's model for every session, least recently used dropped first.

A model in the cache is read-only and keeps no per-request state (blocks and heads return their maps,
never store them), so every browser session can use the same copy at once.
"""
from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict

import streamlit as st

from core import checkpoint as ckpt
from dashboard.caching import keep_for_good, weights_stamp
from dashboard.catalog import imported
from dashboard.session import teaching


class ModelCache:
    """One loaded copy per run for every session: run_dir -> (weights mtime, model, cfg, bytes). A
    retrained run replaces its own entry; past `budget` bytes of parameters and buffers the least
    recently used runs are dropped (the newest always stays, whatever its size). Two sessions asking
    for the same missing run wait for one load instead of loading it twice."""

    def __init__(self, budget: int):
        self.budget = budget
        self.entries: OrderedDict[str, tuple] = OrderedDict()
        self.lock = threading.Lock()
        self.loading: dict[str, threading.Lock] = {}

    def _hit(self, run_dir: str, stamp: float):
        entry = self.entries.get(run_dir)
        if entry is None or entry[0] != stamp:
            return None
        self.entries.move_to_end(run_dir)
        return entry[1], entry[2]

    def has(self, run_dir: str, stamp: float) -> bool:
        with self.lock:
            return self._hit(run_dir, stamp) is not None

    def get(self, run_dir: str, stamp: float, load):
        with self.lock:
            hit = self._hit(run_dir, stamp)
            if hit:
                return hit
            gate = self.loading.setdefault(run_dir, threading.Lock())
        with gate:
            with self.lock:  # loaded by another session while this one waited
                hit = self._hit(run_dir, stamp)
            if hit:
                return hit
            model, cfg = load()
            keep_for_good()
            size = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
            with self.lock:
                self.entries[run_dir] = (stamp, model, cfg, size)
                self.entries.move_to_end(run_dir)
                while len(self.entries) > 1 and self.loaded_bytes() > self.budget:
                    self.entries.popitem(last=False)
        return model, cfg

    def loaded_bytes(self) -> int:
        return sum(entry[3] for entry in self.entries.values())


def model_budget_mb() -> int:
    """METRICLENS_MODEL_BUDGET_MB (default 1024): parameter memory of the models kept loaded at once.
    The shipped shapes runs take about 5 MB each, a ResNet-50 run about 100 MB."""
    return int(os.environ.get("METRICLENS_MODEL_BUDGET_MB", "1024"))


@st.cache_resource
def model_cache() -> ModelCache:
    return ModelCache(model_budget_mb() * 2**20)


def load_model(run_dir: str):
    """(model in eval mode, RunConfig); one copy shared by every session, so treat it as read-only."""
    if imported(run_dir):  # say what the run is rather than "weights.safetensors is missing"
        from core.importer import NoModelError, no_model_message
        raise NoModelError(no_model_message(run_dir, "anything that needs the network"))
    cache, stamp = model_cache(), weights_stamp(run_dir)
    load = (lambda: ckpt.load_run(run_dir, allow_code=not teaching()))  # a run's own code: full mode only
    if cache.has(run_dir, stamp):
        return cache.get(run_dir, stamp, load)
    with st.spinner("Loading the model…"):
        return cache.get(run_dir, stamp, load)
