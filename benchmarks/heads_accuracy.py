"""Accuracy of each attention head / block vs GAP on the shapes *unseen* test classes, over seeds.

Trains `configs/shapes_<head>.yaml` (gap, grouping, gsp, csa: same backbone, data, loss and schedule)
for each seed into benchmarks/runs/acc_<head>_e<epochs>_s<seed>/ (git-ignored; an existing finished
run is reused, an unfinished one resumes) and reports test R@1 and MAP@R as mean ± std over seeds.

    python -m benchmarks.heads_accuracy                           # the configs' full schedule (12 epochs, all images)
    python -m benchmarks.heads_accuracy --epochs 3 --max-per-class 20   # a quick, far-from-converged look

The default (4 heads × 3 seeds × 12 epochs) takes about 20 minutes on a quiet 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import ROOT, RUNS, md_table, registered_methods, use_method, write_results
from core import checkpoint as ckpt
from core.config import RunConfig
from core.run_dir import EMBEDDINGS

HEADS = registered_methods()   # every registered head and block (configs/shapes_<name>.yaml, else GAP + it)


def run_dir(head: str, epochs: int, seed: int, tag: str = ""):
    return RUNS / f"acc_{head}_e{epochs}_s{seed}{'_' + tag if tag else ''}"


def group_cosine(run, cfg: RunConfig) -> float | None:
    """Mean cosine between the group sub-embeddings of the same test image (grouping heads)."""
    if cfg.model.head != "grouping":
        return None
    emb = np.load(run / ckpt.ARTIFACTS / EMBEDDINGS)
    k = int(cfg.model.head_args.get("num_groups", 3))
    z = np.stack(np.split(emb, k, axis=1), 1)                         # N×k×d
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    cos = np.einsum("ngd,nhd->ngh", z, z)
    g, h = np.triu_indices(k, 1)
    return float(cos[:, g, h].mean())


def config_for(head: str, epochs: int, seed: int, max_per_class: int, device: str, extra: list[str]) -> RunConfig:
    own = ROOT / "configs" / f"shapes_{head}.yaml"
    if own.exists():
        cfg = RunConfig.load(own)
    else:  # a method without a demo config: shapes_gap.yaml with it (a block after the convnet's stage2)
        cfg = RunConfig.load(ROOT / "configs" / "shapes_gap.yaml")
        use_method(cfg.model, head, "stage2")
        cfg.name = f"shapes_{head}"
    overrides = [f"train.epochs={epochs}", f"train.seed={seed}", f"train.device={device}"]
    if max_per_class:
        overrides.append(f"data.max_per_class={max_per_class}")
    if head == "gsp" and max_per_class:
        # the prototype memory must fill early in a short run: half of one epoch's train images
        overrides.append(f"model.head_args.memory_size={max(128, (max_per_class * 26) // 2)}")
    return cfg.with_overrides(overrides + extra)


def train_one(cfg: RunConfig, out) -> dict:
    from core.train import train

    metrics_path = out / ckpt.METRICS
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("epochs") == cfg.train.epochs:
            return metrics
    cfg.name = out.name
    return train(cfg, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default=",".join(HEADS))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-per-class", type=int, default=0, help="train images per class (0: all 40)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", default="heads_accuracy")
    p.add_argument("--tag", default="", help="suffix of the run folders (runs with other overrides)")
    p.add_argument("overrides", nargs="*", help="extra section.key=value overrides for every run")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    heads = args.heads.split(",")
    per_run: dict[str, list[dict]] = {h: [] for h in heads}
    for seed in seeds:                       # seed-major: a cut-short run still has every head for seed 0
        for head in heads:
            out = run_dir(head, args.epochs, seed, args.tag)
            start = time.time()
            cfg = config_for(head, args.epochs, seed, args.max_per_class, args.device, args.overrides)
            m = train_one(cfg, out)
            per_run[head].append({"seed": seed, "run": str(out.relative_to(ROOT)), "wall_s": round(time.time() - start, 1),
                                  "train_s": m.get("train_seconds"), "best_epoch": m.get("best_epoch"),
                                  "recall@1": m["test"]["recall@1"], "map_at_r": m["test"]["map_at_r"],
                                  "nmi": m["test"].get("nmi"), "group_cosine": group_cosine(out, cfg)})
            print(f"{head} seed {seed}: R@1 {m['test']['recall@1']:.4f} MAP@R {m['test']['map_at_r']:.4f}", flush=True)
    summary = {}
    for head, rows in per_run.items():
        r1, mapr = np.array([r["recall@1"] for r in rows]), np.array([r["map_at_r"] for r in rows])
        summary[head] = {"recall@1_mean": float(r1.mean()), "recall@1_std": float(r1.std(ddof=1)) if len(r1) > 1 else 0.0,
                         "map_at_r_mean": float(mapr.mean()), "map_at_r_std": float(mapr.std(ddof=1)) if len(mapr) > 1 else 0.0,
                         "seeds": len(rows)}
        if rows and rows[0]["group_cosine"] is not None:
            summary[head]["group_cosine_mean"] = float(np.mean([r["group_cosine"] for r in rows]))
    budget = (f"{args.epochs} epochs, {args.max_per_class or 40} train images per class" +
              (" (reduced budget: far from convergence; the configs train 12 epochs on 40 per class)"
               if args.epochs < 12 or args.max_per_class else ""))
    rows = [[h, f"{s['recall@1_mean']:.3f} ± {s['recall@1_std']:.3f}", f"{s['map_at_r_mean']:.3f} ± {s['map_at_r_std']:.3f}",
             f"{s['recall@1_mean'] - summary['gap']['recall@1_mean']:+.3f}" if "gap" in summary else "–", s["seeds"]]
            for h, s in summary.items()]
    cos_note = "".join(f" Mean cosine between the groups of one test image ({h}): {s['group_cosine_mean']:.3f}."
                       for h, s in summary.items() if "group_cosine_mean" in s)
    extra = f" Overrides: `{' '.join(args.overrides)}`." if args.overrides else ""
    md = ("# Head accuracy on shapes unseen classes\n\n"
          f"Test split = unseen (shape, colour) combinations; mean ± sample std over seeds {args.seeds}; {budget}. "
          "Same convnet backbone, data, multi-similarity loss + miner and schedule for every head "
          "(configs/shapes_<head>.yaml); best epoch picked on validation MAP@R; `--max-per-class` caps the train "
          f"images per class (the test set is never capped).{extra}{cos_note}\n\n"
          + md_table(["head", "R@1", "MAP@R", "ΔR@1 vs GAP", "seeds"], rows))
    write_results(args.name, {"budget": budget, "epochs": args.epochs, "seeds": seeds,
                              "max_per_class": args.max_per_class, "summary": summary, "runs": per_run},
                  md, device=args.device)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
