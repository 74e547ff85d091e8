"""Training-step (and inference) time of each attention head / block vs GAP, side by side in one process.

Every variant shares the backbone architecture, input size, batch and loss (multi-similarity with
its miner); repeats are interleaved (variant A, B, C, A, B, C, ...) so drift in a shared machine's
load hits all variants alike, and the median is reported with the interquartile range.

    python -m benchmarks.heads_speed                       # CPU: convnet 64 px batch 32 + resnet50 224 px batch 4
    python -m benchmarks.heads_speed --device cuda --backbones convnet,resnet50 --resnet-batch 32

Variants: gap | grouping | gsp (OT active, analytic backward) | gsp_unroll (autograd through the 100
iterations) | csa (GAP head + CSA after a shallow stage) | nonlocal (GAP head + full N×N non-local
at the same stage). Writes benchmarks/results/heads_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import md_table, registered_methods, timed_inference, timed_training_step, use_method, write_results
from core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from core.data import build_datasets

BACKBONES = {  # image size, shallow stage for CSA / non-local (and its side at that size)
    "convnet": dict(image=64, stage="stage2", where="16×16"),
    "resnet50": dict(image=224, stage="layer1", where="56×56"),
}
# benchmark-specific options: prototypes ready for GSP (time the transport, not GAP), and GSP's unrolled
# gradient as one more variant; every other registered head and block runs with its defaults
VARIANT_ARGS = {"grouping": ("grouping", {"num_groups": 3}),
                "gsp": ("gsp", {"memory_size": 0, "num_prototypes": 64, "grad": "analytic"}),
                "gsp_unroll": ("gsp", {"memory_size": 0, "num_prototypes": 64, "grad": "unroll"})}
VARIANTS = registered_methods() + ["gsp_unroll"]


def model_config(backbone: str, variant: str) -> ModelConfig:
    cfg = ModelConfig(backbone=backbone, pretrained=False, head="gap", embed_dim=64 if backbone == "convnet" else 512)
    method, args = VARIANT_ARGS.get(variant, (variant, {}))
    return use_method(cfg, method, BACKBONES[backbone]["stage"], args)



class Case:
    """One variant: a real `Trainer` (model, criterion, optimiser, `Trainer.step`) on a fixed random batch,
    so this benchmark times exactly the step that training runs (as benchmarks/dsl_cia_speed.py does)."""

    def __init__(self, backbone: str, variant: str, batch: int, device: torch.device, amp: bool,
                 splits, run_dir: Path):
        from core.train import Trainer

        cfg = RunConfig(model=model_config(backbone, variant),
                        train=TrainConfig(loss="multi_similarity", miner="multi_similarity", optimizer="adamw",
                                          lr=1e-4, device=str(device), amp=amp))
        torch.manual_seed(0)
        self.variant = variant
        self.trainer = Trainer(cfg, run_dir / f"{backbone}_{variant}", splits=splits)
        self.device, self.model = self.trainer.device, self.trainer.model
        size = BACKBONES[backbone]["image"]
        self.x = torch.rand(batch, 3, size, size, device=self.device)
        self.y = torch.arange(batch // 4, device=self.device).repeat_interleave(4)
        self.params = sum(p.numel() for p in self.model.parameters())

    def train_step(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one training step."""
        return timed_training_step(self.trainer, self.x, self.y)

    def infer_step(self) -> tuple[float, float]:
        return timed_inference(self.trainer, self.x)


def _summary(times: list[float]) -> dict:
    ms = np.asarray(times) * 1000
    return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "p25_ms": float(np.percentile(ms, 25)),
            "p75_ms": float(np.percentile(ms, 75)), "n": len(ms), "all_ms": [round(float(t), 2) for t in ms]}


def bench_backbone(backbone: str, batch: int, variants: list[str], repeats: int, warmup: int,
                   device: torch.device, amp: bool, splits, run_dir: Path) -> dict:
    cases = {v: Case(backbone, v, batch, device, amp, splits, run_dir) for v in variants}
    times = {(kind, clock): {v: [] for v in variants} for kind in ("train", "infer") for clock in ("wall", "cpu")}
    for r in range(warmup + repeats):
        for v, case in cases.items():             # interleaved: every round times each variant once
            measured = {"train": case.train_step(), "infer": case.infer_step()}
            if r >= warmup:
                for kind, (wall, cpu) in measured.items():
                    times[(kind, "wall")][v].append(wall)
                    times[(kind, "cpu")][v].append(cpu)
        print(f"  {backbone} round {r + 1}/{warmup + repeats}: "
              + ", ".join(f"{v} {1000 * (times[('train', 'wall')][v] or [0])[-1]:.0f} ms" for v in variants), flush=True)
    out = {"image_size": BACKBONES[backbone]["image"], "batch": batch,
           "block_stage": f"{BACKBONES[backbone]['stage']} ({BACKBONES[backbone]['where']})", "variants": {}}
    for v in variants:
        entry = {"params": cases[v].params}
        for (kind, clock), per_variant in times.items():
            summary = _summary(per_variant[v])
            if "gap" in per_variant:
                summary["vs_gap"] = summary["median_ms"] / 1000 / statistics.median(per_variant["gap"])
            entry[f"{kind}_{clock}"] = summary
        out["variants"][v] = entry
    return out


def markdown(results: dict, args) -> str:
    cpu = args.device == "cpu"
    parts = ["# Head speed: training step and inference vs GAP\n",
             f"Median over {args.repeats} interleaved repeats after {args.warmup} warm-up rounds (wall-clock IQR in "
             "brackets); one training step = forward, head + block losses (multi-similarity + miner; diversity / ZSR "
             "terms), backward, AdamW step; inference = one eval forward of the batch. `gsp`: transport active "
             "(prototypes ready), analytic implicit backward; `gsp_unroll`: autograd through the 100 fixed-point "
             "iterations. `csa`/`nonlocal`: GAP head + the block after a shallow stage."
             + (" On this shared CPU other jobs stretch wall-clock times (load average in the JSON); the CPU time of "
                "the benchmark process is far less sensitive to them and is the better basis for the ratios." if cpu else "")]
    for backbone, res in results.items():
        parts.append(f"\n## {backbone}, {res['image_size']} px, batch {res['batch']}, blocks after "
                     f"{res['block_stage']}\n")
        rows = []
        for v, r in res["variants"].items():
            row = [v]
            for key in (("train_wall", "train_cpu", "infer_wall", "infer_cpu") if cpu else ("train_wall", "infer_wall")):
                t = r[key]
                iqr = f" [{t['p25_ms']:.0f}–{t['p75_ms']:.0f}]" if key.endswith("wall") else ""
                row += [f"{t['median_ms']:.0f}{iqr}", f"{t['vs_gap']:.2f}×" if "vs_gap" in t else "–"]
            rows.append(row + [f"{r['params'] / 1e6:.2f} M"])
        header = ["variant", "train wall ms", "×GAP"] + (["train CPU ms", "×GAP"] if cpu else []) + \
                 ["inference wall ms", "×GAP"] + (["inference CPU ms", "×GAP"] if cpu else []) + ["params"]
        parts.append(md_table(header, rows))
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbones", default="convnet,resnet50")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=32, help="convnet batch")
    p.add_argument("--resnet-batch", type=int, default=4, help="resnet50 batch (CPU: small)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-amp", action="store_true", help="CUDA: no bfloat16 autocast")
    p.add_argument("--name", default="heads_speed", help="results file name")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = args.variants.split(",")
    splits = build_datasets(DataConfig(), seed=0)  # only sizes the class-indexed parameters; inputs are random
    run_dir = Path(tempfile.mkdtemp(prefix="heads_speed_"))
    results = {}
    for backbone in args.backbones.split(","):
        batch = args.batch if backbone == "convnet" else args.resnet_batch
        print(f"{backbone}: batch {batch} on {device}", flush=True)
        results[backbone] = bench_backbone(backbone, batch, variants, args.repeats, args.warmup, device,
                                           amp=not args.no_amp, splits=splits, run_dir=run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    out = write_results(args.name, {"results": results, "repeats": args.repeats, "warmup": args.warmup},
                        markdown(results, args), device=str(device))
    print((out.with_suffix(".md")).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
