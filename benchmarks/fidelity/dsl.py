"""DSL's margin loss and triplet sampler vs the official code (github.com/adigasu/Dynamic_subspace_learners).

    python -m benchmarks.fidelity.dsl --official /path/to/Dynamic_subspace_learners

Input: real shapes batches (class-balanced: 8 classes × 4, and an unbalanced one: classes of 2–6
images, as a DSL cluster can be) through the shipped DSL run (checkpoints/shapes_dsl; untrained when
absent), each learner's L2-normalised slice and the whole embedding, as DSL's `train_batch` feeds it.
Compared: the loss value and the gradient with respect to the embeddings of the official
`lib.loss.MarginLoss(E, T)` (its `Sampler` inside) against `core.losses.dsl_margin_loss`, and, for scale,
against the loss MetricLens used before (pytorch-metric-learning `MarginLoss` on all triplets).
Writes benchmarks/results/fidelity_dsl.{json,md}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from benchmarks.common import ROOT, md_table, write_results
from benchmarks.fidelity.common import cosine, import_official
from core import checkpoint as ckpt
from core.config import DataConfig, ModelConfig
from core.data import build_datasets
from core.losses import dsl_margin_loss
from core.models.embedder import build_model


def batches(seed: int):
    splits = build_datasets(DataConfig(max_per_class=6, augment=False, val_classes=0), seed=seed)
    ds, labels = splits.train, splits.train.labels
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    balanced = [i for c in classes[:8] for i in np.flatnonzero(labels == c)[:4]]
    unbalanced = [i for c, n in zip(classes[8:16], rng.integers(2, 7, 8)) for i in np.flatnonzero(labels == c)[:n]]
    for kind, idx in (("8×4", balanced), ("8 classes × 2–6", unbalanced)):
        yield kind, torch.stack([ds[i][0] for i in idx]), torch.as_tensor(labels[idx])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, required=True, help="checkout of adigasu/Dynamic_subspace_learners")
    p.add_argument("--run", type=Path, default=ROOT / "checkpoints" / "shapes_dsl")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    official_cls = import_official(args.official, "lib.loss.margin_loss").MarginLoss
    if (args.run / ckpt.WEIGHTS).exists():
        model = ckpt.load_run(args.run)[0]
    else:
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone="convnet", head="dsl", embed_dim=64), num_classes=10)
    model.eval()
    learners = model.head.groups
    rows, worst = [], {"loss": 0.0, "cos": 1.0}
    for seed in range(args.seeds):
        for kind, x, y in batches(seed):
            with torch.no_grad():
                e = model(x).double()
            for name, sl in [(f"learner {i}", g) for i, g in enumerate(learners)] + [("whole", slice(None))]:
                z = F.normalize(e[:, sl], dim=1)
                z1, z2, z3 = (z.clone().requires_grad_() for _ in range(3))
                lo = official_cls(nb_classes=None)(z1, y)
                lo.backward()
                lm = dsl_margin_loss(z2, y)
                lm.backward()
                lp = pml_losses.MarginLoss(margin=0.2, nu=0.0, beta=1.2)(z3, y)
                lp.backward()
                diff, cos = abs(lo.item() - lm.item()), cosine(z1.grad, z2.grad)
                worst = {"loss": max(worst["loss"], diff), "cos": min(worst["cos"], cos)}
                rows.append([seed, kind, name, f"{lo.item():.4f}", f"{lm.item():.4f}", f"{diff:.1e}", f"{cos:.6f}",
                             f"{lp.item():.4f}", f"{cosine(z1.grad, z3.grad):.3f}"])
    md = ("# Fidelity: DSL margin loss and sampler vs the official code\n\n"
          f"Real shapes batches through `{args.run.name}` ({len(learners)} learners), float64. Official = "
          "`lib.loss.MarginLoss` (with its `Sampler`); ours = `core.losses.dsl_margin_loss`; before = "
          "pytorch-metric-learning MarginLoss on all triplets (what MetricLens used until now).\n\n"
          + md_table(["seed", "batch", "slice", "official", "ours", "|Δ loss|", "cos grad (ours)", "before",
                      "cos grad (before)"], rows)
          + f"\n\nWorst: |Δ loss| {worst['loss']:.1e}, gradient cosine {worst['cos']:.6f}.\n")
    write_results("fidelity_dsl", {"rows": rows, "worst": worst}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
