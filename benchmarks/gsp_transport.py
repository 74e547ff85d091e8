"""A trained GSP run's keep map and retrieval when its transport is turned at test time: μ (the share of mass
transported) and γ (the entropy weight: larger = a sharper plan), on the shapes test classes.

    python -m benchmarks.gsp_transport [RUN_DIR] [--mu 0.1] [--gamma 5,10,20,50]

The weights stay as trained (`GSPHead.with_transport` makes a copy with the other μ/γ, as the Learn page's
knobs do); every test image is embedded again for R@1 / MAP@R, and the keep map is scored on 320 of them as
`benchmarks.heads_interpretability` does: share of its mass on the target object, on the distractors, and
the effective number of kept positions, exp(entropy of the normalised map) (all h·w positions for average
pooling, about μ·h·w for a sharp plan).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, md_table, write_results
from benchmarks.heads_interpretability import score_maps
from core import checkpoint as ckpt
from core.data import build_datasets
from core.evaluate import all_metrics


@torch.no_grad()
def sweep(run: Path, mus: list[float] | None, gammas: list[float], images: int = 320,
          batch: int = 160) -> tuple[list[dict], int]:
    """One row per (μ, γ) (μ: the run's own when None), and the number of map positions."""
    model, cfg = ckpt.load_run(run)
    model.eval()
    if not hasattr(model.head, "with_transport"):
        raise SystemExit(f"{run} is not a GSP run (its head is {cfg.model.head!r})")
    test = build_datasets(cfg.data, seed=cfg.train.seed).test
    scored = set(np.linspace(0, len(test) - 1, min(images, len(test))).round().astype(int).tolist())
    trained = model.head
    rows, positions = [], 0
    for mu in mus or [trained.mu]:
        for gamma in gammas:
            model.head = trained.with_transport(mu, gamma)
            embs, labels, mass, clutter, cells = [], [], [], [], []
            for start in range(0, len(test), batch):
                idx = list(range(start, min(start + batch, len(test))))
                items = [test[i] for i in idx]
                explanation = model.explain(torch.stack([it[0] for it in items]))
                embs.append(np.asarray(explanation.embedding, dtype=np.float32))
                labels += [it[1] for it in items]
                keep_idx = [j for j, i in enumerate(idx) if i in scored]
                if not keep_idx:
                    continue
                keep = torch.as_tensor(explanation.maps["keep"])[keep_idx].float()
                positions = keep.shape[-2] * keep.shape[-1]
                masks = torch.from_numpy(np.stack([test.annotation(idx[j])["mask"] for j in keep_idx]))
                distractors = torch.from_numpy(np.stack([test.annotation(idx[j])["distractors"] for j in keep_idx]))
                s = score_maps(keep, masks, distractors)
                mass.append(s["mass"][:, 0]), clutter.append(s["clutter"][:, 0])
                p = keep.flatten(1).clamp_min(0)
                p = p / p.sum(1, keepdim=True)
                cells.append((-(p * p.clamp_min(1e-12).log()).sum(1)).exp().numpy())
            metrics = all_metrics(np.concatenate(embs), np.asarray(labels))
            rows.append({"mu": mu, "gamma": gamma, "trained": gamma == trained.gamma and mu == trained.mu,
                         "as_run": gamma == trained.eval_gamma and mu == trained.mu,
                         "recall@1": metrics["recall@1"], "map_at_r": metrics["map_at_r"],
                         "keep_on_object": float(np.concatenate(mass).mean()),
                         "keep_on_distractors": float(np.concatenate(clutter).mean()),
                         "kept_positions": float(np.concatenate(cells).mean())})
    model.head = trained
    return rows, positions


def markdown(run: Path, rows: list[dict], grid: str) -> str:
    table = [[f"{r['mu']:g}", f"{r['gamma']:g}" + (" (trained)" if r["trained"] else "")
              + (" (the run's evaluation)" if r["as_run"] and not r["trained"] else ""), f"{r['recall@1']:.3f}",
              f"{r['map_at_r']:.3f}", f"{r['keep_on_object']:.3f}", f"{r['keep_on_distractors']:.3f}",
              f"{r['kept_positions']:.1f} of {grid}"] for r in rows]
    return (f"# GSP's transport turned at test time (`{run}`)\n\n"
            "The trained weights with another μ / γ (`GSPHead.with_transport`). Keep map scored on 320 shapes test "
            "images: share of its mass on the target object (uniform 0.123) and on the distractors (uniform "
            "0.071); kept positions = exp(entropy) of the normalised map. R@1 / MAP@R over all 960 test images.\n\n"
            + md_table(["μ", "γ", "R@1", "MAP@R", "keep on object", "keep on distractors", "kept positions"], table))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", type=Path, default=ROOT / "checkpoints" / "shapes_gsp")
    p.add_argument("--mu", default=None, help="comma-separated μ values (default: the run's)")
    p.add_argument("--gamma", default="5,10,20,50", help="comma-separated γ values")
    p.add_argument("--name", default="gsp_transport")
    args = p.parse_args(argv)
    run = args.run.resolve()
    mus = [float(v) for v in args.mu.split(",")] if args.mu else None
    rows, positions = sweep(run, mus, [float(v) for v in args.gamma.split(",")])
    label = str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run)
    md = markdown(label, rows, str(positions))
    write_results(args.name, {"run": label, "rows": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
