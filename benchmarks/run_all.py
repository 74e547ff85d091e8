"""`make bench`: run every benchmark, then assemble BENCHMARKS.md (tables + PNG plots).

    python -m benchmarks.run_all               # run everything (about an hour on 2 CPU cores: accuracy runs and cub100 dominate; a GPU adds its own rows), then assemble
    python -m benchmarks.run_all --assemble    # only rebuild BENCHMARKS.md from benchmarks/results/, notes/, fidelity/

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

STEPS = [  # (results name, command): what `make bench` runs, in the order BENCHMARKS.md shows it
    ("heads_speed", ["-m", "benchmarks.heads_speed"]),
    ("dsl_cia_speed", ["-m", "benchmarks.dsl_cia_speed"]),
    ("heads_accuracy", ["-m", "benchmarks.heads_accuracy"]),
    ("dsl_cia_accuracy", ["-m", "benchmarks.dsl_cia_accuracy"]),
    ("heads_interpretability", ["-m", "benchmarks.heads_interpretability", "checkpoints/shapes_grouping",
                                "checkpoints/shapes_gsp", "checkpoints/shapes_csa"]),
    ("faithfulness", ["-m", "benchmarks.faithfulness"]),
    ("faithfulness_timing", ["-m", "benchmarks.faithfulness", "--timing", "checkpoints/shapes_grouping",
                             "checkpoints/shapes_gsp"]),
    ("faithfulness_rerank", ["-m", "benchmarks.faithfulness", "--rerank"]),
    ("demo_seeds", ["-m", "benchmarks.demo_seeds", *(f"checkpoints/shapes_{m}" for m in
                                                     ("gap", "grouping", "gsp", "csa", "dsl", "cia"))]),
    # ^ the shipped runs; the table's footer also names the seed-1 and seed-2 runs it scored (notes/demo_seeds.md)
    ("gsp_transport", ["-m", "benchmarks.gsp_transport"]),
    ("grouping_groups_shipped", ["-m", "benchmarks.grouping_groups", "checkpoints/shapes_grouping",
                                 "--name", "grouping_groups_shipped"]),
    ("cub100", ["-m", "benchmarks.cub100", "--train"]),  # with a GPU: + --heads gap,grouping,gsp,cia
    ("real_data_pca", ["-m", "benchmarks.real_data", "--datasets", "cub100,caltech101",
                       "--name", "real_data_pca", "--train-per-class", "24", "--test-per-class", "20",
                       "--epochs", "3"]),  # the recipes on the CPU; their GPU run: real_data_gpu
    ("real_data_cached", ["-m", "benchmarks.real_data", "--cached"]),  # frozen backbone, cached features, 224 px, CPU
    ("small_images", ["-m", "benchmarks.small_images"]),
    ("input_pipeline", ["-m", "benchmarks.input_pipeline", "--size", "96", "--epochs", "1", "--train-per-class", "8"]),
    ("dashboard_latency", ["-m", "benchmarks.dashboard_latency"]),
    ("dashboard_latency_1m", ["-m", "benchmarks.dashboard_latency", "--sizes", "1000000", "--skip-shipped",
                              "--repeats", "2", "--skip-before", "--name", "dashboard_latency_1m"]),
    ("dashboard_session_1m", ["-m", "benchmarks.dashboard_latency", "--session", "--sizes", "1000000", "--repeats",
                              "2", "--name", "dashboard_session_1m"]),  # a whole session at a million items (issue 27)
    ("dashboard_load", ["-m", "benchmarks.dashboard_load"]),
    ("dashboard_scale", ["-m", "benchmarks.dashboard_latency", "--sizes", "1000,120000,1000000", "--core-only",
                         "--umap"]),  # import, UMAP and data functions at a million items (issue 27)
    ("scale_estimates", ["-m", "benchmarks.scale_estimates"]),  # the sampled estimates against exact values
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
    ("input_pipeline_cuda", ["-m", "benchmarks.input_pipeline", "--size", "224", "--workers", "12",
                             "--train-per-class", "0"]),  # named input_pipeline_cuda on a GPU
    ("real_data_gpu", ["-m", "benchmarks.real_data", "--datasets", "cub100", "--size", "224", "--train-per-class", "0",
                       "--test-per-class", "0", "--epochs", "15", "--name", "real_data_gpu", "--seeds", "0"]),
    # ^ also run by `bash benchmarks/gpu_session.sh`
]
GPU_TWIN = {"real_data_pca": "real_data_gpu"}  # a GPU result shown after a CPU one whose name it does not extend
# Only these sections of a result are shown (the rest of the file is superseded protocol, kept by the script).
ONLY_SECTION = {"real_data_gpu": "Recipes over seeds"}
# Titles for results whose generated title names more than BENCHMARKS.md shows of them.
TITLES = {"real_data_pca": "Real data: the recipes on the CPU (caltech101, cub100; 128 px, 3 epochs)",
          "real_data_gpu": "Real data on a GPU: the recipes on cub100, 224 px, every image, 3 seeds"}
# Detail tables left to their results file (BENCHMARKS.md names the file instead), to keep the page short.
DETAIL_SECTIONS = {"dsl_cia_accuracy": ["DSL learners over epochs"], "dsl_cia_accuracy_cuda": ["DSL learners over epochs"],
                   "dashboard_scale": ["Data functions"]}
DETAIL_ROWS = {"faithfulness": r"^\| [^|]+ \| `[^`]*\[\d+\]` \|"}  # per-channel rows; the channel means stay
PLOTS = RESULTS / "plots"
NOTES = ROOT / "benchmarks" / "notes"
READINGS = {"demo_seeds": "demo_seeds.md"}  # a short hand-kept reading shown before a result
SHOWN_NOTES = ["method_choices.md"]  # hand-kept sections that go with no single result
# (notes/dashboard_latency.md keeps the measured reasons the dashboard's code cites; it is not shown)


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


def _section(name: str) -> str | None:
    """A result's markdown as BENCHMARKS.md shows it: headings one level down, `<details>` blocks (every run of a
    summary) left to the file, and for some results only their current section (ONLY_SECTION)."""
    md = RESULTS / f"{name}.md"
    if not md.exists():
        return None
    text = re.sub(r"\n?<details>.*?</details>\n?", "\n", md.read_text(), flags=re.S)
    for title in DETAIL_SECTIONS.get(name, []):  # the section gives way to the file's name; the footer stays
        head, _, rest = text.partition(f"## {title}")
        body, sep, after = rest.partition("\n## ")
        footer = "\n".join(re.findall(r"^_\d{4}-.*$", body, flags=re.M))
        text = f"{head}## {title}\n\nIn `benchmarks/results/{name}.md`.\n\n{footer}\n{sep}{after}"
    if name in DETAIL_ROWS:
        text, dropped = re.subn(DETAIL_ROWS[name] + r".*\n", "", text, flags=re.M)
        text += f"\n({dropped} rows of single channels: `benchmarks/results/{name}.md`.)\n"
    if name in ONLY_SECTION:
        title = text.split("\n", 1)[0]
        keep = text.split(f"## {ONLY_SECTION[name]}", 1)[1].split("\n## ", 1)[0]
        footer = re.findall(r"^_\d{4}-.*$", text, flags=re.M)
        text = f"{title}\n\n## {ONLY_SECTION[name]}{keep.rstrip()}\n\n{footer[-1] if footer else ''}\n"
    if name in TITLES:
        text = re.sub(r"^#+ .*$", f"# {TITLES[name]}", text, count=1, flags=re.M)
    return _as_section(text)


def _as_section(text: str) -> str:
    """Markdown with its first heading moved to level 2 and the others with it."""
    first = re.search(r"^(#+) ", text, flags=re.M)
    shift = 2 - len(first.group(1)) if first else 0
    return re.sub(r"^(#+) ", lambda m: "#" * max(1, len(m.group(1)) + shift) + " ", text.strip() + "\n", flags=re.M)


def _how_made() -> str:
    """The opening table: for each section, the command that makes it and where it runs."""
    rows = ["| section | command | machine |", "|---|---|---|"]
    for name, cmd in STEPS:
        rows.append(f"| {name} | `python {' '.join(cmd)}` | CPU |")
        gpu = f"{name}_cuda" if any(n == f"{name}_cuda" for n, _ in GPU_STEPS) else GPU_TWIN.get(name)
        for gname, gcmd in GPU_STEPS:
            if gname == gpu:
                rows.append(f"| {gname} | `python {' '.join(gcmd)}` | GPU |")
    rows.append("| fidelity | `python -m benchmarks.fidelity.<method> --official PATH` (a checkout of the authors' code) "
                "| CPU |")
    return ("## How each figure is made\n\n"
            "Each table below is written by one command into `benchmarks/results/<section>.md` (and `.json`), with its "
            "date, exact command and machine in its footer. CPU rows come from a shared 2-core machine: read timing "
            "ratios (measured side by side in one process), not absolute milliseconds; GPU rows say so. To refresh one "
            "table, run its command, then `python -m benchmarks.run_all --assemble` to rebuild this page; "
            "`make bench` runs every command (about an hour on 2 cores; with a GPU also the GPU rows). Older protocols "
            "and superseded runs are in git history.\n\n" + "\n".join(rows) + "\n")


def assemble() -> None:
    parts = [f"# MetricLens benchmarks\n\nToday's results, assembled by `python -m benchmarks.run_all --assemble` on "
             f"{date.today()}.\n", _how_made()]
    for plot in (plot_accuracy(), plot_attention_in_object()):
        if plot:
            parts.append(f"![{plot.split('/')[-1]}]({plot})\n")
    for name, cmd in STEPS:
        if name in READINGS:  # a hand-kept reading that goes with this result
            parts.append(_as_section((NOTES / READINGS[name]).read_text()))
        parts.append(_section(name) or f"## {name}\n\nNot measured yet: run `python {' '.join(cmd)}`.\n")
        for gpu in (f"{name}_cuda", GPU_TWIN.get(name)):
            text = _section(gpu) if gpu else None
            if text and gpu.endswith("_cuda"):
                text = re.sub(r"^## (.*)$", r"## \1 — GPU", text, count=1, flags=re.M)
            if text:
                parts.append(text)
    for md in SHOWN_NOTES:  # hand-kept sections that stand for no single result
        parts.append(_as_section((NOTES / md).read_text()))
    # fidelity against the official code: hand-kept per method (the scripts need a checkout of that code)
    for md in sorted((ROOT / "benchmarks" / "fidelity").glob("*.md")):
        parts.append(md.read_text())  # written as "## Fidelity: ..." sections
    page = "\n\n".join(p.strip("\n") + "\n" for p in parts)
    (ROOT / "BENCHMARKS.md").write_text(re.sub(r"\n{3,}", "\n\n", page))


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
