"""Nominal Adam steps for rows of a parameter that are re-initialised in the middle of training.

torch's Adam keeps one step count per parameter tensor, so after DSL re-initialises some rows of its
embedding layer, zeroing their moments is not enough: the bias corrections still use the running step
count t, and the first steps of those rows come out (1 − β1)/√(1 − β2) · √(1 − β2^t)/(1 − β1^t) times
the nominal size (≈ 1.6× at t = 300, → 3.2× for large t). `FreshRows` gives such rows their own step
count s (steps since their reset): after each optimiser step it recomputes their update from the moments
with the bias corrections of s, exactly as a fresh Adam would, i.e. the first step is lr·ĝ/(|ĝ| + ε).
"""
from __future__ import annotations

import torch


class FreshRows:
    """Per-row Adam bias correction for re-initialised rows; hooks into one torch Adam/AdamW."""

    def __init__(self):
        self.rows: list[dict] = []          # {"param": name, "start", "stop", "step0"}: JSON-able
        self._optimizer = None
        self._params: dict[str, torch.nn.Parameter] = {}
        self._before: dict[int, torch.Tensor] = {}

    def attach(self, optimizer, params: dict[str, torch.nn.Parameter]) -> None:
        """Hook into `optimizer` (once); `params`: name -> parameter, the names `rows` refer to."""
        self._params = params
        if optimizer is None or optimizer is self._optimizer:
            return
        if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) or any(
                g.get("amsgrad") or g.get("maximize") for g in optimizer.param_groups):
            raise ValueError(f"dsl: per-row Adam steps for new learners need plain Adam/AdamW, not {type(optimizer).__name__}")
        self._optimizer = optimizer
        optimizer.register_step_pre_hook(self._pre)
        optimizer.register_step_post_hook(self._post)

    def reset(self, name: str, start: int, stop: int) -> None:
        """Rows start:stop of parameter `name` were re-initialised: zero their moments, restart their steps."""
        p = self._params[name]
        state = self._optimizer.state.get(p, {}) if self._optimizer is not None else {}
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][start:stop] = 0
        step0 = int(float(state["step"])) if "step" in state else 0
        self.rows = [r for r in self.rows if not (r["param"] == name and start <= r["start"] and r["stop"] <= stop)]
        self.rows.append({"param": name, "start": int(start), "stop": int(stop), "step0": step0})

    def _pre(self, optimizer, args, kwargs) -> None:
        self._before = {i: self._params[r["param"]].detach()[r["start"]:r["stop"]].clone()
                        for i, r in enumerate(self.rows)}

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        for i, r in enumerate(self.rows):
            p = self._params[r["param"]]
            state = optimizer.state.get(p)
            if not state or i not in self._before:
                continue
            group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            s = int(float(state["step"])) - r["step0"]
            if s <= 0:
                continue
            rows = slice(r["start"], r["stop"])
            m, v = state["exp_avg"][rows], state["exp_avg_sq"][rows]
            update = lr * (m / (1 - b1 ** s)) / ((v / (1 - b2 ** s)).sqrt() + eps)
            base = self._before[i]
            if isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay"):
                base = base * (1 - lr * wd)              # AdamW decays the weights; Adam folds wd into g
            p[rows] = base - update
        self._before = {}
