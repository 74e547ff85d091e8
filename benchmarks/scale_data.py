"""Inputs of the scale benchmark (issue 27): clustered embeddings + a labels CSV, and a measured import.

    python -m benchmarks.scale_data --n 1000000 --out benchmarks/runs/scale_inputs/clustered_1000k

writes `emb.npy` (N×128 float32) and `labels.csv` (label, site, batch): up to 10,000 classes whose sizes
vary (log-normal weights, so the largest class is a few times the mean, as in real collections) and two metadata
columns (a categorical `site` with 12 values and `batch` with 40).

The embeddings have a low intrinsic dimension, as trained ones do: class centres and the spread around them live
in a 16-d space mapped linearly into 128 dims, plus a little isotropic noise (spread 0.45: R@1 about 0.8 at
120k items). `--isotropic` draws the worst case instead, centres plus noise in all 128 dims, where nearest
neighbours are barely nearer than the rest and no approximate index keeps its recall (see BENCHMARKS.md).
`dashboard_latency.py --sizes ...` imports them with `python -m core import` and measures the import.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT / "benchmarks" / "runs" / "scale_inputs"     # git-ignored
MAX_CLASSES = 10_000
SITES = [f"site_{chr(ord('a') + i)}" for i in range(12)]


def input_name(n: int, isotropic: bool = False) -> str:
    return f"clustered{'_isotropic' if isotropic else ''}_{n // 1000}k"


def classes_for(n: int) -> int:
    """10,000 classes where there are enough items (at least 10 per class on average), fewer below."""
    return int(min(MAX_CLASSES, max(2, n // 10)))


def clustered_inputs(folder: str | Path, n: int, dim: int = 128, latent: int = 16, spread: float = 0.45,
                     noise: float = 0.1, isotropic: bool = False, seed: int = 0, classes: int | None = None,
                     chunk: int = 200_000) -> tuple[Path, Path]:
    """(embeddings.npy, labels.csv) in `folder`, written once (kept when both exist). See the module docstring;
    `isotropic`: centres and spread (1.3 per dim) in all `dim` dims; `classes`: default `classes_for(n)`."""
    folder = Path(folder)
    emb_path, csv_path = folder / "emb.npy", folder / "labels.csv"
    if emb_path.exists() and csv_path.exists():
        return emb_path, csv_path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = classes or classes_for(n)
    weights = rng.lognormal(0.0, 0.5, classes)
    labels = np.concatenate([np.arange(classes), rng.choice(classes, n - classes, p=weights / weights.sum())])
    labels = labels[rng.permutation(n)]   # every class at least once, in random order
    space = dim if isotropic else latent
    mixing = np.eye(dim, dtype=np.float32) if isotropic else rng.normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)
    centres = rng.normal(size=(classes, space)).astype(np.float32)
    emb = np.lib.format.open_memmap(folder / "emb.tmp.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, chunk):   # in chunks: a 1M × 128 float64 noise array would be 1 GB
        part = labels[start:start + chunk]
        inner = centres[part] + (1.3 if isotropic else spread) * rng.standard_normal((len(part), space), dtype=np.float32)
        emb[start:start + len(part)] = inner @ mixing
        if not isotropic:
            emb[start:start + len(part)] += noise * rng.standard_normal((len(part), dim), dtype=np.float32)
    emb.flush()
    del emb
    os.replace(folder / "emb.tmp.npy", emb_path)
    site = np.asarray(SITES)[(labels * 7 + rng.integers(0, 3, n)) % len(SITES)]   # mostly follows the class
    batch = rng.integers(0, 40, n)
    import pandas as pd
    frame = pd.DataFrame({"label": np.char.add("class_", labels.astype(str)), "site": site,
                          "batch": np.char.add("b", batch.astype(str))})
    frame.to_csv(folder / "labels.tmp.csv", index=False)
    os.replace(folder / "labels.tmp.csv", csv_path)
    return emb_path, csv_path


def perturbed_inputs(source: str | Path, folder: str | Path, noise: float = 0.15, seed: int = 1,
                     chunk: int = 200_000) -> tuple[Path, Path]:
    """(embeddings.npy, labels.csv) in `folder`: the same items as `source` (its labels CSV, copied) with other
    embeddings, each row moved by isotropic noise of `noise` per dim: a second run of the same items, as another
    model would embed them, for Compare. Written once (kept when both exist)."""
    import shutil

    source, folder = Path(source), Path(folder)
    emb_path, csv_path = folder / "emb.npy", folder / "labels.csv"
    if emb_path.exists() and csv_path.exists():
        return emb_path, csv_path
    folder.mkdir(parents=True, exist_ok=True)
    original = np.load(source / "emb.npy", mmap_mode="r")
    rng = np.random.default_rng(seed)
    emb = np.lib.format.open_memmap(folder / "emb.tmp.npy", mode="w+", dtype=np.float32, shape=original.shape)
    for start in range(0, len(original), chunk):
        part = original[start:start + chunk]
        emb[start:start + len(part)] = part + noise * rng.standard_normal(part.shape, dtype=np.float32)
    emb.flush()
    del emb
    os.replace(folder / "emb.tmp.npy", emb_path)
    shutil.copyfile(source / "labels.csv", folder / "labels.tmp.csv")
    os.replace(folder / "labels.tmp.csv", csv_path)
    return emb_path, csv_path


def measured(command: list[str], log_path: Path, nice: int = 10) -> dict:
    """A `python -m core ...` command in a child process at lowered priority: its wall time, CPU time, peak
    resident memory (the kernel's maximum for that process, from wait4) and the end of its output."""
    command = [sys.executable, "-m", "core", *command]
    load_before = os.getloadavg()
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=(lambda: os.nice(nice)) if nice else None)
        _, status, usage = os.wait4(process.pid, 0)
    return {"command": " ".join(["python", *command[1:]]), "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),
            "returncode": os.waitstatus_to_exitcode(status), "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average": [round((a + b) / 2, 2) for a, b in zip(load_before, os.getloadavg())],
            "log_tail": Path(log_path).read_text(errors="replace")[-1500:]}


def measured_import(embeddings: Path, labels: Path, out: Path, nice: int = 10) -> dict:
    """`python -m core import` of the inputs into `out` (replacing it), measured (see `measured`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return measured(["import", "--embeddings", str(embeddings), "--labels", str(labels), "--out", str(out),
                     "--overwrite"], out.parent / f"{out.name}.import.log", nice)


def measured_umap(run: Path, nice: int = 10) -> dict:
    """`python -m core umap RUN` from scratch (its cached coordinates deleted first), measured."""
    from core.run_dir import ARTIFACTS, coords_file
    (Path(run) / ARTIFACTS / coords_file("umap")).unlink(missing_ok=True)
    return measured(["umap", str(run)], Path(run).parent / f"{Path(run).name}.umap.log", nice)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--out", help=f"folder (default {INPUTS}/clustered_<n/1000>k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--isotropic", action="store_true", help="the worst case for approximate search")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else INPUTS / input_name(args.n, args.isotropic)
    print(*clustered_inputs(out, args.n, isotropic=args.isotropic, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
