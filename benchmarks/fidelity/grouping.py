"""DGML per-group training vs the official code (github.com/XinyiXuXD/DGML-master) on the same input.

    python -m benchmarks.fidelity.grouping --official /path/to/DGML-master

Input: a real shapes batch (8 classes × 4 images) through the shipped grouping run
(checkpoints/shapes_grouping, trained, so that some hinge terms are inactive; an untrained head when
that run is absent), β per (group, class) drawn around 1.2. Compared:
  * the distance-weighted sampler's negative probabilities (`BatchMiner.inverse_sphere_distances`)
    against `core.losses.distance_weighted_probs`, every anchor of every group;
  * the per-group margin loss and its gradients (embeddings and β) on the official triplets:
    official `Margin.margin_loss` with the anchors' class β, as its `forward` indexes it (its forward
    itself moves tensors to CUDA, so the indexing is done here the same way), vs ours; and
    pytorch-metric-learning's normalisation (active *terms*) for scale.
Writes benchmarks/results/fidelity_grouping.{json,md}.
"""
from __future__ import annotations

import argparse
import types
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, md_table, write_results
from benchmarks.fidelity.common import cosine, import_official, shapes_group_embeddings
from core import checkpoint as ckpt
from core.losses import distance_weighted_probs, margin_triplet_loss


def all_triplets(labels: torch.Tensor) -> list[list[int]]:
    same = labels[:, None] == labels[None, :]
    return [[a, p, n] for a in range(len(labels)) for p in range(len(labels)) if p != a and same[a, p]
            for n in range(len(labels)) if not same[a, n]]


def compare(official, emb, beta, g, rows_idx, triplets, row, worst) -> list:
    """Official vs our loss and gradients on one set of triplets; the pml-style normalisation for scale."""
    t = tuple(torch.tensor(c) for c in zip(*triplets))
    e1, b1 = emb.clone().requires_grad_(), beta.clone().requires_grad_()
    lo = official.margin_loss(e1, triplets, torch.stack([b1[g][rows_idx[tr[0]]] for tr in triplets]))
    lo.backward()
    e2, b2 = emb.clone().requires_grad_(), beta.clone().requires_grad_()
    lm = margin_triplet_loss(e2, t, b2[g, rows_idx[t[0]]], 0.2)
    lm.backward()
    bt = beta[g, rows_idx[t[0]]]
    pos = torch.relu(((emb[t[0]] - emb[t[1]]).pow(2).sum(1) + 1e-8).sqrt() - bt + 0.2)
    neg = torch.relu(bt - ((emb[t[0]] - emb[t[2]]).pow(2).sum(1) + 1e-8).sqrt() + 0.2)
    terms = float((pos + neg).sum() / ((pos > 0).sum() + (neg > 0).sum()).clamp_min(1))
    cx, cb = cosine(e1.grad, e2.grad), cosine(b1.grad, b2.grad)
    diff = abs(lo.item() - lm.item())
    worst.update(loss=max(worst["loss"], diff), grad_x=min(worst["grad_x"], cx), grad_beta=min(worst["grad_beta"], cb))
    return row + [len(triplets), f"{lo.item():.4f}", f"{lm.item():.4f}", f"{terms:.4f}", f"{diff:.1e}", f"{cx:.6f}", f"{cb:.6f}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, required=True, help="checkout of XinyiXuXD/DGML-master")
    p.add_argument("--seeds", type=int, default=3, help="batches (different images per class)")
    p.add_argument("--run", type=Path, default=ROOT / "checkpoints" / "shapes_grouping")
    args = p.parse_args(argv)
    margin_mod = import_official(args.official, "criteria.margin")
    distance_mod = import_official(args.official, "batchminer.distance")
    opt = types.SimpleNamespace(miner_distance_lower_cutoff=0.5, miner_distance_upper_cutoff=1.4)
    official_miner = distance_mod.BatchMiner(opt)
    official = margin_mod.Margin.__new__(margin_mod.Margin)      # margin_loss only reads `margin`
    torch.nn.Module.__init__(official)
    official.margin = 0.2

    rows, worst = [], {"probs": 0.0, "loss": 0.0, "grad_x": 1.0, "grad_beta": 1.0}
    for seed in range(args.seeds):
        model, x, labels, splits = shapes_group_embeddings("grouping", seed=seed)
        if (args.run / ckpt.WEIGHTS).exists():
            model = ckpt.load_run(args.run)[0]
        model.eval()
        head = model.head
        with torch.no_grad():
            z = head(model.forward_features(x)).extras["group_embeddings"].double()   # B×k×d
        rows_idx = torch.as_tensor(np.searchsorted(np.unique(splits.train.labels), labels.numpy()))
        gen = torch.Generator().manual_seed(seed)
        beta = (1.2 + 0.1 * torch.randn(head.k, splits.num_train_classes, generator=gen, dtype=torch.float64))
        np.random.seed(seed)
        for g in range(head.k):
            emb = z[:, g]
            ours_p = distance_weighted_probs(emb, rows_idx).double()
            dists = official_miner.pdist(emb).clamp(min=0.5)
            theirs_p = np.stack([official_miner.inverse_sphere_distances(emb.shape[1], len(emb), dists[i],
                                                                         rows_idx.numpy(), rows_idx[i].item())
                                 for i in range(len(emb))])
            dp = float(np.abs(ours_p.numpy() - theirs_p).max())
            mined = official_miner(emb, rows_idx)
            for kind, triplets in (("distance-weighted", mined), ("all", all_triplets(rows_idx))):
                rows.append(compare(official, emb, beta, g, rows_idx, triplets, [seed, g, kind, f"{dp:.1e}"], worst))
            worst["probs"] = max(worst["probs"], dp)
    md = ("# Fidelity: DGML per-group margin loss vs the official code\n\n"
          f"Real shapes batches (8 classes × 4) through `{args.run.name}`, float64; β per (group, class) "
          "≈ 1.2 ± 0.1. Sampler: max |Δ| of the negative probabilities; loss on the official sampler's triplets and on all triplets of the batch: official, "
          "ours, and pytorch-metric-learning's normalisation (active terms) on the same triplets; gradient "
          "cosines (embeddings, β).\n\n"
          + md_table(["seed", "group", "triplets", "max |Δp| sampler", "n", "official", "ours", "pml-style (terms)", "|Δ loss|",
                      "cos grad emb", "cos grad β"], rows)
          + f"\n\nWorst: sampler {worst['probs']:.1e}, loss {worst['loss']:.1e}, gradient cosines "
            f"{worst['grad_x']:.6f} / {worst['grad_beta']:.6f}.\n")
    write_results("fidelity_grouping", {"rows": rows, "worst": worst}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
