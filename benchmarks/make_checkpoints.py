"""Regenerate the shipped demo runs in checkpoints/: one per method on `shapes`, seeded.

    python -m benchmarks.make_checkpoints [--only gap,gsp] [--epochs N]

Each run is trained from scratch with its config, then gets UMAP coordinates (so the dashboard
never waits for UMAP's JIT) and loses its resume.pt (optimiser state: not needed to explore,
and it would triple the size). Timings and test metrics go to checkpoints/README.md.
"""
from __future__ import annotations

import argparse
import json
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--epochs", type=int, help="override every config's epochs (quick checks)")
    parser.add_argument("--out", default=str(ROOT / "checkpoints"))
    args = parser.parse_args(argv)
    methods = args.only.split(",") if args.only else METHODS
    out = Path(args.out)
    rows = []
    for method in methods:
        cfg = RunConfig.load(ROOT / "configs" / f"shapes_{method}.yaml")
        if args.epochs is not None:
            cfg = cfg.with_overrides([f"train.epochs={args.epochs}"])
        run_dir = out / f"shapes_{method}"
        shutil.rmtree(run_dir, ignore_errors=True)
        start = time.time()
        metrics = train(cfg, run_dir)
        ensure_coords(run_dir, "umap")
        (run_dir / ckpt.RESUME).unlink(missing_ok=True)
        seconds = time.time() - start
        size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file()) / 2**20
        rows.append((method, cfg.train.epochs, seconds, size, metrics["test"]))
        print(f"{method}: {seconds:.0f}s, {size:.1f} MiB, test R@1 {metrics['test']['recall@1']:.3f}", flush=True)
    if set(methods) == set(METHODS) and args.epochs is None:
        lines = [f"# Shipped demo runs\n", f"Made by `python -m benchmarks.make_checkpoints` (`make checkpoints`) on "
                 f"{date.today()}, {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPU cores, "
                 f"Python {sys.version.split()[0]}. Test metrics are on the 32 unseen shapes classes.\n",
                 "| run | epochs | train+UMAP time (s) | size (MiB) | R@1 | MAP@R | NMI |", "|---|---|---|---|---|---|---|"]
        for m, ep, s, mb, t in rows:
            lines.append(f"| shapes_{m} | {ep} | {s:.0f} | {mb:.1f} | {t['recall@1']:.3f} | {t['map_at_r']:.3f} | {t['nmi']:.3f} |")
        lines.append(f"\nTotal: {sum(r[2] for r in rows) / 60:.1f} minutes.\n")
        (out / "README.md").write_text("\n".join(lines))
        (out / "summary.json").write_text(json.dumps([dict(method=m, epochs=ep, seconds=s, mib=mb, test=t)
                                                      for m, ep, s, mb, t in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
