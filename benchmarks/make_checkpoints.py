"""Regenerate the shipped demo runs in checkpoints/: one per method on `shapes`, seeded.

    python -m benchmarks.make_checkpoints [--only gap,gsp] [--epochs N]

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
from core.config import RunConfig
from core.projection import ensure_coords
from core.train import train

METHODS = ["gap", "grouping", "gsp", "csa", "dsl", "cia"]
ROOT = Path(__file__).resolve().parents[1]


def write_readme(out: Path, summary: dict) -> None:
    lines = ["# Shipped demo runs\n",
             "The dashboard (`make run`) opens on these run directories: one per method, each with its weights "
             "(safetensors), config, metrics, training history and dashboard artifacts (test embeddings, labels, PCA "
             "and UMAP coordinates). No optimiser state: it is not needed to explore and would triple the size.\n",
             f"Made by `python -m benchmarks.make_checkpoints` (`make checkpoints`) in one command on "
             f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, seeded (train.seed 0), "
             "each config's full schedule. Test metrics are on the 32 unseen shapes classes (960 images; chance "
             "R@1 = 0.031). Times include UMAP; the load-average column says how busy the machine was "
             "(training itself keeps both cores busy, ≈ 2; more means other work shared the machine; shapes_gap includes the one-off numba compilation of UMAP).\n",
             "| run | epochs | train + UMAP (s) | load avg | size (MiB) | R@1 | MAP@R | NMI | made |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in [m for m in METHODS if m in summary]:
        r, t = summary[method], summary[method]["test"]
        lines.append(f"| shapes_{method} | {r['epochs']} | {r['seconds']:.0f} | {r['load_average']} | {r['mib']:.1f} | "
                     f"{t['recall@1']:.3f} | {t['map_at_r']:.3f} | {t['nmi']:.3f} | {r['date']} |")
    lines.append(f"\nTotal: {sum(r['seconds'] for r in summary.values()) / 60:.1f} minutes.\n")
    (out / "README.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--epochs", type=int, help="override every config's epochs (quick checks)")
    parser.add_argument("--out", default=str(ROOT / "checkpoints"))
    args = parser.parse_args(argv)
    methods = args.only.split(",") if args.only else METHODS
    out = Path(args.out)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for method in methods:
        cfg = RunConfig.load(ROOT / "configs" / f"shapes_{method}.yaml")
        if args.epochs is not None:
            cfg = cfg.with_overrides([f"train.epochs={args.epochs}"])
        run_dir = out / f"shapes_{method}"
        shutil.rmtree(run_dir, ignore_errors=True)
        start, load_before = time.time(), os.getloadavg()[0]
        metrics = train(cfg, run_dir)
        ensure_coords(run_dir, "umap")
        (run_dir / ckpt.RESUME).unlink(missing_ok=True)
        seconds = time.time() - start
        size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file()) / 2**20
        summary[method] = dict(epochs=cfg.train.epochs, seconds=round(seconds, 1), mib=round(size, 2),
                               load_average=round((load_before + os.getloadavg()[0]) / 2, 1),
                               date=str(date.today()), test=metrics["test"])
        print(f"{method}: {seconds:.0f}s, {size:.1f} MiB, test R@1 {metrics['test']['recall@1']:.3f}", flush=True)
        summary_path.write_text(json.dumps(summary, indent=2))
    if set(methods) == set(METHODS):  # a partial run keeps the hand-written table
        write_readme(out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
