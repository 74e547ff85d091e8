"""Real data (cub100, caltech101): why the old own-folder recipe lost to frozen features, and the recipes.

    python -m benchmarks.real_data --ablation            # the ablation rows (CPU short schedule)
    python -m benchmarks.real_data --recipes             # every configs/real_<method>.yaml
    python -m benchmarks.real_data                       # tabulate the runs already made
    python -m benchmarks.real_data --ablation --only old,old_frozen_bn --datasets cub100
    python -m benchmarks.real_data --cached              # the frozen-backbone protocol (benchmarks/real_data_cached.py)

Protocol (CPU short schedule; every number in one table comes from the same images):
  * a subset of each data set, written once to benchmarks/runs/real_data/subset_<set>_<n>_<m>.csv: every train
    class (cub100 50, caltech101 51) with `--train-per-class` images, every unseen test class with
    `--test-per-class` images (the first ones in file order), the data set's own dml_split;
  * `--size` px network input for every run (frozen references too, so comparisons are fair);
  * ablation rows: `--epochs` epochs (CPU: 1), 20 % of the train classes held out, the starting weights
    NOT a candidate: the test figures are those of the trained model (with 1 epoch, simply the model after
    it), so they measure what training does. One factor changes per row against `old` (the README
    recipe before this change);
  * recipe rows: the config as a user runs it (validation classes, the start as a candidate, warm-up),
    with the schedule shortened to `--epochs`; test figures of the selected epoch.
The committed results: the defaults (results/real_data.md) and
`--name real_data_long --train-per-class 24 --test-per-class 20 --epochs 3` (results/real_data_long.md).
A GPU run with the full schedules: `--size 224 --train-per-class 0 --test-per-class 0 --epochs 15`.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, ROOT, RUNS, command_line, md_table, write_results
from core.config import RunConfig
from core.run_dir import CONFIG, HISTORY, METRICS

OUT = RUNS / "real_data"
DATASETS = {"cub100": ROOT.parent / "shared/data/cub100", "caltech101": ROOT.parent / "shared/data/caltech101"}

# The own-folder recipe the README recommended before this change (configs/cub200_gap.yaml at 5d1b4b6):
# BatchNorm in train mode, a fresh 1280->512 projection, new layers at 1e-4 and the backbone at 1e-5,
# test images resized to 256/224 of the input and centre-cropped, 16 classes x 4 images per batch.
OLD = ["model.backbone=efficientnet_lite0", "model.pretrained=true", "model.head=gap", "model.embed_dim=512",
       "model.frozen_bn=false", "train.lr=1.0e-4", "train.backbone_lr=1.0e-5", "train.batch_size=64",
       "train.m_per_class=4", "train.optimizer=adamw", "train.weight_decay=1.0e-4", "train.loss=multi_similarity",
       "train.miner=multi_similarity", "data.augment=true", "data.val_classes=0.2", "train.eval_start=false",
       "train.warmup_epochs=0"]
FROZEN = ["model.backbone=efficientnet_lite0", "model.pretrained=true", "model.head=gap", "model.embed_dim=0",
          "model.freeze_backbone=true", "data.augment=false", "data.val_classes=0", "train.epochs=0"]
CROP = "crop"  # marker: resize to 256/224 of the input, then centre-crop (the old recipe's test transform)

# name -> (description, overrides); one factor per row against `old`
ABLATION: dict[str, tuple[str, list]] = {
    "frozen": ("frozen ImageNet network + GAP, squash (no training)", FROZEN),
    "frozen_crop": ("frozen, resize + centre crop", FROZEN + [CROP]),
    "frozen_proj": ("frozen + a fresh random 1280->512 projection (no training)", FROZEN + ["model.embed_dim=512"]),
    "old": ("old recipe: BN train, fresh 512 projection, lr 1e-4 / backbone 1e-5, crop, 16x4 batch", OLD + [CROP]),
    "old_frozen_bn": ("old, BatchNorm frozen", OLD + [CROP, "model.frozen_bn=true"]),
    "old_no_proj": ("old, no projection (1280-d GAP)", OLD + [CROP, "model.embed_dim=0"]),
    "old_warmup": ("old, the epoch is a warm-up (backbone frozen, only the projection trains)",
                   OLD + [CROP, "train.warmup_epochs=1"]),
    "old_squash": ("old, squash instead of crop", OLD),
    "old_lr": ("old, lr 3e-5 for every layer", OLD + [CROP, "train.lr=3.0e-5", "train.backbone_lr=null"]),
    "old_batch8x8": ("old, 8 classes x 8 images per batch", OLD + [CROP, "train.m_per_class=8"]),
    "old_no_miner": ("old, multi-similarity loss without its miner", OLD + [CROP, "train.miner=null"]),
    "fixed": ("old with BN frozen + squash", OLD + ["model.frozen_bn=true"]),
    "recipe_crop": ("the recipe's fixes (BN frozen, warm-up epoch, backbone lr 3e-5) but the old crop; 1 + 1 epochs",
                    OLD + [CROP, "model.frozen_bn=true", "train.warmup_epochs=1", "train.backbone_lr=3.0e-5",
                           "train.epochs=2"]),
}
RECIPES = ["frozen", "gap", "grouping", "gsp", "csa", "dsl", "cia"]
SEEDS = 5  # seeds looked for when tabulating


def recipe_run(method: str, seed: int) -> str:
    """Run folder of a recipe: real_<method> for seed 0 (as before seeds existed), real_<method>_s<seed> else."""
    return f"real_{method}" if seed == 0 else f"real_{method}_s{seed}"


def subset_csv(name: str, train_per_class: int, test_per_class: int) -> Path:
    """The data set's labels.csv cut to N images per class (0 = all), absolute paths; written once."""
    root = DATASETS[name]
    out = OUT / f"subset_{name}_{train_per_class}_{test_per_class}.csv"
    if out.exists():
        return out
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    seen: dict[str, int] = {}
    keep = []
    for row in rows:
        cap = train_per_class if row["dml_split"] == "train" else test_per_class
        seen[row["class_name"]] = seen.get(row["class_name"], 0) + 1
        if not cap or seen[row["class_name"]] <= cap:
            keep.append({"path": str(root / row["path"]), "label": row["class_name"], "split": row["dml_split"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(keep)
    return out


def data_overrides(csv_path: Path, size: int, workers: int = 0) -> list[str]:
    return ["data.name=csv", f"data.csv={csv_path}", "data.root=null", "data.csv_label_column=label",
            "data.csv_split_column=split", f"data.image_size={size}", "data.resize=null",
            "data.max_per_class=null", f"train.num_workers={workers}", "train.device=cpu" if not torch.cuda.is_available()
            else "train.device=cuda"]


def run_one(run: Path, cfg: RunConfig, force: bool) -> None:
    """Train `run` unless it is done."""
    from core.train import train

    if force and run.exists():
        import shutil
        shutil.rmtree(run)
    if (run / METRICS).exists():
        return
    start = time.time()
    train(cfg, run)
    (run / "wall_seconds.txt").write_text(f"{time.time() - start:.1f}\n")
    (run / "command.txt").write_text(command_line() + "\n")


def ablation_cfg(overrides: list[str], csv_path: Path, size: int, epochs: int) -> RunConfig:
    extra = list(data_overrides(csv_path, size))
    for o in overrides:
        extra.append(f"data.resize={round(size * 256 / 224)}" if o == CROP else o)
    if not any(o.startswith("train.epochs=") for o in overrides):
        extra.append(f"train.epochs={epochs}")
    return RunConfig().with_overrides(extra)


def recipe_cfg(method: str, csv_path: Path, size: int, epochs: int, seed: int = 0, workers: int = 0) -> RunConfig:
    cfg = RunConfig.load(ROOT / "configs" / f"real_{method}.yaml")
    # the warm-up epochs come on top, so the backbone trains as many epochs as in the ablation rows
    extra = data_overrides(csv_path, size, workers) + [f"train.seed={seed}"] + (
        [f"train.epochs={epochs + cfg.train.warmup_epochs}"] if cfg.train.epochs else [])
    return cfg.with_overrides(extra)


def row_of(dataset: str, kind: str, name: str, description: str, run: Path, metrics: dict) -> list:
    t = metrics["test"]
    cfg = json.loads((run / CONFIG).read_text())
    history = [r for r in _history(run) if int(float(r["epoch"])) >= 0]
    train_imgs = metrics.get("train_images")
    seconds = sum(float(r["seconds"]) for r in history)
    wall = (run / "wall_seconds.txt").read_text().strip() if (run / "wall_seconds.txt").exists() else "–"
    ips = f"{train_imgs * len(history) / seconds:.1f}" if train_imgs and seconds else "–"
    return [dataset, kind, name, description, cfg["train"]["epochs"],
            f"{t['recall@1']:.3f}", f"{t['recall@2']:.3f}", f"{t['recall@4']:.3f}", f"{t['recall@8']:.3f}",
            f"{t['map_at_r']:.3f}", f"{t['nmi']:.3f}", val_cell(metrics), wall, ips]


COLUMNS = ["set", "kind", "run", "what", "epochs", "R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI",
           "val start → selected", "s", "img/s"]   # the cells of row_of, in order
VAL = COLUMNS.index("val start → selected")


def cell(row: list, column: str):
    """One named cell of a table row (rows of results made earlier have the same columns)."""
    return row[COLUMNS.index(column)]


def val_cell(metrics: dict) -> str:
    """Validation R@1 and MAP@R (the metric that picks the epoch) of the start and of the selected epoch."""
    start, best = metrics.get("start", {}).get("val"), metrics.get("val", {})
    if not start:
        return "–"
    return (f"R@1 {start['val_recall@1']:.3f} → {best['val_recall@1']:.3f}, MAP@R {start['val_map_at_r']:.3f} → "
            f"{best['val_map_at_r']:.3f} (epoch {metrics['best_epoch']})")


def _command(run: Path) -> str | None:
    """The benchmark command that trained this run."""
    path = run / "command.txt"
    return path.read_text().strip() if path.exists() else None


def _history(run: Path) -> list[dict]:
    path = run / HISTORY
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def previous_runs(name: str, protocol: dict) -> dict:
    """The runs of results/<name>.json made with the same protocol: their rows are kept when their run folders
    (git-ignored) are gone, so runs made one at a time, or on another machine, add up to one table."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    keys = ("size", "train_per_class", "test_per_class", "epochs")
    if any(old.get("protocol", {}).get(k) != protocol[k] for k in keys):
        return {}
    return {key: entry for key, entry in old.get("runs", {}).items() if "row" in entry}


def seed_summary(payload: dict) -> str:
    """Recipes over seeds: mean ± std per data set and method, and the targets (GAP against frozen, each head
    against GAP). Empty when no recipe has more than one seed."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict]] = {}
    for key, entry in payload.items():
        if entry["kind"] != "recipe":
            continue
        dataset, run = key.split("/", 1)
        method = run.removeprefix("real_").split("_s")[0]
        groups.setdefault((dataset, method), []).append(entry)
    if not any(len(v) > 1 for v in groups.values()):
        return ""
    cols = ["recall@1", "recall@2", "recall@4", "recall@8", "map_at_r", "nmi"]
    mean = {}
    rows = []
    for (dataset, method), entries in sorted(groups.items(), key=lambda kv: (kv[0][0], RECIPES.index(kv[0][1]))):
        values = {c: np.array([e["metrics"]["test"][c] for e in entries]) for c in cols}
        mean[dataset, method] = {c: v.mean() for c, v in values.items()}
        ips = [float(cell(e["row"], "img/s")) for e in entries if cell(e["row"], "img/s") not in ("–", None)]
        secs = [float(cell(e["row"], "s")) for e in entries if cell(e["row"], "s") not in ("–", None)]
        rows.append([dataset, method, len(entries)] + [f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}"
                                                       for v in values.values()]
                    + [f"{np.mean(secs):.0f}" if secs else "–", f"{np.mean(ips):.0f}" if ips else "–"])
    targets = []
    for dataset in sorted({d for d, _ in mean}):
        frozen, gap = mean.get((dataset, "frozen")), mean.get((dataset, "gap"))
        if frozen and gap:
            targets.append(f"- {dataset}: GAP − frozen: R@1 {gap['recall@1'] - frozen['recall@1']:+.3f}, MAP@R "
                           f"{gap['map_at_r'] - frozen['map_at_r']:+.3f} (targets on cub100: +0.03, +0.10)")
        for method in RECIPES[2:]:
            head = mean.get((dataset, method))
            if head and gap:
                targets.append(f"- {dataset}: {method} − GAP: R@1 {head['recall@1'] - gap['recall@1']:+.3f}, MAP@R "
                               f"{head['map_at_r'] - gap['map_at_r']:+.3f}; − frozen: R@1 "
                               f"{head['recall@1'] - frozen['recall@1']:+.3f}" if frozen else "")
    return ("\n\n## Recipes over seeds (mean ± std)\n\n"
            + md_table(["set", "recipe", "seeds", "R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI", "s", "img/s"], rows)
            + "\n\nTargets (means; every head within 0.01 R@1 of GAP):\n" + "\n".join(targets) + "\n")


def main(argv=None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--cached" in argv:  # the frozen-backbone protocol (benchmarks/real_data_cached.py)
        from benchmarks.real_data_cached import main as cached_main
        return cached_main([a for a in argv if a != "--cached"])
    p = argparse.ArgumentParser()
    p.add_argument("--ablation", action="store_true", help="train the ablation rows")
    p.add_argument("--recipes", action="store_true", help="train the configs/real_<method>.yaml recipes")
    p.add_argument("--only", help="comma-separated row names (ablation) or methods (recipes)")
    p.add_argument("--datasets", default="cub100,caltech101")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--train-per-class", type=int, default=8)
    p.add_argument("--test-per-class", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1, help="ablation epochs (recipes: this + their warm-up)")
    p.add_argument("--force", action="store_true", help="retrain runs that exist")
    p.add_argument("--name", default="real_data", help="results file name (and runs folder) of this protocol")
    p.add_argument("--seeds", default="0", help="recipes: comma-separated train.seed values (run real_<m>_s<seed>)")
    p.add_argument("--workers", type=int, default=0, help="train.num_workers (also decodes the GPU image cache)")
    args = p.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    only = set(args.only.split(",")) if args.only else None
    datasets = [d for d in args.datasets.split(",") if (DATASETS[d] / "labels.csv").exists()]
    runs = OUT / args.name  # one folder of runs per protocol (results name)
    for dataset in datasets:
        csv_path = subset_csv(dataset, args.train_per_class, args.test_per_class)
        if args.ablation:
            for name, (_, overrides) in ABLATION.items():
                if only is None or name in only:
                    run_one(runs / dataset / name, ablation_cfg(overrides, csv_path, args.size, args.epochs),
                            args.force)
        if args.recipes:
            for seed in seeds:
                for method in RECIPES:
                    if only is None or method in only:
                        run_one(runs / dataset / recipe_run(method, seed),
                                recipe_cfg(method, csv_path, args.size, args.epochs, seed, args.workers), args.force)
    rows, payload = [], {}
    previous = previous_runs(args.name, vars(args))
    for dataset in DATASETS:  # every set, so training one set keeps the other's rows
        names = [(n, "ablation", d) for n, (d, _) in ABLATION.items()]
        names += [(recipe_run(m, seed), "recipe", f"configs/real_{m}.yaml") for m in RECIPES for seed in range(SEEDS)]
        for name, kind, description in names:
            run, key = runs / dataset / name, f"{dataset}/{name}"
            if not (run / METRICS).exists():
                if key in previous:  # made earlier, its run folder gone: keep its row (seconds as measured)
                    row = list(previous[key]["row"])
                    row[VAL] = val_cell(previous[key]["metrics"])
                    rows.append(row)
                    payload[key] = {**previous[key], "row": row}
                continue
            metrics = json.loads((run / METRICS).read_text())
            row = row_of(dataset, kind, name, description, run, metrics)
            rows.append(row)
            payload[key] = {"kind": kind, "description": description, "metrics": metrics, "row": row,
                            "command": _command(run) or previous.get(key, {}).get("command")}
    md = ("# Real data: frozen vs fine-tuned, ablation of the old own-folder recipe, and the recipes\n\n"
          f"Protocol: {args.size} px input; per data set a fixed subset (every class; {args.train_per_class or 'all'} "
          f"images per train class, {args.test_per_class or 'all'} per unseen test class, the data set's dml_split). "
          f"Ablation rows: {args.epochs} epoch(s), 20 % of the train classes held out, the start NOT a candidate, so "
          "the test figures are those of the trained model (what training does). Recipe rows: the configs/real_*.yaml "
          f"as a user runs them (the start is a candidate), with {args.epochs} epoch(s) after their warm-up; "
          "`val` = validation R@1 and MAP@R (which picks the epoch) of the start → the selected epoch. Test = "
          "unseen classes, every image a query against the others. `s` = wall seconds of the whole run (training, "
          "validation, test; the CPU was shared, so not comparable between rows), `img/s` = training images per "
          "second of the epochs (incl. their validation).\n\n"
          + md_table(COLUMNS, rows))
    md += seed_summary(payload)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    write_results(args.name, {"runs": payload, "protocol": vars(args)}, md, device=device)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
