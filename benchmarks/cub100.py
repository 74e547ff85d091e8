"""cub100 (../shared/data/cub100): frozen ImageNet EfficientNet-Lite0 vs fine-tuned, on unseen classes.

    python -m benchmarks.cub100 --train            # trains/evaluates the runs below, then tabulates
    python -m benchmarks.cub100                    # tabulates existing runs only

Runs: runs/cub100_frozen (configs/cub100_frozen_effnet.yaml, no training) and runs/cub100_ft
(configs/cub100_finetune_effnet.yaml; on a CPU the short schedule `--cpu-epochs 1 --cpu-per-class 24`).
With a GPU, `--heads gap,grouping,gsp` fine-tunes each head (model.head=...) side by side.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import ROOT, md_table, write_results
from core.config import RunConfig
from core.train import train

RUNS = ROOT / "runs"


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--train", action="store_true")
    p.add_argument("--heads", default="gap")
    p.add_argument("--cpu-epochs", type=int, default=1)
    p.add_argument("--cpu-per-class", type=int, default=24)
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    runs = {"frozen (no training)": RUNS / "cub100_frozen"}
    for head in args.heads.split(","):
        runs[f"fine-tuned, {head}" + ("" if gpu else " (CPU short schedule)")] = RUNS / (f"cub100_ft_{head}" if gpu else "cub100_ft_cpu")
    if args.train:
        train(RunConfig.load(ROOT / "configs/cub100_frozen_effnet.yaml"), runs["frozen (no training)"])
        for head in args.heads.split(","):
            cfg = RunConfig.load(ROOT / "configs/cub100_finetune_effnet.yaml")
            extra = [f"model.head={head}"] + ([] if gpu else [f"train.epochs={args.cpu_epochs}",
                                                           f"data.max_per_class={args.cpu_per_class}", "train.num_workers=0"])
            out = RUNS / (f"cub100_ft_{head}" if gpu else "cub100_ft_cpu")
            train(cfg.with_overrides(extra), out)
    rows, payload = [], {}
    for label, run in runs.items():
        path = run / "metrics.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        cfg = json.loads((run / "config.json").read_text())
        t = m["test"]
        rows.append([label, cfg["train"]["epochs"], cfg["data"].get("max_per_class") or "all",
                     f"{t['recall@1']:.3f}", f"{t['recall@2']:.3f}", f"{t['recall@4']:.3f}", f"{t['recall@8']:.3f}",
                     f"{t['map_at_r']:.3f}", f"{t['nmi']:.3f}", m.get("device", "?")])
        payload[label] = {"run": str(run.relative_to(ROOT)), "metrics": m}
    md = ("# cub100: frozen vs fine-tuned EfficientNet-Lite0 (+GAP)\n\n"
          "Test = the 50 unseen species (classes 50-99, 2,953 images), every image a query against the others; "
          "224 px. Reference in ../shared/data/cub100/README: frozen R@1 0.867, R@2 0.919, R@4 0.960, R@8 0.978.\n\n"
          + md_table(["model", "epochs", "train imgs/class", "R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI", "device"], rows))
    write_results("cub100", {"runs": payload}, md, device="cuda" if gpu else "cpu")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
