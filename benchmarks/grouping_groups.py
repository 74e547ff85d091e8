"""Each DGML group on its own: where it looks and how well it retrieves (shapes test classes).

For every group g of a grouping run: its attention map's mass on the target object (the map upsampled
to the image, share of its mass inside the object mask; uniform = the mask's area share, the same
scoring as benchmarks/heads_interpretability.py) and its solo R@1 / MAP@R (retrieval with that group's
unit sub-embedding alone), next to the whole embedding. A dead group (mass at or below uniform, solo
R@1 far below the others) shows up here.

    python -m benchmarks.grouping_groups RUN_DIR [RUN_DIR ...]
    python -m benchmarks.grouping_groups --train [--epochs 12]   # trains shapes_grouping with the
                                                                 # per-group loss and the concatenated one
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import ROOT, RUNS, md_table, write_results
from benchmarks.heads_interpretability import score_maps
from core import checkpoint as ckpt
from core.config import RunConfig
from core.data import build_datasets
from core.evaluate import all_metrics


@torch.no_grad()
def evaluate_groups(run: Path, batch: int = 128) -> dict:
    model, cfg = ckpt.load_run(run)
    model.eval()
    test = build_datasets(cfg.data, seed=cfg.train.seed).test
    embs, labels, mass, area = [], [], [], []
    for start in range(0, len(test), batch):
        items = [test[i] for i in range(start, min(start + batch, len(test)))]
        x = torch.stack([it[0] for it in items])
        masks = torch.from_numpy(np.stack([test.annotation(i)["mask"] for i in range(start, start + len(items))]))
        explanation = model.explain(x)
        embs.append(explanation.embedding.float())
        labels.append(torch.as_tensor([int(it[1]) for it in items]))
        mass.append(score_maps(explanation.maps["group_attention"], masks)["mass"])
        area.append(masks.float().mean((1, 2)).numpy())
    emb, lab = torch.cat(embs), torch.cat(labels).numpy()
    mass, area = np.concatenate(mass), np.concatenate(area)
    groups = []
    for g, sl in enumerate(model.head.groups):
        m = all_metrics(F.normalize(emb[:, sl], dim=1).numpy(), lab, (1,))
        groups.append({"group": g, "mass_on_object": float(mass[:, g].mean()), "recall@1": m["recall@1"],
                       "map_at_r": m["map_at_r"]})
    whole = all_metrics(emb.numpy(), lab, (1,))
    head_args = cfg.model.head_args
    return {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
            "per_group_margin": bool(head_args.get("per_group_margin", True)), "epochs": cfg.train.epochs,
            "images": int(len(lab)), "uniform_mass": float(area.mean()), "groups": groups,
            "mean_group_mass": float(mass.mean()), "recall@1": whole["recall@1"], "map_at_r": whole["map_at_r"]}


def markdown(results: list[dict]) -> str:
    rows = []
    for r in results:
        loss = "per-group margin (DGML)" if r["per_group_margin"] else "criterion on the concatenation"
        for g in r["groups"]:
            rows.append([f"`{r['run']}`", loss, r["epochs"], f"group {g['group']}", f"{g['mass_on_object']:.3f}",
                         f"{r['uniform_mass']:.3f}", f"{g['recall@1']:.3f}", f"{g['map_at_r']:.3f}"])
        rows.append([f"`{r['run']}`", loss, r["epochs"], "all groups", f"{r['mean_group_mass']:.3f} (mean)",
                     f"{r['uniform_mass']:.3f}", f"{r['recall@1']:.3f}", f"{r['map_at_r']:.3f}"])
    return ("# DGML groups one by one (shapes test classes)\n\n"
            "Mass on object: share of a group's attention inside the target mask (uniform = the mask's area "
            "share). Solo R@1 / MAP@R: retrieval with that group's unit sub-embedding alone; *all groups*: "
            "the whole embedding.\n\n"
            + md_table(["run", "loss", "epochs", "group", "mass on object", "uniform", "R@1", "MAP@R"], rows) + "\n")


def train_pair(epochs: int) -> list[Path]:
    from core.train import train

    runs = []
    for per_group in (True, False):
        cfg = RunConfig.load(ROOT / "configs" / "shapes_grouping.yaml").with_overrides(
            [f"train.epochs={epochs}", f"model.head_args.per_group_margin={str(per_group).lower()}", "train.device=cpu"]
            + ([] if per_group else ["train.loss=multi_similarity", "train.miner=multi_similarity"]))
        out = RUNS / f"groups_{'pergroup' if per_group else 'concat'}_e{epochs}"
        if not (out / ckpt.METRICS).exists():
            train(cfg, out)
        runs.append(out)
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--train", action="store_true", help="train the two shapes_grouping variants first")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--name", default="grouping_groups")
    args = p.parse_args(argv)
    runs = list(args.runs) + (train_pair(args.epochs) if args.train else [])
    if not runs:
        p.error("give run directories or --train")
    results = [evaluate_groups(Path(r).resolve()) for r in runs]
    md = markdown(results)
    write_results(args.name, {"results": results}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
