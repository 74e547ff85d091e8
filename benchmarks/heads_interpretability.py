"""Do the attention maps look at the target object? Scored on shapes test images against their masks.

For every map a trained run exposes (`Embedder.explain`: grouping `group_attention`, GSP `keep` and
`prototypes`, CSA `csa_base`/`csa_weights`), plus every registered per-position explainer the model
supports, asked about the object's centre pixel (`explain(..., explainer="csa_position", row, col)`: the
attention CSA's object-centre position uses, per group, scored as `csa_at_object`):
each channel is upsampled bilinearly to the image size, clipped at 0 and normalised to a
distribution over pixels, then scored by
  * mass inside: the share of the map's mass that falls inside the target mask;
  * pointing game: whether the map's argmax pixel lies inside the mask.
Reported for the channel-mean map ("aggregate"), averaged over channels ("per channel"), and for the
single best channel by mass (chosen on the same images, so optimistic; "held out": chosen on the even
images and scored on the odd ones). The uniform map is the baseline: its mass inside = the mask's area share, its pointing accuracy (random argmax) the same.
The object-shaped map is the reference for "covers the object": at the map's own grid (8×8 on `shapes`), each cell weighted
by the share of it the object covers, then upsampled and scored the same way. It is what a map that covers exactly
the object can reach at that resolution (below 1: bilinear upsampling spreads every cell over its neighbours;
its value is a column of every table); a map scores higher only by favouring the object's inner cells.

    python -m benchmarks.heads_interpretability RUN_DIR [RUN_DIR ...]
    python -m benchmarks.heads_interpretability            # runs of heads_accuracy (seed 0) if present,
                                                          # else trains short runs into benchmarks/runs/
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import ROOT, RUNS, md_table, registered_methods, write_results
from core import checkpoint as ckpt
from core.data import build_datasets
from core.explain import explain, explainers
from core.map_scores import score_maps


def default_runs(epochs: int, max_per_class: int) -> list[Path]:
    """Seed-0 runs of heads_accuracy (most epochs) when they exist; otherwise train short ones."""
    from benchmarks.heads_accuracy import config_for, train_one

    runs = []
    for head in registered_methods():
        found = sorted(RUNS.glob(f"acc_{head}_e*_s0"), key=lambda p: int(p.name.split("_e")[1].split("_")[0]))
        found = [p for p in found if (p / ckpt.METRICS).exists()]
        if found:
            runs.append(found[-1])
            continue
        out = RUNS / f"acc_{head}_e{epochs}_s0"
        train_one(config_for(head, epochs, 0, max_per_class, "cpu", []), out)
        runs.append(out)
    return runs


def _summarise(per_channel: dict[str, np.ndarray], aggregate: dict[str, np.ndarray]) -> dict:
    mass, hit = per_channel["mass"], per_channel["hit"]              # N×K
    channel_mass = np.nanmean(mass, 0)
    best = int(np.nanargmax(channel_mass)) if np.isfinite(channel_mass).any() else -1
    even = np.nanmean(mass[0::2], 0)
    held = int(np.nanargmax(even)) if np.isfinite(even).any() else -1
    return {"channels": int(mass.shape[1]),
            "aggregate_mass": float(np.nanmean(aggregate["mass"])), "aggregate_pointing": float(np.nanmean(aggregate["hit"])),
            "per_channel_mass": float(np.nanmean(mass)), "per_channel_pointing": float(np.nanmean(hit)),
            "best_channel": best,
            "best_channel_mass": float(channel_mass[best]) if best >= 0 else float("nan"),
            "best_channel_pointing": float(np.nanmean(hit[:, best])) if best >= 0 else float("nan"),
            "best_channel_mass_held_out": float(np.nanmean(mass[1::2, held])) if held >= 0 else float("nan"),
            "aggregate_clutter": float(np.nanmean(aggregate["clutter"]))}


def _centre(mask: torch.Tensor) -> tuple[int, int]:
    """The mask pixel nearest the mask's centroid."""
    yy, xx = np.nonzero(mask.numpy())
    c = np.argmin((yy - yy.mean()) ** 2 + (xx - xx.mean()) ** 2)
    return int(yy[c]), int(xx[c])


@torch.no_grad()
def evaluate_run(run: Path, n_images: int, batch: int = 64) -> dict:
    model, cfg = ckpt.load_run(run)
    splits = build_datasets(cfg.data, seed=cfg.train.seed)
    test = splits.test
    idx = np.linspace(0, len(test) - 1, min(n_images, len(test))).round().astype(int)  # spread over classes
    per_channel: dict[str, list] = {}
    aggregate: dict[str, list] = {}
    area, clutter_area = [], []
    covered: dict[str, list] = {}        # map name -> the object-shaped map's mass, per batch
    for start in range(0, len(idx), batch):
        part = idx[start:start + batch]
        x = torch.stack([test[int(i)][0] for i in part])
        masks = torch.from_numpy(np.stack([test.annotation(int(i))["mask"] for i in part]))
        clutter = torch.from_numpy(np.stack([test.annotation(int(i))["distractors"] for i in part]))
        area.append(masks.float().mean((1, 2)).numpy())
        clutter_area.append(clutter.float().mean((1, 2)).numpy())
        explanation = model.explain(x)
        maps = dict(explanation.maps)
        for explainer in explainers("position", model):   # e.g. CSA: what the object's centre pixel attends to
            outs = [explain(model, x[j], explainer=explainer.name, row=row, col=col).maps
                    for j, (row, col) in enumerate(map(_centre, masks))]
            for name in outs[0]:                             # "csa_position[@stage]" -> "csa_at_object[@stage]"
                maps[name.replace("_position", "_at_object")] = torch.stack([torch.from_numpy(o[name]) for o in outs])
        for name, tensor in maps.items():
            shaped = F.adaptive_avg_pool2d(masks[:, None].float(), tuple(tensor.shape[-2:]))
            covered.setdefault(name, []).append(score_maps(shaped, masks)["mass"][:, 0])
            s = score_maps(tensor, masks, clutter)
            per_channel.setdefault(name, []).append(s)
            aggregate.setdefault(name, []).append(score_maps(tensor.float().mean(1, keepdim=True), masks, clutter))
    cat = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in ("mass", "hit", "clutter")}
    area = np.concatenate(area)
    trained = json.loads((run / ckpt.METRICS).read_text())
    result = {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
              "trained": f"{trained.get('epochs', '?')} epochs on {trained.get('trained_on', trained.get('device', '?'))}",
              "head": cfg.model.head, "blocks": [b.name for b in cfg.model.blocks], "images": int(len(idx)),
              "uniform_mass": float(area.mean()), "uniform_pointing": float(area.mean()),
              "uniform_clutter": float(np.concatenate(clutter_area).mean()),
              "maps": {name: {**_summarise(cat(per_channel[name]), cat(aggregate[name])),
                              "object_shaped_mass": float(np.concatenate(covered[name]).mean()),
                              "grid": list(maps[name].shape[-2:])}
                       for name in per_channel}}
    return result


def markdown(results: list[dict], n_images: int) -> str:
    rows = []
    for r in results:
        label = r["head"] + (" + " + ", ".join(r["blocks"]) if r["blocks"] else "")
        rows.append([label, "uniform (baseline)", 1, f"{r['uniform_mass']:.3f}", "–", "–",
                     f"{r['uniform_pointing']:.3f}", "–", f"{r['uniform_clutter']:.3f}", "–"])
        for name, s in r["maps"].items():
            rows.append([label, f"`{name}`", s["channels"], f"{s['aggregate_mass']:.3f}", f"{s['per_channel_mass']:.3f}",
                         f"{s['best_channel_mass']:.3f} (#{s['best_channel']}; held out {s['best_channel_mass_held_out']:.3f})", f"{s['aggregate_pointing']:.3f}",
                         f"{s['best_channel_pointing']:.3f}", f"{s['aggregate_clutter']:.3f}",
                         f"{s['object_shaped_mass']:.3f} ({s['grid'][0]}×{s['grid'][1]})"])
    runs = ", ".join(f"`{r['run']}` ({r.get('trained', '?')})" for r in results)
    return ("# Interpretability: attention on the target object (shapes test images)\n\n"
            f"{n_images} test images (unseen classes) per run, maps upsampled bilinearly to 64×64 and normalised per "
            "channel. *Mass inside* = share of the map's mass inside the target mask; *pointing* = argmax inside "
            "the mask. Aggregate = the channel-mean map; best channel picked by mass on the same images "
            "(optimistic; held out: picked on the even images, scored on the odd ones). `csa_at_object`: the "
            "attention CSA's object-centre position uses, per group. *On distractors*: the aggregate map's mass on "
            "the smaller clutter objects (drawn from the same shapes and colours), the nuisance a pooling should "
            "ignore; the rest is background. Uniform: mass = mask area share, pointing = chance. *Object-shaped "
            "map*: each cell of the map's grid weighted by the object's share of it, "
            "upsampled and scored alike (what a map covering exactly the object reaches at that grid). "
            f"Runs: {runs}.\n\n"
            + md_table(["model", "map", "K", "mass (aggregate)", "mass (per channel)", "mass (best channel)",
                        "pointing (aggregate)", "pointing (best channel)", "on distractors (aggregate)",
                        "object-shaped map (grid)"], rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="run directories (default: see above)")
    p.add_argument("--images", type=int, default=320, help="test images per run")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the short runs trained when none exist")
    p.add_argument("--max-per-class", type=int, default=20, help="train images per class of those runs")
    p.add_argument("--name", default="heads_interpretability")
    args = p.parse_args(argv)
    runs = args.runs or default_runs(args.epochs, args.max_per_class)
    results = []
    for run in runs:
        print(f"scoring {run}", flush=True)
        results.append(evaluate_run(Path(run).resolve(), args.images))
    write_results(args.name, {"images": args.images, "results": results}, markdown(results, args.images))
    print(markdown(results, args.images))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
