"""Training-step and test-time cost of CIA and DSL vs GAP, side by side in one process.

One training step = the trainer's own `Trainer.step` (head loss, + the CIA branch's conditional
loss for `cia`) on a real shapes batch, backward, optimiser step. Repeats are interleaved (every
round times every variant once, in a rotating order) so a shared machine's load hits all alike;
medians are reported with the interquartile range, and ratios are median/median. Two clocks are
recorded: wall time and this process's CPU time. On a shared CPU the wall clock mostly measures
the other jobs, so the default is one torch thread and CPU time as the headline (`--clock wall`
and `--threads 0` for a quiet machine or a GPU).

    python -m benchmarks.dsl_cia_speed                   # CPU, convnet 64 px, batch 64
    python -m benchmarks.dsl_cia_speed --repeats 30 --device cuda

Variants (models from configs/shapes_{gap,cia,dsl}.yaml):
  gap         GAP head, multi-similarity + miner (shapes_gap)
  cia         the same model and weights + the CIA branch (shapes_cia); target ≤ 1.3× gap to train, 1.00× at test
  gap_margin  GAP head with DSL's loss (margin, no miner): DSL's like-for-like baseline
  dsl         DSL head with 2 learners, batches alternating between the two clusters (shapes_dsl)
Also: DSL's re-clustering pass (embed the train set + faiss k-means), paid every `recluster_every`
epochs, against the time of a GAP training epoch. Writes benchmarks/results/dsl_cia_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import md_table, timed_inference, timed_training_step, write_results
from core.config import RunConfig
from core.data import build_datasets

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["gap", "cia", "gap_margin", "dsl"]


def variant_config(variant: str, device: str) -> RunConfig:
    name = {"gap": "shapes_gap", "cia": "shapes_cia", "gap_margin": "shapes_gap", "dsl": "shapes_dsl"}[variant]
    overrides = [f"train.device={device}"]
    if variant == "gap_margin":
        overrides += ["train.loss=margin", "train.miner=null"]
    if variant == "dsl":
        overrides += ["model.head_args.learners=2"]
    return RunConfig.load(ROOT / "configs" / f"{name}.yaml").with_overrides(overrides)



class Case:
    def __init__(self, variant: str, splits, run_dir: Path, device: str, batch: tuple[torch.Tensor, torch.Tensor]):
        from core.train import Trainer

        torch.manual_seed(0)
        self.variant = variant
        self.trainer = Trainer(variant_config(variant, device), run_dir / variant, splits=splits)
        self.device = self.trainer.device
        self.x, self.y = batch[0].to(self.device), batch[1].to(self.device)
        self.params = sum(p.numel() for p in self.trainer.model.parameters())
        self.step = 0

    def train_step(self) -> tuple[float, float]:
        t = self.trainer
        tag = self.step % 2 if self.variant == "dsl" else None   # clusters 0, 1, 0, ...
        self.step += 1
        return timed_training_step(t, self.x, self.y, tag)

    def infer_step(self) -> tuple[float, float]:
        return timed_inference(self.trainer, self.x)


def _summary(times: list[float]) -> dict:
    ms = np.asarray(times) * 1000
    return {"median_ms": float(np.median(ms)), "p25_ms": float(np.percentile(ms, 25)),
            "p75_ms": float(np.percentile(ms, 75)), "min_ms": float(ms.min()), "n": len(ms),
            "all_ms": [round(float(t), 2) for t in ms]}


def real_batch(splits, classes: int, per_class: int):
    labels = np.asarray(splits.train.labels)
    idx = [i for c in np.unique(labels)[:classes] for i in np.flatnonzero(labels == c)[:per_class]]
    return torch.stack([splits.train[i][0] for i in idx]), torch.as_tensor(labels[idx])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=64, help="images per step (4 per class)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--recluster-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="the clock of the headline table")
    p.add_argument("--name", default="dsl_cia_speed")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    splits = build_datasets(variant_config("gap", args.device).data, seed=0)
    batch = real_batch(splits, args.batch // 4, 4)
    tmp = Path(tempfile.mkdtemp(prefix="dsl_cia_speed_"))
    cases = {v: Case(v, splits, tmp, args.device, batch) for v in variants}
    if "gap" in cases and "cia" in cases:  # the same network: CIA adds only its branch
        missing, _ = cases["cia"].trainer.model.load_state_dict(cases["gap"].trainer.model.state_dict(), strict=False)
        assert all(k.startswith("cia.") for k in missing), missing
    clocks = {"wall": 0, "cpu": 1}
    times = {c: {"train": {v: [] for v in variants}, "infer": {v: [] for v in variants}} for c in clocks}
    for r in range(args.warmup + args.repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            t_train, t_infer = cases[v].train_step(), cases[v].infer_step()
            if r >= args.warmup:
                for c, i in clocks.items():
                    times[c]["train"][v].append(t_train[i])
                    times[c]["infer"][v].append(t_infer[i])
        last = times[args.clock]["train"]
        print(f"round {r + 1}/{args.warmup + args.repeats} ({args.clock}): "
              + ", ".join(f"{v} {1000 * (last[v] or [0])[-1]:.0f} ms" for v in variants), flush=True)

    def ratio(v, base, table):
        return statistics.median(table[v]) / statistics.median(table[base]) if base in table and v in table else None

    by_clock = {}
    for c in clocks:
        train, infer = times[c]["train"], times[c]["infer"]
        by_clock[c] = {v: {"train": _summary(train[v]), "infer": _summary(infer[v]), "params": cases[v].params,
                           "train_vs_gap": ratio(v, "gap", train), "infer_vs_gap": ratio(v, "gap", infer)}
                       for v in variants}
        if "dsl" in variants and "gap_margin" in variants:
            by_clock[c]["dsl"]["train_vs_gap_margin"] = ratio("dsl", "gap_margin", train)
    results, train = by_clock[args.clock], times[args.clock]["train"]

    recluster = None
    if "dsl" in cases and "gap" in cases:
        trainer = cases["dsl"].trainer
        head = trainer.model.head
        spent = []
        for i in range(args.recluster_repeats):
            start = time.perf_counter() if args.clock == "wall" else time.process_time()
            head.recluster(trainer.context, epoch=2 * (i + 1))
            spent.append((time.perf_counter() if args.clock == "wall" else time.process_time()) - start)
        n_train, step_batch = len(splits.train), len(batch[0])
        steps = n_train // step_batch
        gap_epoch = steps * statistics.median(train["gap"])
        recluster = {"clock": args.clock, "median_s": statistics.median(spent), "all_s": [round(t, 3) for t in spent],
                     "train_items": n_train, "k": len(head.learners), "gap_epoch_train_s_estimate": gap_epoch,
                     "per_epoch_vs_gap_epoch": statistics.median(spent) / head.recluster_every / gap_epoch}

    payload = {"clock": args.clock, "results": by_clock, "recluster": recluster, "threads": torch.get_num_threads(), "batch": len(batch[0]), "repeats": args.repeats,
               "warmup": args.warmup, "image_size": 64, "backbone": "convnet"}
    rows = []
    for v, r in results.items():
        tr, inf = r["train"], r["infer"]
        rows.append([v, f"{tr['median_ms']:.0f} [{tr['p25_ms']:.0f}–{tr['p75_ms']:.0f}]",
                     f"{r['train_vs_gap']:.2f}×" if r["train_vs_gap"] else "–",
                     f"{inf['median_ms']:.1f} [{inf['p25_ms']:.1f}–{inf['p75_ms']:.1f}]",
                     f"{r['infer_vs_gap']:.2f}×" if r["infer_vs_gap"] else "–", f"{r['params'] / 1e6:.3f} M"])
    md = ["# DSL and CIA: training-step and test-time cost vs GAP\n",
          f"convnet, 64 px, a real shapes batch of {len(batch[0])} (4 per class), {args.device}, "
          f"{torch.get_num_threads()} torch thread(s), **{args.clock} time**"
          f"{' (this process, so other jobs on the shared CPU do not count)' if args.clock == 'cpu' else ''}. Median over "
          f"{args.repeats} interleaved repeats after {args.warmup} warm-up rounds [IQR]. A training step is "
          "`Trainer.step` (loss terms + backward + optimiser step). `cia` has exactly `gap`'s weights plus the branch "
          "(training only: its test-time path is the same network, so the inference ratio is 1 up to timing noise). "
          "`dsl` alternates batches of its two clusters; its like-for-like baseline is `gap_margin` (same loss).\n",
          md_table(["variant", "train step ms, median [IQR]", "vs gap", "inference ms", "vs gap", "params"], rows)]
    other = "wall" if args.clock == "cpu" else "cpu"
    md.append(f"\nThe same runs on the {other} clock (train / inference vs gap): " + ", ".join(
        f"{v} {r['train_vs_gap']:.2f}× / {r['infer_vs_gap']:.2f}×" for v, r in by_clock[other].items()) + ".")
    if "dsl" in results and "gap_margin" in results:
        md.append(f"\nDSL training step vs `gap_margin` (same loss): **{results['dsl']['train_vs_gap_margin']:.2f}×**.")
    if recluster:
        md.append(f"\nDSL re-clustering (embed {recluster['train_items']} train images + faiss k-means, K = "
                  f"{recluster['k']}, niter 100, nredo 5): median {recluster['median_s']:.2f} s per call, paid every "
                  f"{cases['dsl'].trainer.model.head.recluster_every} epochs: "
                  f"**+{100 * recluster['per_epoch_vs_gap_epoch']:.0f} %** of a GAP training epoch "
                  f"(≈ {recluster['gap_epoch_train_s_estimate']:.1f} s: {n_train // len(batch[0])} steps × the median "
                  f"step). DSL epochs also hold K × (largest cluster's batches) steps once K > 1 (round-robin merge, "
                  f"shorter clusters cycle); see the epoch times in `dsl_cia_accuracy`.")
    shutil.rmtree(tmp, ignore_errors=True)
    out = write_results(args.name, payload, "\n".join(md), device=args.device)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
