"""Input pipeline: model-only vs end-to-end training throughput of the real-data recipe, in one process.

    python -m benchmarks.input_pipeline                        # GPU: EfficientNet-Lite0, 224 px, bf16, cub100
    python -m benchmarks.input_pipeline --size 96 --epochs 1   # a CPU check of the same code

Every row runs `Trainer.step` of `configs/real_gap.yaml` (fine-tuning: backbone and projection train) on
the same model, side by side:
  * model-only: synthetic images already on the device (the upper bound);
  * end-to-end, decoded once (`data.cache`, the default on a GPU): real JPEGs decoded and resized once into
    uint8 memory (its one-off time is reported apart), batches gathered and augmented on the device;
  * end-to-end, DataLoader (`data.cache=never`, the CPU path): decode + augmentation in `--workers` CPU worker
    processes, pinned memory, re-created each epoch as the trainer does.
Each figure is images per second over whole epochs (`--epochs`, after one warm-up epoch); ratio = end-to-end
/ model-only. The target on a GPU: end-to-end with the cache at least 80 % of model-only.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import torch

from benchmarks.common import ROOT, md_table, sync, write_results
from benchmarks.real_data import data_overrides, subset_csv
from core.config import RunConfig
from core.data import build_datasets
from core.data.cache import cached_splits
from core.train import Trainer


def images_per_second(trainer: Trainer, batches, epochs: int) -> float:
    """Whole epochs of `batches(epoch)` through Trainer.step, after one warm-up epoch."""
    for x in batches(-1):
        trainer.step(x)
    sync(trainer.device)
    start, seen = time.perf_counter(), 0
    for epoch in range(epochs):
        for batch in batches(epoch):
            trainer.step(batch)
            seen += len(batch[1])
    sync(trainer.device)
    return seen / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="cub100")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=min(10, os.cpu_count() or 1))
    p.add_argument("--train-per-class", type=int, default=0, help="0: every image")
    p.add_argument("--name", default=None, help="results name (default input_pipeline, on a GPU input_pipeline_cuda)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    csv_path = subset_csv(args.dataset, args.train_per_class, 2)
    base = RunConfig.load(ROOT / "configs" / "real_gap.yaml").with_overrides(
        data_overrides(csv_path, args.size) + [f"train.num_workers={args.workers}", "data.val_classes=0"])
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["METRICLENS_CACHE"] = tmp  # a fresh cache: the one-off decode is measured too
        splits = build_datasets(base.data, seed=0)
        start = time.perf_counter()
        cached = cached_splits(splits, base.data, args.workers)
        decode_s = time.perf_counter() - start
        cfg = base.with_overrides(["data.cache=always"])
        trainer = Trainer(cfg, os.path.join(tmp, "run"), splits=cached)
        n = len(trainer.splits.train)
        decoded = sum(len(ds) for ds in (cached.train, cached.val, cached.test) if ds is not None)
        x_syn = torch.rand((cfg.train.batch_size, 3, args.size, args.size), device=trainer.device)
        y_syn = torch.as_tensor(trainer.splits.train.labels[:cfg.train.batch_size])
        steps = len(trainer.train_loader(0)[0])
        synthetic = lambda e: [(x_syn, y_syn)] * steps  # noqa: E731
        first = images_per_second(trainer, synthetic, args.epochs)
        figures["cached"] = images_per_second(trainer, lambda e: trainer.train_loader(max(e, 0))[0], args.epochs)
        # measured before and after the cached rows; the faster counts (the upper bound the others are held to)
        figures["model_only"] = max(first, images_per_second(trainer, synthetic, args.epochs))
        loader_trainer = Trainer(base.with_overrides(["data.cache=never"]), os.path.join(tmp, "run2"), splits=splits)
        loader_trainer.model.load_state_dict(trainer.model.state_dict())
        figures["loader"] = images_per_second(loader_trainer, lambda e: loader_trainer.train_loader(max(e, 0))[0],
                                              args.epochs)
    model_only = figures["model_only"]
    for key, what in (("model_only", "model only: synthetic images already on the device"),
                      ("cached", "end to end, decoded once (data.cache): gather + augment on the device"),
                      ("loader", f"end to end, DataLoader: decode + augment on {args.workers} CPU workers")):
        rows.append([what, f"{figures[key]:.0f}", f"{figures[key] / model_only:.2f}"])
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    md = (f"# Input pipeline: model-only vs end-to-end training throughput\n\n"
          f"`configs/real_gap.yaml` fine-tuning step (EfficientNet-Lite0, {args.size} px, batch "
          f"{base.train.batch_size}, {'bf16 autocast' if device == 'cuda' else 'float32'}) on {gpu}; {args.dataset}, "
          f"{n} train images (real JPEGs), {args.epochs} epoch{'s' if args.epochs != 1 else ''} after a warm-up epoch, all rows in one process on "
          f"the same model. The one-off decode of all {decoded} images into the cache took {decode_s:.1f} s "
          f"({decoded / decode_s:.0f} images/s, {args.workers} workers).\n\n"
          + md_table(["pipeline", "images/s", "÷ model only"], rows))
    write_results(args.name or ("input_pipeline_cuda" if device == "cuda" else "input_pipeline"), {"figures": figures, "decode_seconds": decode_s,
                                                             "train_images": n, "args": vars(args)}, md, device=device)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
