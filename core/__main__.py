"""Command line: `python -m core train|evaluate|umap|import ...` (see README)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _progress_bar():
    from tqdm import tqdm

    bar = {"bar": None, "total": None, "phase": None}

    def update(step: int, total: int, message: str) -> None:
        """One bar per phase (an epoch, embedding a part, scoring), each with its ETA."""
        phase = message.split(" loss ")[0]  # an epoch's message changes with its loss, its phase does not
        if bar["bar"] is None or bar["total"] != total or step <= 1 or bar["phase"] != phase:
            if bar["bar"] is not None:
                bar["bar"].close()
            bar["bar"], bar["total"] = tqdm(total=total, leave=False, dynamic_ncols=True), total
            bar["phase"] = phase
        bar["bar"].set_description(message)
        bar["bar"].update(step - bar["bar"].n)
    return update


def cmd_train(args) -> int:
    from core.config import RunConfig
    from core.train import train

    cfg = RunConfig.load(args.config)
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.no_pretrained:
        overrides.append("model.pretrained=false")
    cfg = cfg.with_overrides(overrides)
    if not cfg.name:
        cfg.name = Path(args.out).name
    changed = [o for o in overrides if o.startswith(("data.", "model."))]
    if changed:  # the config's description would otherwise describe another data set or model
        cfg.description = f"{cfg.description} (overridden: {', '.join(changed)})".strip()
    metrics = train(cfg, args.out, progress=_progress_bar())
    if metrics:
        summary = {"run": args.out, "best_epoch": metrics["best_epoch"], "test": metrics["test"]}
        summary.update({k: metrics[k] for k in ("improved_over_start", "start", "val", "stopped") if k in metrics})
        print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from core.checkpoint import load_run
    from core.data import build_datasets, check_evaluable
    from core.data import summary as data_summary
    from core.evaluate import evaluate_splits
    from core.train import resolve_device

    device = resolve_device(args.device)
    model, cfg = load_run(args.run_dir, device)
    data_cfg = cfg.data
    if args.dataset:
        data_cfg = cfg.with_overrides([f"data.root={args.dataset}"]).data
    splits = build_datasets(data_cfg, seed=cfg.train.seed)
    print(data_summary(splits), file=sys.stderr)
    check_evaluable(splits)
    ks = [int(k) for k in args.k.split(",")] if args.k else cfg.train.recall_ks
    metrics = evaluate_splits(model, splits, device, ks, which=args.split, progress=_progress_bar())
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for k, v in metrics.items():
            print(f"{k:>14s}  {v:.4f}")
    return 0


def cmd_umap(args) -> int:
    from core.projection import ensure_coords

    for run in args.run_dirs:
        ensure_coords(run, "umap", progress=True)
        print(f"{run}: artifacts/coords_umap.npy ready")
    return 0


def cmd_import(args) -> int:
    from core.importer import import_run

    record = import_run(args.embeddings, args.labels, args.out, label_column=args.label_column,
                        path_column=args.path_column, coords=args.coords, image_root=args.image_root,
                        umap=args.umap, overwrite=args.overwrite, name=args.name,
                        log=lambda line: print(line, file=sys.stderr))
    print(json.dumps({"run": args.out, "test": record["test"], "imported": record["imported"]}, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core", description="MetricLens: train and evaluate DML models")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model into a run directory (resumes if it exists)")
    t.add_argument("--config", required=True, help="YAML config, e.g. configs/shapes_gap.yaml")
    t.add_argument("--out", required=True, help="run directory to write (or resume)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--no-pretrained", action="store_true", help="random init (no ImageNet weights)")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=3e-4 data.root=/data/cub")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("evaluate", help="Recall@K, NMI, MAP@R, R-Precision of a run")
    e.add_argument("run_dir")
    e.add_argument("--dataset", help="dataset root to evaluate on instead of the run's (same layout)")
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.add_argument("--k", help="Recall@K list, e.g. 1,10,100")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_evaluate)
    u = sub.add_parser("umap", help="compute and cache UMAP coordinates of runs' test embeddings")
    u.add_argument("run_dirs", nargs="+")
    u.set_defaults(fn=cmd_umap)
    i = sub.add_parser("import", help="turn your own embeddings (.npy) + a labels CSV into a run directory")
    i.add_argument("--embeddings", required=True, help="N×D array saved with np.save")
    i.add_argument("--labels", required=True, help="CSV with a header and one row per embedding row")
    i.add_argument("--out", required=True, help="run directory to write, e.g. checkpoints/my_embeddings")
    i.add_argument("--label-column", default="label", help="the CSV column holding each item's class")
    i.add_argument("--path-column", help="the CSV column holding image paths (relative: to the CSV's folder)")
    i.add_argument("--image-root", help="folder relative image paths start from")
    i.add_argument("--coords", help="your own 2-D coordinates, an N×2 .npy (shown as the 'own' projection)")
    i.add_argument("--umap", action="store_true", help="compute UMAP now (else the dashboard does it on demand)")
    i.add_argument("--name", help="run name (default: the folder name)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    i.set_defaults(fn=cmd_import)
    for sp in (t, e, u, i):
        sp.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores; "
                                                    "or set OMP_NUM_THREADS)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    from core.checkpoint import CheckpointError
    from core.data.folders import DatasetError
    from core.models.backbones import PretrainedWeightsUnavailable
    from core.train import TrainingError
    try:
        return args.fn(args)
    except (CheckpointError, DatasetError, PretrainedWeightsUnavailable, TrainingError, ValueError,
            FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume from the last completed epoch", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
