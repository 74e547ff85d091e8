"""`make bench`: run every benchmark, then assemble BENCHMARKS.md (tables + PNG plots).

    python -m benchmarks.run_all               # run everything (about an hour on 2 CPU cores: accuracy runs and cub100 dominate; a GPU adds its own rows), then assemble
    python -m benchmarks.run_all --assemble    # only rebuild BENCHMARKS.md from benchmarks/results/

Each benchmark writes benchmarks/results/<name>.json (machine, date, exact command) and <name>.md;
this script only orders them, adds plots and a header. Timing tables are ratios measured side by
side in one process; rows measured on a GPU say so in their device column/footer.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from datetime import date

import numpy as np

from benchmarks.common import RESULTS, ROOT

STEPS = [  # (results name, command)
    ("heads_speed", ["-m", "benchmarks.heads_speed"]),
    ("dsl_cia_speed", ["-m", "benchmarks.dsl_cia_speed"]),
    ("heads_accuracy", ["-m", "benchmarks.heads_accuracy"]),
    ("dsl_cia_accuracy", ["-m", "benchmarks.dsl_cia_accuracy"]),
    ("heads_interpretability", ["-m", "benchmarks.heads_interpretability"]),
    ("faithfulness", ["-m", "benchmarks.faithfulness"]),
    ("faithfulness_timing", ["-m", "benchmarks.faithfulness", "--timing"]),
    ("faithfulness_rerank", ["-m", "benchmarks.faithfulness", "--rerank"]),
    ("cub100", ["-m", "benchmarks.cub100", "--train"]),  # with a GPU: + --heads gap,grouping,gsp,cia
    ("real_data", ["-m", "benchmarks.real_data", "--ablation"]),  # then --recipes; see benchmarks/notes/real_data.md
    ("real_data_cached", ["-m", "benchmarks.real_data", "--cached"]),  # frozen backbone, cached features, 224 px, CPU
    ("small_images", ["-m", "benchmarks.small_images"]),
    ("input_pipeline", ["-m", "benchmarks.input_pipeline", "--size", "96", "--epochs", "1", "--train-per-class", "8"]),
    ("dashboard_scale", ["-m", "benchmarks.dashboard_latency", "--sizes", "1000,120000,1000000", "--core-only",
                         "--umap"]),  # import, UMAP and data functions at a million items (issue 27)
    ("scale_estimates", ["-m", "benchmarks.scale_estimates"]),  # the sampled estimates against exact values
    ("dashboard_latency", ["-m", "benchmarks.dashboard_latency"]),
    ("dashboard_load", ["-m", "benchmarks.dashboard_load"]),
    ("neighbour_tables", ["-m", "benchmarks.neighbour_tables"]),
]
# With a GPU, `make bench` also measures these (written as <name>_cuda and shown after the CPU table).
GPU_STEPS = [
    ("heads_speed_cuda", ["-m", "benchmarks.heads_speed", "--device", "cuda", "--backbones", "convnet,resnet50",
                          "--resnet-batch", "32", "--repeats", "15", "--warmup", "3", "--name", "heads_speed_cuda"]),
    ("dsl_cia_speed_cuda", ["-m", "benchmarks.dsl_cia_speed", "--device", "cuda", "--repeats", "30", "--clock", "wall",
                            "--threads", "0", "--name", "dsl_cia_speed_cuda"]),
    ("heads_accuracy_cuda", ["-m", "benchmarks.heads_accuracy", "--device", "cuda", "--epochs", "12",
                             "--max-per-class", "0", "--name", "heads_accuracy_cuda"]),
    ("dsl_cia_accuracy_cuda", ["-m", "benchmarks.dsl_cia_accuracy", "--device", "cuda", "--methods", "gap,dsl,cia,gap_margin",
                               "--name", "dsl_cia_accuracy_cuda"]),
]
PLOTS = RESULTS / "plots"
NOTES = ROOT / "benchmarks" / "notes"


def _accuracy_summary(suffix: str) -> tuple[dict, str]:
    """R@1 (mean, std) per method from heads_accuracy<suffix> + dsl_cia_accuracy<suffix>, and a label
    naming their schedule and machine."""
    summary, described = {}, []
    for name in ("heads_accuracy", "dsl_cia_accuracy"):
        path = RESULTS / f"{name}{suffix}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for method, s in data.get("summary", {}).items():
            if method in summary:
                continue
            if "recall@1_mean" in s:
                summary[method] = (s["recall@1_mean"], s.get("recall@1_std", 0.0))
            elif isinstance(s.get("recall@1"), list) and s["recall@1"]:
                r1 = np.asarray(s["recall@1"], dtype=float)
                summary[method] = (float(r1.mean()), float(r1.std(ddof=1)) if len(r1) > 1 else 0.0)
        described.append(f"{data.get('epochs', '?')} epochs")
    machine = "H100, bf16" if suffix == "_cuda" else "CPU, fp32"
    return summary, f"{machine} ({', '.join(sorted(set(described)))})"


def plot_accuracy() -> str | None:
    """Grouped bars: R@1 per method on each machine the accuracy benchmarks ran on (3 seeds each)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(label, summary) for summary, label in (_accuracy_summary(""), _accuracy_summary("_cuda")) if summary]
    if not series:
        return None
    names = list(dict.fromkeys(m for _, summary in series for m in summary))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for k, ((label, summary), colour) in enumerate(zip(series, ["#3a7", "#37a"])):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [summary.get(n, (np.nan, 0))[0] for n in names], width,
               yerr=[summary.get(n, (0, 0))[1] for n in names], color=colour, capsize=3, label=label)
    ax.axhline(1 / 32, color="#c33", lw=1, ls="--", label="chance (1/32)")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("R@1, unseen classes")
    ax.set_title("shapes: R@1 per method, mean ± std over 3 seeds (dsl, gap_margin: margin loss)", fontsize=10)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper right", ncol=3)
    fig.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / "accuracy.png", dpi=120)
    plt.close(fig)
    return "benchmarks/results/plots/accuracy.png"


def plot_attention_in_object() -> str | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = RESULTS / "heads_interpretability.json"
    if not path.exists():
        return None
    bars = {}
    for res in json.loads(path.read_text())["results"]:
        bars.setdefault("uniform", res["uniform_mass"])
        for map_name, m in res["maps"].items():
            if "aggregate_mass" in m:
                bars[f"{' + '.join([res['head'], *res.get('blocks', [])])}: {map_name}"] = m["aggregate_mass"]
    if len(bars) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    ax.barh(list(bars), list(bars.values()), color=["#888"] + ["#37a"] * (len(bars) - 1))
    ax.set_xlabel("share of attention mass inside the target object")
    ax.set_title("mass inside the object (channel-mean map)", fontsize=10)
    fig.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / "attention_in_object.png", dpi=120)
    plt.close(fig)
    return "benchmarks/results/plots/attention_in_object.png"


def assemble() -> None:
    parts = [f"# MetricLens benchmarks\n\nAssembled by `python -m benchmarks.run_all` (`make bench`) on {date.today()}. "
             "Every table below carries its machine, date and exact command in its footer; regenerate one table "
             "with that command, then `python -m benchmarks.run_all --assemble`. CPU timings were taken on a shared "
             "2-core machine: read the ratios (measured side by side, interleaved, in one process), not the absolute "
             "milliseconds.\n"]
    for plot in (plot_accuracy(), plot_attention_in_object()):
        if plot:
            parts.append(f"![{plot.split('/')[-1]}]({plot})\n")
    for name, cmd in STEPS:
        # a hand-kept section (benchmarks/notes/<name>.md: tables of several protocols with their reading)
        # stands in for the raw table
        md = NOTES / f"{name}.md" if (NOTES / f"{name}.md").exists() else RESULTS / f"{name}.md"
        parts.append(re.sub(r"^(#+) ", r"#\1 ", md.read_text(), flags=re.M) if md.exists()
                     else f"## {name}\n\nNot measured yet: run `python {' '.join(cmd)}`.\n")
        gpu = RESULTS / f"{name}_cuda.md"  # the same benchmark on a GPU (`--device cuda --name {name}_cuda`)
        if gpu.exists():
            text = re.sub(r"^(#+) ", r"#\1 ", gpu.read_text(), flags=re.M)
            parts.append(re.sub(r"^## (.*)$", r"## \1 — GPU", text, count=1, flags=re.M))
    # hand-kept notes that stand for no single benchmark (e.g. demo_runs: how the shipped runs were made)
    for md in sorted(NOTES.glob("*.md")):
        if md.stem not in {name for name, _ in STEPS}:
            parts.append(re.sub(r"^(#+) ", r"#\1 ", md.read_text(), flags=re.M))
    # fidelity against the official code: hand-written per method (the scripts need a checkout of that code)
    for md in sorted((ROOT / "benchmarks" / "fidelity").glob("*.md")):
        parts.append(md.read_text())  # written as "## Fidelity: <method>" sections
    (ROOT / "BENCHMARKS.md").write_text("\n\n".join(parts))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--assemble", action="store_true", help="only rebuild BENCHMARKS.md from existing results")
    args = p.parse_args(argv)
    if not args.assemble:
        import torch

        gpu = torch.cuda.is_available()
        for name, cmd in STEPS + (GPU_STEPS if gpu else []):
            if name == "cub100" and gpu:
                cmd = cmd + ["--heads", "gap,grouping,gsp,cia"]
            print(f"== {name}: python {' '.join(cmd)}", flush=True)
            subprocess.run([sys.executable, *cmd], cwd=ROOT, check=False)
    assemble()
    print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
