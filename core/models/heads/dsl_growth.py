"""DSL's growth policy (methods.md §2.2 step 4, official `FilterLearner` / `train.py`), the part of the
head that decides when a learner is added and how: Taylor importance a·∂L/∂a of every output neuron,
summed over the epoch; the rule (patience on the validation metric of the train classes, `explore`,
the fine-tuning phase, `max_learners`); and the split itself, which moves the important neurons of the
last learner (weights, biases and Adam moments) to its front and re-initialises the rest as a new
learner. `LearnerGrowth` is a mixin of `DSLHead`, which owns the state it reads (see there)."""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from core.train_context import TrainContext

log = logging.getLogger(__name__)


def taylor_candidates(score_sum: torch.Tensor, learner: slice, threshold: float) -> tuple[list[int], list[float]]:
    """Neurons of `learner` whose normalised Taylor importance exceeds `threshold`, most important first.

    v = |s| / ‖s‖₂, then min–max scaled to [0, 1] (official `FilterLearner.normalize_ranks`)."""
    s = score_sum[learner].double().abs()
    v = s / torch.sqrt((s * s).sum() + 1e-8)
    spread = v.max() - v.min()
    if not torch.isfinite(spread) or spread <= 0:
        return [], []
    v = (v - v.min()) / spread
    order = torch.argsort(v, descending=True, stable=True)
    keep = [int(i) for i in order if v[i] > threshold]
    return [learner.start + i for i in keep], [round(float(v[i]), 4) for i in keep]


class LearnerGrowth:
    """Growth of `DSLHead`'s learners. Reads the head's `learners`, `proj`, `attention`, `fresh` and growth
    options; keeps `best_value/best_epoch/explore/pending/events/epoch_log` (saved in `extra_state`)."""

    # ---- Taylor importance ------------------------------------------------------------------------
    def _collect_taylor(self) -> bool:
        return self.dynamic and not self.in_finetune()

    def _taylor_hook(self, activation: torch.Tensor):
        def hook(grad):
            with torch.no_grad():
                self.taylor_sum += (activation.double() * grad.double()).sum(0)
                self.taylor_count += activation.shape[0]
        return hook

    def reset_taylor(self) -> None:
        self.taylor_sum.zero_()
        self.taylor_count = 0

    # ---- the rule ---------------------------------------------------------------------------------
    def record_epoch(self, epoch: int, metrics: dict) -> None:
        """After an epoch: track the best growth metric, decide whether the last learner splits (applied
        before the next epoch, so the weights evaluated at `epoch` are the ones saved), log the epoch."""
        value = metrics.get(f"val_{self.growth_metric}")
        if value is None and metrics and not self._warned_no_val:
            log.warning("dsl: no val_%s in the validation metrics (keys: %s); learners grow only on the "
                        "validation part of the train classes (data.val_classes > 0), never on test classes",
                        self.growth_metric, ", ".join(sorted(metrics)))
            self._warned_no_val = True
        if value is not None and (self.best_value is None or value > self.best_value):
            self.best_value, self.best_epoch, self.explore = float(value), epoch, True
        decision = self.decide_growth(epoch)
        if decision.get("split"):
            self.pending = {"decided_epoch": epoch, "metric": self.growth_metric,
                            "value": None if value is None else float(value), "best_value": self.best_value,
                            "best_epoch": self.best_epoch, "keep": decision["keep"], "scores": decision["scores"]}
            self.explore = False
        self.epoch_log.append({"epoch": epoch, "learners": [b - a for a, b in self.learners],
                               self.growth_metric: None if value is None else round(float(value), 5),
                               "best_epoch": self.best_epoch, "phase": "finetune" if self.in_finetune(epoch) else
                               ("divide_and_conquer" if len(self.learners) > 1 else "single"),
                               "growth": decision.get("reason", "")})

    def growth_blocked(self, epoch: int) -> str | None:
        """Why no learner may be added after `epoch` (None: the rule allows one; §2.2 step 4)."""
        if not self.dynamic:
            return "dynamic growth off"
        if self.pending is not None:
            return "a split is already pending"
        if epoch <= 0:
            return "epoch 0"
        if self.finetune_epoch is not None and epoch >= self.finetune_epoch:
            return "fine-tuning phase"
        if self.best_epoch is None:
            return f"no val_{self.growth_metric} yet"
        if epoch < self.best_epoch + self.patience:
            return f"patience ({epoch - self.best_epoch}/{self.patience} epochs without improvement)"
        if not self.explore:
            return "already split since the last improvement"
        if self.max_learners is not None and len(self.learners) >= self.max_learners:
            return f"max_learners ({self.max_learners}) reached"
        return None

    def decide_growth(self, epoch: int) -> dict:
        blocked = self.growth_blocked(epoch)
        if blocked:
            return {"split": False, "reason": blocked}
        a, b = self.learners[-1]
        if b - a <= self.min_split_size:
            return {"split": False, "reason": f"last learner has {b - a} neurons (needs > {self.min_split_size})"}
        if self.taylor_count == 0:
            return {"split": False, "reason": "no Taylor statistics this epoch"}
        keep, scores = taylor_candidates(self.taylor_sum, slice(a, b), self.threshold)
        if len(keep) < self.min_candidates:
            return {"split": False, "reason": f"{len(keep)} important neurons (needs ≥ {self.min_candidates})"}
        if len(keep) >= b - a:
            return {"split": False, "reason": "every neuron is important; nothing left for a new learner"}
        return {"split": True, "reason": f"split: keep {len(keep)} of {b - a}", "keep": keep, "scores": scores}

    def _reinit_rows(self, start: int, stop: int, generator: torch.Generator | None) -> None:
        """Xavier-normal weights (gain 1) and a fresh nn.Linear-style bias for rows start:stop."""
        fan_in, n = self.proj.in_features, stop - start
        std = math.sqrt(2.0 / (fan_in + n))
        bound = 1 / math.sqrt(fan_in)
        w = self.proj.weight
        self.proj.weight.data[start:stop] = torch.randn(n, fan_in, generator=generator, dtype=w.dtype).to(w.device) * std
        self.proj.bias.data[start:stop] = (torch.rand(n, generator=generator, dtype=w.dtype).to(w.device) * 2 - 1) * bound

    @torch.no_grad()
    def apply_split(self, pending: dict, ctx: TrainContext | None = None, epoch: int | None = None) -> dict:
        """Split the last learner: the `keep` neurons move to its front (weights unchanged), the rest
        of its slots are re-initialised as a new learner. Returns the growth event."""
        a, b = self.learners[-1]
        keep = [int(i) for i in pending["keep"]]
        if not keep or any(not a <= i < b for i in keep) or len(set(keep)) != len(keep) or len(keep) >= b - a:
            raise ValueError(f"dsl: invalid split of learner {(a, b)} keeping {keep}")
        before = [list(range(s, e)) for s, e in self.learners]
        cut = a + len(keep)
        source = torch.tensor(keep, device=self.proj.weight.device)
        params = [self.proj.weight, self.proj.bias]
        moved = {p: p.data[source].clone() for p in params}  # clone first: slots and sources overlap
        for p in params:
            p.data[a:cut] = moved[p]
        seed = int(ctx.seed) if ctx is not None else 0
        gen = torch.Generator().manual_seed(seed * 100_003 + 7919 * (len(self.learners) + 1) + (epoch or 0))
        self._reinit_rows(cut, b, gen)
        if ctx is not None and ctx.optimizer is not None:
            for p in params:  # Adam moments follow their neurons
                for key, st in ctx.optimizer.state.get(p, {}).items():
                    if torch.is_tensor(st) and st.shape == p.shape:
                        st[a:cut] = st[source.to(st.device)].clone()
            self.fresh.attach(ctx.optimizer, self._row_params())
            for name in ("proj.weight", "proj.bias"):  # the re-initialised rows start as under a fresh Adam
                self.fresh.reset(name, cut, b)
        k = len(self.learners)
        if self.per_learner_attention:  # the new learner starts from its parent's attention map
            last = self.attention.last
            last.weight.data[k] = last.weight.data[k - 1]
            last.bias.data[k] = last.bias.data[k - 1]
        self.learners = self.learners[:-1] + [(a, cut), (cut, b)]
        self.pending = None
        event = {**pending, "applied_epoch": epoch, "learners_before": before,
                 "learners_after": [list(range(s, e)) for s, e in self.learners],
                 "moved": {str(a + i): src for i, src in enumerate(keep)}, "reinitialised": list(range(cut, b))}
        self.events.append(event)
        log.info("dsl: learner %d split after epoch %s: kept %d neurons, new learner of %d (K=%d)",
                 k - 1, pending.get("decided_epoch"), len(keep), b - cut, len(self.learners))
        return event

    def _row_params(self) -> dict[str, nn.Parameter]:
        return {"proj.weight": self.proj.weight, "proj.bias": self.proj.bias}
