"""A run's record in its directory, and the choice of its best epoch.

Best epoch: the starting weights (epoch -1, scored before any update) and every validated epoch are candidates;
the highest validation `train.select_metric` wins, so a run that does not learn returns its start. Without a
validation part the last epoch is kept. The record (history rows, best epoch, the weights and optimiser of the
last completed epoch) is saved to resume.pt after every epoch, atomically; running the same command again
continues after the last completed epoch. A folder holding a run of another config is refused.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from core import checkpoint as ckpt
from core.config import RunConfig, TrainConfig
from core.io import atomic_torch_save, atomic_write_text

log = logging.getLogger("core.train")  # the trainer's one log


def config_diff(a: dict, b: dict, prefix="") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


class RunRecord:
    def __init__(self, run_dir: Path, select_metric: str):
        self.run_dir, self.key = Path(run_dir), f"val_{select_metric}"
        self.next_epoch = 0                               # the next epoch to run
        self.best = {"epoch": -1, "value": -math.inf}
        self.history: list[dict] = []
        # the starting weights' and (frozen backbone) the frozen network's scores: {"start": {"val": ..., "test": ...}}
        self.references: dict[str, dict] = {}

    @property
    def fresh(self) -> bool:
        """Nothing trained or scored yet (a resumed run keeps its trained weights and its start row)."""
        return self.next_epoch == 0 and not self.history

    def conflict(self, cfg: RunConfig) -> str | None:
        """Why this folder cannot take the run (it holds a run of another config), or None. Both configs are
        read through RunConfig, so keys added since the folder's run was made count as their defaults."""
        cfg_path = self.run_dir / ckpt.CONFIG
        if not cfg_path.exists():
            return None
        old = RunConfig.from_dict(ckpt.read_json(cfg_path)).to_dict()
        diff = [k for k in config_diff(old, cfg.to_dict()) if k != "train.epochs"]
        if diff:
            return (f"{self.run_dir} already holds a different run (config differs in: {', '.join(diff)}). "
                    "Choose another --out, or delete that folder to start over.")
        return None

    def restore(self, model, optimizer, criterion) -> bool:
        """Load resume.pt into the model, optimiser and criterion and this record; False when there is none."""
        resume = self.run_dir / ckpt.RESUME
        if not resume.exists():
            return False
        state = ckpt.load_resume(resume)
        ckpt.load_state_into(model, state["model"], str(resume))
        model.head.load_extra_state(state.get("head_state", {}))
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if "criterion" in state:
            criterion.load_state_dict(state["criterion"])
        self.next_epoch, self.best, self.history = state["epoch"] + 1, state["best"], state["history"]
        self.references = state.get("references") or {}
        row = [r for r in self.history if r["epoch"] == -1]
        if row and "start" not in self.references:  # a resume file from before the references were kept
            self.references["start"] = {"val": {k: v for k, v in row[0].items() if k.startswith("val_")}}
        log.info("resuming %s after epoch %d", self.run_dir, state["epoch"])
        return True

    def save_resume(self, epoch: int, model, optimizer, criterion) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else {},
                 "criterion": criterion.state_dict(), "epoch": epoch, "best": self.best,
                 "history": self.history, "head_state": model.head.extra_state(), "references": self.references}
        atomic_torch_save(self.run_dir / ckpt.RESUME, state)

    def write_history(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.run_dir / ckpt.HISTORY, buf.getvalue())

    # ---- the best epoch -------------------------------------------------------------------------------
    def record_start(self, metrics: dict[str, float], seconds: float) -> None:
        """The starting weights scored on validation: history row -1 and the first best-epoch candidate."""
        self.best = {"epoch": -1, "value": metrics.get(self.key, -math.inf)}
        self.history.append({"epoch": -1, **metrics, "seconds": round(seconds, 2)})

    def improves(self, epoch: int, metrics: dict[str, float], has_val: bool) -> bool:
        """Whether this epoch becomes the best (then it is recorded as such). Without a validation part the last
        epoch is kept."""
        value = metrics.get(self.key)
        if (value is not None and value > self.best["value"]) or not has_val:
            self.best = {"epoch": epoch, "value": value if value is not None else -math.inf}
            return True
        return False

    def best_row(self) -> dict:
        return {r["epoch"]: r for r in self.history}.get(self.best["epoch"], {})

    def result(self, t: TrainConfig, test: dict[str, float]) -> dict:
        """metrics.json's account of the kept weights: their test and validation figures, the best epoch, and beside
        them the start and the frozen network (whether training beat them, said in the log too)."""
        best_row = self.best_row()
        metrics = {"test": test, "best_epoch": self.best["epoch"], "epochs": t.epochs, "select_metric": t.select_metric,
                   "val": {k: v for k, v in best_row.items() if k.startswith("val_")},
                   "train_seconds": round(sum(r.get("seconds", 0) for r in self.history), 1)}
        start_val = self.references.get("start", {}).get("val")
        if start_val:  # the starting point was a candidate: say plainly whether training helped
            metrics["start"] = self.references["start"]
            metrics["improved_over_start"] = self.best["epoch"] != -1
            start, best = start_val.get(self.key, math.nan), best_row.get(self.key, math.nan)
            if metrics["improved_over_start"]:
                log.info("validation %s: %.4f at start -> %.4f at best epoch %d (%+.4f)", t.select_metric, start,
                         best, self.best["epoch"], best - start)
            elif t.epochs > 0:
                log.warning("training did not improve on the starting weights (validation %s %.4f at start, no "
                            "epoch better): the run returns its starting point", t.select_metric, start)
        if "frozen" in self.references:
            metrics["frozen"] = self.references["frozen"]
            frozen_val = self.references["frozen"].get("val", {}).get(self.key)
            if frozen_val is not None and metrics["val"]:
                metrics["below_frozen"] = metrics["val"][self.key] < frozen_val
                if metrics["below_frozen"]:
                    log.warning("the trained head ends below the frozen network on validation (%s %.4f against "
                                "%.4f): the run keeps its head, and the frozen network's figures stand beside it in "
                                "metrics.json; for retrieval alone, the frozen network (configs/real_frozen.yaml) is "
                                "the better choice here", t.select_metric, metrics["val"][self.key], frozen_val)
        return metrics

    def verdict(self, metrics: dict) -> str:
        if not metrics:
            return ""
        if metrics["best_epoch"] == -1:
            return "best = the starting weights (no epoch improved on them), saved in weights and metrics.json"
        return f"best = epoch {metrics['best_epoch']}, saved in weights and metrics.json"


def closing_summary(metrics: dict, splits) -> list[str]:
    """The lines a run ends with: the result on the test classes beside the frozen network and the start, what
    validation and test measure, and the images that could not be read."""
    def figures(m: dict, prefix: str = "") -> str:   # what the evaluation reported of the two
        return ", ".join(f"{label} {m[prefix + key]:.3f}" for label, key in (("R@1", "recall@1"), ("MAP@R", "map_at_r"))
                         if prefix + key in m)

    test_part = splits.test if splits.test is not None else splits.query
    n_test = len(set(test_part.labels.tolist())) if test_part is not None else 0
    lines = [f"test ({n_test} classes never trained on): {figures(metrics['test'])}"
             + (f" (best epoch {metrics['best_epoch']})" if metrics.get("epochs") else "")]
    for name, what in (("frozen", "the frozen network (no training)"), ("start", "the start (before any update)")):
        if metrics.get(name, {}).get("test"):
            lines.append(f"  beside {what}: {figures(metrics[name]['test'])}")
    if metrics.get("val") and splits.val is not None:
        lines.append(f"validation ({len(set(splits.val.labels.tolist()))} classes held out of the training folders; "
                     f"they pick the epoch): {figures(metrics['val'], 'val_')}. Validation classes come from the same "
                     "folders as the train classes, so validation usually scores above test")
    bad = metrics.get("unreadable") or []
    if bad:
        lines.append(f"{len(bad)} unreadable image(s) were replaced by another image of their class in training and "
                     f"left out of the metrics: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
                     "(all of them: metrics.json, 'unreadable')")
    return lines
