"""`make bench`: run every benchmark, then assemble BENCHMARKS.md (tables + PNG plots).

    python -m benchmarks.run_all               # run everything (about an hour on 2 CPU cores), then assemble
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

from benchmarks.common import RESULTS, ROOT

STEPS = [  # (results name, command)
    ("heads_speed", ["-m", "benchmarks.heads_speed"]),
    ("dsl_cia_speed", ["-m", "benchmarks.dsl_cia_speed"]),
    ("heads_accuracy", ["-m", "benchmarks.heads_accuracy"]),
    ("dsl_cia_accuracy", ["-m", "benchmarks.dsl_cia_accuracy"]),
    ("heads_interpretability", ["-m", "benchmarks.heads_interpretability"]),
    ("cub100", ["-m", "benchmarks.cub100", "--train"]),
    ("dashboard_latency", ["-m", "benchmarks.dashboard_latency"]),
]
PLOTS = RESULTS / "plots"


def plot_accuracy() -> str | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {}
    for name in ("heads_accuracy", "dsl_cia_accuracy"):
        path = RESULTS / f"{name}.json"
        if path.exists():
            for method, s in json.loads(path.read_text()).get("summary", {}).items():
                if "recall@1_mean" in s and method not in summary:
                    summary[method] = s
    if not summary:
        return None
    names = list(summary)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(names, [summary[n]["recall@1_mean"] for n in names], yerr=[summary[n].get("recall@1_std", 0) for n in names],
           color=["#888"] + ["#3a7"] * (len(names) - 1), capsize=4)
    ax.set_ylabel("R@1, unseen classes"); ax.set_title("shapes: R@1 per method (mean ± std over seeds)")
    ax.set_ylim(0, 1)
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
                bars[f"{res['head']}:{map_name}"] = m["aggregate_mass"]
    if len(bars) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(list(bars), list(bars.values()), color=["#888"] + ["#37a"] * (len(bars) - 1))
    ax.set_xlabel("share of attention mass inside the target object")
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
    for name, _ in STEPS:
        md = RESULTS / f"{name}.md"
        parts.append(re.sub(r"^(#+) ", r"#\1 ", md.read_text(), flags=re.M) if md.exists()
                     else f"## {name}\n\nNot measured yet: run `python {' '.join(dict(STEPS)[name])}`.\n")
    (ROOT / "BENCHMARKS.md").write_text("\n\n".join(parts))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--assemble", action="store_true", help="only rebuild BENCHMARKS.md from existing results")
    args = p.parse_args(argv)
    if not args.assemble:
        for name, cmd in STEPS:
            print(f"== {name}: python {' '.join(cmd)}", flush=True)
            subprocess.run([sys.executable, *cmd], cwd=ROOT, check=False)
    assemble()
    print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
