"""Accuracy of DSL and CIA vs GAP on the shapes *unseen* (test) classes, over seeds, and DSL's learners
over epochs.

Each (method, seed) is a full training run (`core.train.train`) from configs/shapes_<method>.yaml with
`train.epochs` and `train.seed` overridden; the best-validation epoch (validation = held-out *train*
classes) is scored on the test classes. Runs live in benchmarks/runs/dsl_cia/ (git-ignored) and a
finished run is reused, so an interrupted benchmark continues where it stopped.

    python -m benchmarks.dsl_cia_accuracy                              # 12 epochs × seeds 0,1,2 × gap,dsl,cia
    python -m benchmarks.dsl_cia_accuracy --epochs 6 --seeds 0         # reduced

The seed also draws which train classes are held out for validation. Writes
benchmarks/results/dsl_cia_accuracy.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RUNS, md_table, write_results
from core import checkpoint as ckpt
from core.config import RunConfig
from core.run_dir import DSL_EVENTS

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"gap": "shapes_gap", "dsl": "shapes_dsl", "cia": "shapes_cia", "gap_margin": "shapes_gap"}


def run_config(method: str, epochs: int, seed: int, device: str, extra: list[str]) -> RunConfig:
    overrides = [f"train.epochs={epochs}", f"train.seed={seed}", f"train.device={device}", *extra]
    if method == "gap_margin":  # GAP with DSL's loss: DSL's like-for-like baseline
        overrides += ["train.loss=margin", "train.miner=null"]
    cfg = RunConfig.load(ROOT / "configs" / f"{METHODS[method]}.yaml").with_overrides(overrides)
    cfg.name = f"{method}_s{seed}_e{epochs}"
    return cfg


def run_one(method: str, epochs: int, seed: int, device: str, extra: list[str], root: Path) -> dict:
    from core.train import train

    cfg = run_config(method, epochs, seed, device, extra)
    run_dir = root / cfg.name
    metrics_path = run_dir / ckpt.METRICS
    if metrics_path.exists() and ckpt.read_json(run_dir / ckpt.CONFIG) == cfg.to_dict():
        print(f"{cfg.name}: reusing the finished run in {run_dir}", flush=True)
        metrics = ckpt.read_json(metrics_path)
    else:
        start = time.time()
        print(f"{cfg.name}: training {epochs} epochs ...", flush=True)
        metrics = train(cfg, run_dir)
        print(f"{cfg.name}: done in {time.time() - start:.0f} s, test {metrics['test']}", flush=True)
    out = {"method": method, "seed": seed, "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT)
           else str(run_dir), "test": metrics["test"], "best_epoch": metrics["best_epoch"],
           "train_seconds": metrics.get("train_seconds")}
    events = run_dir / DSL_EVENTS
    if events.exists():
        out["dsl"] = json.loads(events.read_text())
    return out


def mean_std(values) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}"


def learners_table(runs: list[dict]) -> str:
    dsl = [r for r in runs if "dsl" in r]
    if not dsl:
        return ""
    epochs = max(len(r["dsl"]["epochs"]) for r in dsl)
    header = ["epoch"] + [f"seed {r['seed']}: learner sizes (val {r['dsl']['growth_metric']})" for r in dsl]
    rows = []
    for e in range(epochs):
        row = [str(e)]
        for r in dsl:
            log = r["dsl"]["epochs"]
            if e < len(log):
                sizes = "+".join(str(s) for s in log[e]["learners"])
                value = log[e].get(r["dsl"]["growth_metric"])
                mark = " **split**" if log[e]["growth"].startswith("split") else ""
                phase = " (fine-tune)" if log[e]["phase"] == "finetune" else ""
                row.append(f"{sizes} ({value:.3f}){mark}{phase}" if value is not None else sizes)
            else:
                row.append("")
        rows.append(row)
    events = []
    for r in dsl:
        for ev in r["dsl"]["events"]:
            sizes = [len(s) for s in ev["learners_after"]]
            events.append(f"- seed {r['seed']}: split decided after epoch {ev['decided_epoch']} (val "
                          f"{ev['metric']} {ev['value']:.3f}, best {ev['best_value']:.3f} at epoch {ev['best_epoch']}), "
                          f"applied before epoch {ev['applied_epoch']}: kept {len(ev['keep'])} neurons "
                          f"-> learners {sizes}")
    return ("\n## DSL learners over epochs\n\nLearner sizes (embedding dims) at the end of each epoch, with the "
            "validation growth metric; a split decided after epoch e is applied before epoch e+1.\n\n"
            + md_table(header, rows) + "\n\n" + ("\n".join(events) or "- no split happened"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="gap,dsl,cia", help=f"any of {', '.join(METHODS)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--override", action="append", default=[], help="extra config override for every run, "
                   "e.g. data.max_per_class=20 (changes the run names' configs, not their names)")
    p.add_argument("--runs", default=str(RUNS / "dsl_cia"))
    p.add_argument("--name", default="dsl_cia_accuracy")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    root = Path(args.runs)
    start = time.time()
    runs = [run_one(m, args.epochs, s, args.device, args.override, root) for s in seeds for m in methods]
    rows = []
    summary = {}
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        summary[m] = {k: [r["test"][k] for r in mine] for k in ("recall@1", "map_at_r", "nmi")}
        summary[m]["train_seconds"] = [r["train_seconds"] for r in mine]
        rows.append([m, len(mine), mean_std(summary[m]["recall@1"]), mean_std(summary[m]["map_at_r"]),
                     mean_std(summary[m]["nmi"]), f"{np.mean(summary[m]['train_seconds']):.0f}"])
    md = ["# DSL and CIA vs GAP: shapes, unseen test classes\n",
          f"convnet, 64 px, {args.epochs} epochs, seeds {args.seeds}, {args.device}"
          + (f", overrides {args.override}" if args.override else "")
          + ". Each run keeps its best epoch by validation MAP@R (held-out train classes) and is scored on the "
          "32 unseen test classes; mean ± std over seeds. `dsl` trains with the margin loss (as the paper), `gap` "
          "and `cia` with multi-similarity + miner; `gap_margin` (if listed) is GAP with DSL's loss. Train seconds "
          "depend on the shared machine's load.\n",
          md_table(["method", "runs", "R@1", "MAP@R", "NMI", "train s (mean)"], rows), learners_table(runs)]
    write_results(args.name, {"epochs": args.epochs, "seeds": seeds, "overrides": args.override,
                              "summary": summary, "runs": runs, "wall_seconds": round(time.time() - start, 1)},
                  "\n".join(md), device=args.device)
    print((ROOT / "benchmarks" / "results" / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
