"""Real data, the frozen-backbone protocol: every recipe trained on cached backbone features, against the frozen network.

    python -m benchmarks.real_data --cached                              # cub100 and caltech101, every recipe
    python -m benchmarks.real_data --cached --only gap,grouping --datasets cub100
    python -m benchmarks.real_data --cached --fresh-cache --only gap     # re-measure the first head (caching included)
    python -m benchmarks.real_data --cached --tabulate                   # only the table, from the runs made

Protocol: each configs/real_<method>.yaml as `python -m core train --frozen-backbone` runs it (the ImageNet
EfficientNet-Lite0 frozen, its features computed once and cached on disk, CSA's block on the last stage's
output), on every image of the data set at 224 px (squashed), the data set's own class split, 20 % of the train
classes held out for validation, seed 0, on this machine's CPU. The feature cache has a folder of its own per
protocol (`benchmarks/runs/real_data/<name>/cache`): GAP runs first and pays the backbone pass (the caching),
every later run of the data set reads the cache; the table says which run computed it. Targets (issue 25): every
head R@1 ≥ frozen and MAP@R ≥ frozen + 0.02; the first head on a 5,000-image folder under 15 minutes with the
caching included, each further head under a third of that.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from datetime import date
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, md_table, write_results
from benchmarks.real_data import DATASETS, OUT, data_overrides, run_one, subset_csv
from core.config import RunConfig
from core.run_dir import CONFIG, METRICS
from core.train_features import frozen_backbone_overrides

ORDER = ["gap", "frozen", "grouping", "gsp", "csa", "dsl", "cia"]   # GAP first: it computes the cache
MAP_MARGIN = 0.02   # MAP@R must beat the frozen network's by this much
FIRST_HEAD_S = 15 * 60


def recipe_cfg(method: str, csv_path: Path, size: int, seed: int, epochs: int | None, views: int | None) -> RunConfig:
    cfg = RunConfig.load(ROOT / "configs" / f"real_{method}.yaml")
    extra = data_overrides(csv_path, size) + [f"train.seed={seed}"]
    if epochs is not None and cfg.train.epochs:
        extra.append(f"train.epochs={epochs}")
    if views is not None:
        extra.append(f"train.cached_views={views}")
    cfg = cfg.with_overrides(extra)
    return cfg.with_overrides(frozen_backbone_overrides(cfg))


def first_heads(payload: dict, previous: dict, datasets: list[str], date: str) -> dict:
    """Per data set, the last measured run that computed the feature cache (GAP's, the first head): this run's
    where it computed the cache, else the one kept from the previous results (a GAP trained again on a cache
    that an earlier run computed reads it, and its wall time no longer includes the caching pass)."""
    kept = dict(previous.get("first_heads", {}))
    for key, row in previous.get("runs", {}).items():   # results written before first_heads was kept
        name, method = key.split("/")
        if method == "gap" and name not in kept and "computed" in row["metrics"].get("feature_cache", {}).get("files", {}).values():
            kept[name] = {"caching_seconds": row["metrics"]["feature_cache"]["seconds"], "wall_seconds": row["wall_seconds"],
                          "cpu_seconds": row["cpu_seconds"], "date": previous["date"][:10]}
    for name in datasets:
        row = payload.get(f"{name}/gap")
        if row and "computed" in row["metrics"].get("feature_cache", {}).get("files", {}).values():
            kept[name] = {"caching_seconds": row["metrics"]["feature_cache"]["seconds"], "wall_seconds": row["wall_seconds"],
                          "cpu_seconds": row["cpu_seconds"], "date": date}
    return kept


def table(runs: Path, datasets: list[str]) -> tuple[str, dict]:
    cols = ["set", "recipe", "start", "best epoch", "R@1", "MAP@R", "NMI", "frozen R@1 / MAP@R", "ΔR@1", "ΔMAP@R", "target",
            "cache", "caching s", "wall s", "CPU s"]
    rows, payload, notes = [], {}, []
    for dataset in datasets:
        found = {m: json.loads((runs / dataset / f"real_{m}" / METRICS).read_text()) for m in ORDER
                 if (runs / dataset / f"real_{m}" / METRICS).exists()}
        frozen = found.get("frozen", {}).get("test") or next((m["frozen"]["test"] for m in found.values() if "frozen" in m),
                                                             None)
        walls = {}
        for method, metrics in found.items():
            t, wall_file = metrics["test"], runs / dataset / f"real_{method}" / "wall_seconds.txt"
            walls[method] = float(wall_file.read_text()) if wall_file.exists() else float("nan")
            cpu_file = runs / dataset / f"real_{method}" / "cpu_seconds.txt"
            cpu = float(cpu_file.read_text()) if cpu_file.exists() else float("nan")
            cache = metrics.get("feature_cache", {})
            computed = [v for v, how in cache.get("files", {}).items() if how == "computed"]
            dr1 = t["recall@1"] - frozen["recall@1"] if frozen else float("nan")
            dmap = t["map_at_r"] - frozen["map_at_r"] if frozen else float("nan")
            met = "–" if method == "frozen" or not frozen else ("yes" if dr1 >= 0 and dmap >= MAP_MARGIN else "**no**")
            config = json.loads((runs / dataset / f"real_{method}" / CONFIG).read_text())
            start = config["model"]["projection_init"] if metrics.get("epochs") else "–"
            rows.append([dataset, method, start, metrics["best_epoch"] if metrics.get("epochs") else "–",
                         f"{t['recall@1']:.3f}", f"{t['map_at_r']:.3f}", f"{t['nmi']:.3f}",
                         f"{frozen['recall@1']:.3f} / {frozen['map_at_r']:.3f}" if frozen else "–",
                         f"{dr1:+.3f}", f"{dmap:+.3f}", met,
                         (f"computed views {', '.join(str(int(v) + 1) for v in computed)}" if computed else "read"),
                         f"{cache.get('seconds', 0):.0f}", f"{walls[method]:.0f}", f"{cpu:.0f}"])
            payload[f"{dataset}/{method}"] = {"metrics": metrics, "wall_seconds": walls[method], "cpu_seconds": cpu}
        if "gap" in walls:
            images = found["gap"]["train_images"]
            further = {m: s for m, s in walls.items() if m not in ("gap", "frozen")}
            notes.append(f"- {dataset}: first head (GAP, with caching) {{first_{dataset}}} "
                         f"(target < {FIRST_HEAD_S / 60:.0f} min on 5,000 images); further heads "
                         + (", ".join(f"{m} {s / 60:.1f}" for m, s in further.items()) + " min" if further else "none yet")
                         + f" (target < {FIRST_HEAD_S / 3 / 60:.0f} min); {images} train images")
    return md_table(cols, rows) + "\n\n" + "\n".join(notes) + "\n", payload


def beside_fine_tuning(payload: dict) -> str:
    """cub100 per recipe: this protocol beside the fine-tuned GPU rows (results/real_data_gpu.json, 3 seeds), with
    what each costs."""
    import numpy as np

    from benchmarks.common import RESULTS
    from benchmarks.real_data import cell

    path = RESULTS / "real_data_gpu.json"
    if not path.exists():
        return ""
    gpu = json.loads(path.read_text())["runs"]
    rows = []
    for method in ORDER:
        mine = payload.get(f"cub100/{method}")
        seeds = [e for k, e in gpu.items() if k.split("/")[1] in (f"real_{method}", *(f"real_{method}_s{i}" for i in range(5)))]
        if not mine and not seeds:
            continue
        cells = [method]
        if seeds:
            r1 = np.array([e["metrics"]["test"]["recall@1"] for e in seeds])
            mp = np.array([e["metrics"]["test"]["map_at_r"] for e in seeds])
            secs = np.mean([float(cell(e["row"], "s")) for e in seeds])
            cells += [f"{r1.mean():.3f} / {mp.mean():.3f} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})", f"{secs:.0f}"]
        else:
            cells += ["–", "–"]
        if mine:
            t = mine["metrics"]["test"]
            cells += [f"{t['recall@1']:.3f} / {t['map_at_r']:.3f}", f"{mine['wall_seconds']:.0f}",
                      f"{mine['cpu_seconds']:.0f}"]
        else:
            cells += ["–", "–", "–"]
        rows.append(cells)
    return ("\n\n## cub100: fine-tuned on a GPU beside frozen on cached features (CPU), and what each costs\n\n"
            "Fine-tuned: `bash benchmarks/gpu_session.sh` (an H200, 224 px, every image, 1 warm-up + 15 epochs, "
            "the backbone trained; the JPEGs re-encoded at quality 70 to travel, 14 runs sharing the GPU; its "
            "frozen row is that copy's). Frozen backbone: the table above (this 2-core CPU, shared).\n\n"
            + md_table(["recipe", "fine-tuned (GPU) R@1 / MAP@R", "GPU s per run", "frozen backbone (CPU) R@1 / MAP@R",
                        "CPU wall s", "CPU s"], rows) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_data --cached")
    p.add_argument("--only", help="comma-separated methods (frozen, gap, grouping, gsp, csa, dsl, cia)")
    p.add_argument("--datasets", default="cub100,caltech101")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--epochs", type=int, help="override the recipes' epochs")
    p.add_argument("--views", type=int, help="override train.cached_views")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="real_data_cached", help="results file name (and runs folder)")
    p.add_argument("--force", action="store_true", help="retrain runs that exist")
    p.add_argument("--fresh-cache", action="store_true", help="delete this protocol's feature cache first")
    p.add_argument("--tabulate", action="store_true", help="train nothing; only write the table")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runs = OUT / args.name
    cache = runs / "cache"
    if args.fresh_cache:
        shutil.rmtree(cache, ignore_errors=True)
    os.environ["METRICLENS_CACHE"] = str(cache)
    only = set(args.only.split(",")) if args.only else set(ORDER)
    datasets = [d for d in args.datasets.split(",") if (DATASETS[d] / "labels.csv").exists()]
    if not args.tabulate:
        for dataset in datasets:
            csv_path = subset_csv(dataset, 0, 0)
            for method in [m for m in ORDER if m in only]:
                run = runs / dataset / f"real_{method}"
                before = os.times()
                run_one(run, recipe_cfg(method, csv_path, args.size, args.seed, args.epochs, args.views), args.force)
                after = os.times()
                if not (run / "cpu_seconds.txt").exists() or args.force:  # what a quiet machine would need, about
                    cpu = after.user + after.system - before.user - before.system
                    (run / "cpu_seconds.txt").write_text(f"{cpu:.1f}\n")
    md, payload = table(runs, datasets)
    results = RESULTS / f"{args.name}.json"
    previous = json.loads(results.read_text()) if results.exists() else {}
    heads = first_heads(payload, previous, datasets, str(date.today()))
    for dataset in datasets:
        first, gap = heads.get(dataset), payload.get(f"{dataset}/gap")
        if first is None:
            text = "not measured (no run computed the cache)"
        elif gap and "computed" in gap["metrics"].get("feature_cache", {}).get("files", {}).values():
            text = f"{first['wall_seconds'] / 60:.1f} min"
        else:
            text = (f"{first['wall_seconds'] / 60:.1f} min (caching {first['caching_seconds']:.0f} s, CPU "
                    f"{first['cpu_seconds']:.0f} s; measured {first['date']} with the caching)")
        md = md.replace(f"{{first_{dataset}}}", text)
    md += beside_fine_tuning(payload)
    md = ("# Real data, frozen backbone: every recipe on cached features (CPU)\n\n"
          f"Every configs/real_<method>.yaml as `python -m core train --frozen-backbone` runs it: ImageNet "
          f"EfficientNet-Lite0 frozen, its features cached once on disk, {args.size} px, every image, the data set's "
          "class split, 20 % of the train classes for validation (they pick the epoch; the start and the frozen "
          "network are scored first), seed 0. Test: the unseen classes, every image a query against the others. "
          "Target: R@1 ≥ frozen and MAP@R ≥ frozen + 0.02. `start`: `model.projection_init` (`--frozen-backbone` uses "
          "uncentred_pca, DSL pca; a CSA or CIA row with `pca` predates that change). `cache`: computed or read; "
          "`caching s` its part of `wall s`, the whole run's wall time on the shared 2-core CPU; `CPU s` (user + "
          "system) is what other jobs do not inflate: a quiet 2-core machine needs about half of it, or more.\n\n" + md)
    write_results(args.name, {"runs": payload, "first_heads": heads, "protocol": vars(args)}, md, device="cpu")
    print(md)
    return 0
