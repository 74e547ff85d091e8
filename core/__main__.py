"""Command line: `python -m core train|evaluate|umap|import|import-model|faithfulness|dashboard ...`, also installed as `metriclens ...` (see README).

Each subcommand is one row of SUBCOMMANDS: (help, add its arguments, run it). Imports happen inside the
commands, so `--help` answers at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def _with_progress_log(run_dir):
    """The terminal's bars plus RUN_DIR/progress.jsonl (what the dashboard's Train page reads)."""
    from core.progress import ProgressLog, tee
    from core.run_dir import PROGRESS

    fresh = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports (and starts the file)
    return tee(_progress_bar(), ProgressLog(Path(run_dir) / PROGRESS, fresh=fresh))


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
    if args.frozen_backbone:  # after the others, so it sees the model they describe
        from core.train_features import frozen_backbone_overrides
        overrides += frozen_backbone_overrides(cfg.with_overrides(overrides))
    cfg = cfg.with_overrides(overrides)
    if not cfg.name:
        cfg.name = Path(args.out).name
    changed = [o for o in overrides if o.startswith(("data.", "model."))]
    if changed:  # the config's description would otherwise describe another data set or model
        cfg.description = f"{cfg.description} (overridden: {', '.join(changed)})".strip()
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():  # a warning (e.g. an unreadable image) prints above the bars, not inside one
        metrics = train(cfg, args.out, progress=_with_progress_log(args.out))
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
    from core.progress import ProgressLog
    from core.projection import ensure_coords
    from core.run_dir import ARTIFACTS, PROGRESS, coords_file

    for run in args.run_dirs:
        ensure_coords(run, "umap", progress=True, report=ProgressLog(Path(run) / PROGRESS))
        print(f"{run}: {ARTIFACTS}/{coords_file('umap')} ready")
    return 0


def cmd_import(args) -> int:
    from core.importer import import_run

    record = import_run(args.embeddings, args.labels, args.out, label_column=args.label_column,
                        path_column=args.path_column, coords=args.coords, image_root=args.image_root,
                        umap=args.umap, overwrite=args.overwrite, name=args.name, allow_missing=args.allow_missing,
                        log=lambda line: print(line, file=sys.stderr))
    print(json.dumps({"run": args.out, "test": record["test"], "imported": record["imported"]}, indent=2))
    return 0


def cmd_import_model(args) -> int:
    from core.import_model import import_model
    from core.train import resolve_device

    record = import_model(args.out, args.images, factory=args.factory, arch=args.arch, weights=args.weights,
                          embed_dim=args.embed_dim, head_layer=args.head_layer, feature_layer=args.feature_layer,
                          strip_prefix=args.strip_prefix, size=args.size,
                          **{k: v for k, v in (("mean", args.mean), ("std", args.std)) if v is not None},
                          split=args.split, class_depth=args.class_depth, label_column=args.label_column,
                          image_root=args.image_root, umap=args.umap, overwrite=args.overwrite, name=args.name,
                          device=resolve_device(args.device), batch_size=args.batch_size, progress=_progress_bar(),
                          log=lambda line: print(line, file=sys.stderr))
    print(json.dumps({"run": args.out, "test": record["test"], "user_model": record["user_model"]}, indent=2))
    return 0


def cmd_faithfulness(args) -> int:
    from core import io
    from core.faithfulness_table import run_faithfulness, table
    from core.progress import ProgressLog, tee
    from core.run_dir import FAITHFULNESS

    progress = tee(_progress_bar(), ProgressLog(args.progress, fresh=True) if args.progress else None)
    result = run_faithfulness(args.run_dir, args.queries, fill=args.fill, steps=args.steps,
                              channels=None if args.channels == "all" else int(args.channels),
                              explainer_names=args.explainers.split(",") if args.explainers else None,
                              progress=progress)
    out = Path(args.out or Path(args.run_dir) / FAITHFULNESS)
    try:
        io.write_json(out, result)
        print(f"wrote {out}", file=sys.stderr)
    except OSError as err:  # e.g. a read-only run folder: the scores are still printed
        print(f"warning: could not write {out} ({err}); give --out", file=sys.stderr)
    print(json.dumps(result, indent=2, default=float) if args.json else table(result))
    return 0


def cmd_dashboard(args) -> int:
    """`streamlit run app.py` as `make run` does: loopback unless an address is given."""
    command = [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.address", args.address,
               "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    if args.dry_run:
        print(" ".join(command))
        return 0
    subprocess.run([sys.executable, "-m", "dashboard.access", "--address", args.address, "--port", str(args.port)],
                   cwd=REPO, check=False)  # prints who can reach it (and the teaching-mode note) first
    try:
        return subprocess.call(command, cwd=REPO)
    except KeyboardInterrupt:
        return 130


# ---- the subcommand table --------------------------------------------------------------------------
def _train_arguments(t) -> None:
    t.add_argument("--config", required=True, help="YAML config, e.g. configs/shapes_gap.yaml")
    t.add_argument("--out", required=True, help="run directory to write (or resume)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--no-pretrained", action="store_true", help="random init (no ImageNet weights)")
    t.add_argument("--frozen-backbone", action="store_true",
                   help="train on the frozen backbone's cached features (fast on a CPU): model.freeze_backbone=true, "
                        "blocks moved onto the last stage's output")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=3e-4 data.root=/data/cub")
    _threads_argument(t)


def _evaluate_arguments(e) -> None:
    e.add_argument("run_dir")
    e.add_argument("--dataset", help="dataset root to evaluate on instead of the run's (same layout)")
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.add_argument("--k", help="Recall@K list, e.g. 1,10,100")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")
    _threads_argument(e)


def _umap_arguments(u) -> None:
    u.add_argument("run_dirs", nargs="+")
    _threads_argument(u)


def _import_arguments(i) -> None:
    i.add_argument("--embeddings", required=True, help="N×D array saved with np.save")
    i.add_argument("--labels", required=True, help="CSV with a header and one row per embedding row")
    i.add_argument("--out", required=True, help="run directory to write, e.g. checkpoints/my_embeddings")
    i.add_argument("--label-column", default="label", help="the CSV column holding each item's class")
    i.add_argument("--path-column", help="the CSV column holding image paths (relative: to the CSV's folder)")
    i.add_argument("--image-root", help="folder relative image paths start from")
    i.add_argument("--allow-missing", action="store_true",
                   help="accept image paths that do not exist while some do (those items show no image); "
                        "an import where none exists is always refused")
    i.add_argument("--coords", help="your own 2-D coordinates, an N×2 .npy (shown as the 'own' projection)")
    i.add_argument("--umap", action="store_true", help="compute UMAP now (else the dashboard does it on demand)")
    i.add_argument("--name", help="run name (default: the folder name)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _threads_argument(i)


def _import_model_arguments(i) -> None:
    net = i.add_mutually_exclusive_group(required=True)
    net.add_argument("--factory", help="module:function returning your torch.nn.Module (images -> embeddings), "
                                       "importable from PYTHONPATH, e.g. lab_model:build")
    net.add_argument("--arch", help="torchvision:<name> (or timm:<name> where timm is installed): that architecture "
                                    "with its classifier replaced by a linear embedder (--embed-dim)")
    i.add_argument("--weights", help="state dict: .safetensors, or a file torch.load(weights_only=True) reads")
    i.add_argument("--images", required=True, help="a folder of class folders, or a CSV (path,label[,split]), read "
                                                   "as data.name=folder|csv")
    i.add_argument("--out", required=True, help="run directory to write, e.g. checkpoints/my_model")
    i.add_argument("--embed-dim", type=int, help="--arch: the embedder's output size (none: the pooled features)")
    i.add_argument("--head-layer", help="--arch: the classifier the embedder replaces (default: the last Linear)")
    i.add_argument("--feature-layer", help="module Grad-CAM and the cross-image maps read, e.g. layer4 (default: the "
                                           "last module with a B×C×h×w output before pooling)")
    i.add_argument("--strip-prefix", help="remove this prefix from the weights' keys, e.g. module. (DataParallel)")
    i.add_argument("--size", type=int, default=224, help="input side: every image is resized (squashed) to size×size")
    i.add_argument("--mean", type=float, nargs=3, help="input normalisation (R G B) after scaling to [0, 1] "
                                                      "(default: ImageNet's 0.485 0.456 0.406)")
    i.add_argument("--std", type=float, nargs=3, help="(default: ImageNet's 0.229 0.224 0.225)")
    i.add_argument("--split", default="test", choices=["test", "all"],
                   help="test: the test part (the second half of the sorted classes, or the CSV's split); all: every image")
    i.add_argument("--class-depth", type=int, help="folder: the folder level of the classes (default: detected)")
    i.add_argument("--label-column", default="label", help="CSV: the column holding each image's class")
    i.add_argument("--image-root", help="CSV: the folder relative paths start from (default: the CSV's folder)")
    i.add_argument("--umap", action="store_true", help="compute UMAP now (else the dashboard does it on demand)")
    i.add_argument("--name", help="run name (default: the folder name)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    i.add_argument("--device", default="auto")
    i.add_argument("--batch-size", type=int, default=64)
    _threads_argument(i)


def _faithfulness_arguments(f) -> None:
    f.add_argument("run_dir")
    f.add_argument("--queries", type=int, default=8, help="test queries, spread over the test set (default 8)")
    f.add_argument("--fill", default="mean", choices=["mean", "blur"], help="what a hidden cell shows")
    f.add_argument("--steps", type=int, default=16, help="steps per deletion/insertion curve")
    f.add_argument("--channels", default="8", help="channels of a multi-channel map scored one by one, the "
                                                   "strongest first (default 8), or 'all'")
    f.add_argument("--explainers", help="comma-separated explainer names (default: every one that applies)")
    f.add_argument("--out", help="where to write the JSON (default RUN_DIR/faithfulness.json)")
    f.add_argument("--json", action="store_true", help="print the JSON instead of a table")
    f.add_argument("--progress", help="also append progress here as JSON lines (what the dashboard's job reads)")
    _threads_argument(f)


def _dashboard_arguments(d) -> None:
    d.add_argument("--address", default=os.environ.get("METRICLENS_ADDRESS", "127.0.0.1"),
                   help="127.0.0.1 (default): only this machine; 0.0.0.0 serves the network (teaching mode)")
    d.add_argument("--port", type=int, default=int(os.environ.get("METRICLENS_PORT", "8501")))
    d.add_argument("--dry-run", action="store_true", help="print the streamlit command instead of running it")


def _threads_argument(p) -> None:
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores; or set OMP_NUM_THREADS)")


SUBCOMMANDS = {  # name -> (help, add_arguments, run)
    "train": ("train a model into a run directory (resumes if it exists)", _train_arguments, cmd_train),
    "evaluate": ("Recall@K, NMI, MAP@R, R-Precision of a run", _evaluate_arguments, cmd_evaluate),
    "umap": ("compute and cache UMAP coordinates of runs' test embeddings", _umap_arguments, cmd_umap),
    "import": ("turn your own embeddings (.npy) + a labels CSV into a run directory", _import_arguments, cmd_import),
    "import-model": ("turn your own model (code + weights) and a folder of images into a run directory",
                     _import_model_arguments, cmd_import_model),
    "faithfulness": ("deletion/insertion AUCs and the randomisation check of every map of a run",
                     _faithfulness_arguments, cmd_faithfulness),
    "dashboard": ("open the dashboard in the browser (streamlit run app.py, as `make run`)",
                  _dashboard_arguments, cmd_dashboard),
}


def main(argv=None, prog: str = "python -m core") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="MetricLens: train and evaluate DML models")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
        sub.choices[name].set_defaults(fn=run)
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    from core.checkpoint import CheckpointError
    from core.data.folders import DatasetError
    from core.models.backbones import PretrainedWeightsUnavailable
    from core.plugins import PluginError, load_plugins
    from core.train import TrainingError
    try:
        load_plugins()  # the user's heads, blocks, backbones, explainers (METRICLENS_PLUGINS / entry points)
        return args.fn(args)
    except (CheckpointError, DatasetError, PretrainedWeightsUnavailable, TrainingError, PluginError, ValueError,
            FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume from the last completed epoch", file=sys.stderr)
        return 130


def console(argv=None) -> int:
    """The `metriclens` command (pyproject.toml's entry point)."""
    return main(argv, prog="metriclens")


if __name__ == "__main__":
    sys.exit(main())
