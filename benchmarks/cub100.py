"""cub100 (../shared/data/cub100): frozen ImageNet EfficientNet-Lite0 vs fine-tuned, on unseen classes.

    python -m benchmarks.cub100 --train            # trains/evaluates the runs below, then tabulates
    python -m benchmarks.cub100                    # tabulates existing runs only

Runs: runs/cub100_frozen (configs/cub100_frozen_effnet.yaml, no training) and the fine-tuned runs of
configs/cub100_finetune_effnet.yaml: with a GPU, its full schedule, one run per `--heads` entry
(runs/cub100_ft_<head>); on a CPU the short schedule `--cpu-epochs 1 --cpu-per-class 24`
(runs/cub100_ft_cpu). The table lists every run found, with the device it was trained on.
`--csv` points at another copy of the data (e.g. on a GPU machine without ../shared).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import ROOT, md_table, write_results
from core.config import RunConfig
from core.run_dir import CONFIG, METRICS
from core.train import train

RUNS = ROOT / "runs"
# The config keeps GAP's 1280 pooled channels (no projection); grouping needs a projection to split into
# its groups' sub-embeddings, and GSP pools the features of its 1×1 projection.
HEAD_OVERRIDES = {"grouping": ["model.embed_dim=512"], "gsp": ["model.embed_dim=512"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--train", action="store_true")
    p.add_argument("--heads", default="gap",
                   help="GPU: comma-separated heads to fine-tune (gap, grouping, gsp; cia = GAP + the CIA branch)")
    p.add_argument("--cpu-epochs", type=int, default=1)
    p.add_argument("--cpu-per-class", type=int, default=24)
    p.add_argument("--csv", help="labels.csv of the cub100 copy to use (default: the configs' ../shared path)")
    p.add_argument("--num-workers", type=int, help="data-loader workers (default: the config's)")
    p.add_argument("--head-lr", type=float, help="GPU: lr of the layers outside the backbone (the backbone keeps "
                                                 "the config's); runs go to runs/cub100_ft_<head>_headlr")
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    data = ([f"data.csv={args.csv}"] if args.csv else [])
    if args.train:
        train(RunConfig.load(ROOT / "configs/cub100_frozen_effnet.yaml").with_overrides(data), RUNS / "cub100_frozen")
        for head in args.heads.split(",") if gpu else ["gap"]:
            if head == "cia":  # GAP + the training-only cross-image attention branch
                cfg, extra = RunConfig.load(ROOT / "configs/cub100_finetune_effnet_cia.yaml"), list(data)
            else:
                cfg = RunConfig.load(ROOT / "configs/cub100_finetune_effnet.yaml")
                extra = data + [f"model.head={head}", *HEAD_OVERRIDES.get(head, [])]
            if args.head_lr is not None and gpu:
                extra += [f"train.lr={args.head_lr}", f"train.backbone_lr={cfg.train.lr}"]
            extra += (
                [f"train.num_workers={args.num_workers}"] if args.num_workers is not None else []) + (
                [] if gpu else [f"train.epochs={args.cpu_epochs}", f"data.max_per_class={args.cpu_per_class}",
                                "train.num_workers=0"])
            name = f"cub100_ft_{head}{'_headlr' if args.head_lr is not None else ''}" if gpu else "cub100_ft_cpu"
            train(cfg.with_overrides(extra), RUNS / name)
    rows, payload = [], {}
    for run in [RUNS / "cub100_frozen", RUNS / "cub100_ft_cpu", *sorted(RUNS.glob("cub100_ft_*"))]:
        path = run / METRICS
        if run.name in payload or not path.exists():
            continue
        m = json.loads(path.read_text())
        cfg = json.loads((run / CONFIG).read_text())
        t, epochs = m["test"], cfg["train"]["epochs"]
        label = ("frozen (no training)" if epochs == 0 else
                 f"fine-tuned, {cfg['model']['head']}" + (" + CIA branch" if cfg["model"].get("cia") else "")
                 + (" (CPU short schedule)" if run.name == "cub100_ft_cpu" else "")
                 + (f", new layers at lr {cfg['train']['lr']:g}" if cfg["train"].get("backbone_lr") else ""))
        rows.append([label, epochs, cfg["data"].get("max_per_class") or "all",
                     f"{t['recall@1']:.3f}", f"{t['recall@2']:.3f}", f"{t['recall@4']:.3f}", f"{t['recall@8']:.3f}",
                     f"{t['map_at_r']:.3f}", f"{t['nmi']:.3f}", m.get("best_epoch", "–") if epochs else "–",
                     f"{m['train_seconds']:.0f}" if "train_seconds" in m else "–", m.get("device", "?")])
        payload[run.name] = {"label": label, "run": str(run.relative_to(ROOT)), "metrics": m}
    md = ("# cub100: frozen vs fine-tuned EfficientNet-Lite0\n\n"
          "Test = the 50 unseen species (classes 50-99, 2,953 images), every image a query against the others; "
          "224 px. Reference in ../shared/data/cub100/README: frozen R@1 0.867, R@2 0.919, R@4 0.960, R@8 0.978. "
          "Fine-tuning uses configs/cub100_finetune_effnet.yaml (multi-similarity loss + miner, AdamW 3e-5, "
          "best validation epoch on 10 held-out train species; `--heads gap,grouping,gsp,cia` on a GPU makes the 15-epoch "
          "rows, `cia` = GAP + the training-only CIA branch, configs/cub100_finetune_effnet_cia.yaml; `--head-lr 3e-4` "
          "trains the layers outside the backbone 10× faster); the device "
          "column says where each run was trained, train s its training time there.\n\n"
          + md_table(["model", "epochs", "train imgs/class", "R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI", "best epoch",
                     "train s", "device"], rows))
    trained_on = sorted({str(p["metrics"].get("device", "?")) for p in payload.values()})
    write_results("cub100", {"runs": payload}, md, device="runs trained on " + " and ".join(trained_on))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
