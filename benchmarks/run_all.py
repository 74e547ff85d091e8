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
                                "checkpoints/shapes_gsp", "checkpoints/shapes_csa", "checkpoints/shapes_dsl"]),
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
GPU_TWIN = {"real_data_cached": "real_data_gpu"}  # a GPU result shown after a CPU one whose name it does not extend
# What BENCHMARKS.md shows of a result; what it leaves out stays in the result's file, which the section then links.
TWINS = {"dashboard_latency": ["dashboard_latency_1m", "dashboard_session_1m"], "faithfulness": ["faithfulness_timing"]}  # shown, as every <name>_cuda, compactly under <name>
ONLY_SECTION = {"real_data_gpu": "Recipes over seeds"}  # the rest of that file is superseded protocol
DETAIL_SECTIONS = {  # by the start of their heading
    "dsl_cia_accuracy": ["DSL learners over epochs"], "dsl_cia_accuracy_cuda": ["DSL learners over epochs"],
    "dashboard_scale": ["Data functions"], "faithfulness": ["Every run and map"],
    "heads_speed": ["resnet50"], "heads_speed_cuda": ["convnet"],  # the small net on the CPU, ResNet-50 on a GPU
    "real_data_cached": ["cub100: fine-tuned on a GPU"],  # the GPU section below has those figures
}
DETAIL_LINES = {  # table rows (and the lines that list what they measured)
    "dashboard_latency": r"^(\| \w+ \| sop_like_(10k|60k|120k) \||\| \w+_until_idle \||- (runs|retrieval tables read from .*): )",
    "dashboard_latency_1m": r"^\| (\w+_until_idle|server_first_page|map_reload_paint) \|",  # paint and interactions stay
    "dashboard_session_1m": r"^\| server_first_page \|",  # the session's own steps stay
    "dsl_cia_speed": r"^(The same runs on the |DSL training step vs)",  # wall-clock ratios; dsl ÷ gap_margin
    "dashboard_load": r"^\| \d+ \| (explore|retrieval|attention) \|",  # each session; their summary stays
    "dashboard_scale": r"^\| clustered_120k \|",  # 1k and a million items stay
    "scale_estimates": r"^(\| [1-9]\d* \| |\| clustered_isotropic|The isotropic inputs)",  # seed 0 and clustered inputs stay
    "heads_interpretability": r"^\| (?!grouping)[^|]+ \| uniform \(baseline\)",  # the same uniform row once
}
DETAIL_COLUMNS = {"dashboard_latency": ["samples (s)"], "dashboard_latency_1m": ["samples (s)"],
                  "dashboard_session_1m": ["samples (s)"], "real_data_cached": ["NMI", "caching s"],
                  "dashboard_scale": ["date"], "real_data_gpu": ["set", "R@2", "R@4", "R@8"],  # cub100 only
                  "grouping_groups_shipped": ["run", "loss", "epochs"],  # the shipped run, named above
                  "heads_interpretability": ["mass (per channel)", "pointing (best channel)"],
                  "faithfulness_timing": ["re-rank set-up", "re-rank"],  # faithfulness_rerank times it as the page does
                  "heads_speed_cuda": ["params"], "dsl_cia_speed_cuda": ["params"]}  # the CPU table's
PLOTTED = {"heads_accuracy_cuda", "dsl_cia_accuracy_cuda"}  # twins the accuracy plot shows: the page names their file
# Titles for results whose generated title names more than BENCHMARKS.md shows of them, or for a twin.
TITLES = {"real_data_gpu": "Real data on a GPU: the recipes on cub100, 224 px, every image, 3 seeds",
          "faithfulness_timing": "What the page waits for: seconds for one query's pass per explainer (shared 2-core "
                                 "CPU; every map and channel, 16 steps, 5 random orders, the two randomised models)",
          "input_pipeline_cuda": "On a GPU (NVIDIA H200): 224 px, bf16 autocast, every cub100 train image",
          "dashboard_session_1m": "A whole session at a million items (the same run; Compare with a second run of its items)",
          "dashboard_latency_1m": "At a million items (`clustered_1000k`: embeddings imported with `python -m core "
                                  "import`, benchmarks/scale_data.py, no images)"}
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


def _table_blocks(text: str, edit) -> str:
    """`text` with each Markdown table (a run of lines starting with `|`) replaced by `edit(lines)`."""
    out, block = [], []
    for line in text.split("\n") + [""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            out.extend(edit(block))
            block = []
        out.append(line)
    return "\n".join(out[:-1])


def _cells(row: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def _leave_out(lines: list[str], columns: list[str], left: set) -> list[str]:
    """A table without the columns named in `columns` (added to `left`); a table with no row left goes whole."""
    head, rule, body = lines[0], lines[1], lines[2:]
    if not body:
        return []
    drop = [i for i, c in enumerate(_cells(head)) if c in columns]
    if drop:
        left.update(_cells(head)[i] for i in drop)
        head, *body = ["| " + " | ".join(c for i, c in enumerate(_cells(r)) if i not in drop) + " |" for r in [head] + body]
        rule = "|" + "---|" * (len(_cells(rule)) - len(drop))
    return [head, rule, *body]


def _footer(text: str, command: str) -> str:
    """The result's footer (date, command, machine) as one short line at the end: the command only where it is not
    `command` (the one the opening table lists); the platform string and torch build stay in the file. Dashboard
    results give these as `- date:` / `- command:` / `- machine:` lines at the top."""
    def short(date, made_by, machine):
        gpu = re.search(r"device cuda, (.+)$", machine)
        cores = re.search(r"(\d+) CPUs", machine)
        where = gpu.group(1) if gpu else f"{cores.group(1)}-core CPU" if cores else machine
        browser = re.search(r"Streamlit [^,]*, Chromium [\d.]+", machine)
        if len(made_by) > 160:  # e.g. a list of runs: the file has it whole
            made_by = made_by[:150].rsplit(" ", 1)[0] + " …"
        return (f"_{date[:10]}{f' · `{made_by}`' if made_by != command else ''} · {where}"
                f"{', ' + browser.group(0) if browser else ''}_")

    lines = re.findall(r"^_(\d{4}-\d\d-\d\dT\S+) · `(.*)` · (.*)_$", text, flags=re.M)
    text = re.sub(r"^_\d{4}-\d\d-\d\dT.*_\n?", "", text, flags=re.M)
    bullets = {k: re.search(rf"^- {k}: (.*)$", text, flags=re.M) for k in ("date", "command", "machine")}
    if all(bullets.values()):
        text = re.sub(r"^- (date|command|machine): .*\n", "", text, flags=re.M)
        lines.append((bullets["date"].group(1), bullets["command"].group(1).strip("`"), bullets["machine"].group(1)))
    return text.rstrip() + "\n\n" + "\n\n".join(short(*f) for f in dict.fromkeys(lines)) + "\n"


def _shown(name: str) -> str | None:
    """A result's markdown as BENCHMARKS.md shows it: `<details>` blocks (every run of a summary), DETAIL_SECTIONS,
    DETAIL_LINES and DETAIL_COLUMNS left to the file (a line links it), for some results only ONLY_SECTION, and a
    short footer. Headings as in the file."""
    md = RESULTS / f"{name}.md"
    if not md.exists():
        return None
    text = re.sub(r"\n?<details>.*?</details>\n?", "\n", md.read_text(), flags=re.S)
    left, columns = [], set()
    if name in ONLY_SECTION:
        title = text.split("\n", 1)[0]
        keep = text.split(f"## {ONLY_SECTION[name]}", 1)[1].split("\n## ", 1)[0]
        footer = re.findall(r"^_\d{4}-.*$", text, flags=re.M)
        keep = re.sub(r"^_\d{4}-.*$", "", keep, flags=re.M)
        text = f"{title}\n\n## {ONLY_SECTION[name]}{keep.rstrip()}\n\n{footer[-1] if footer else ''}\n"
        left.append("the other protocols")
    for title in DETAIL_SECTIONS.get(name, []):  # the section goes; its footer stays
        head, _, rest = text.partition(f"\n## {title}")
        body, sep, after = rest.partition("\n## ")
        footer = "\n".join(re.findall(r"^_\d{4}-.*$", body, flags=re.M))
        text = f"{head.rstrip()}\n\n{footer}\n{sep}{after}"
        left.append(f"“{title}{body.split(chr(10), 1)[0]}”")
    if name in DETAIL_LINES:
        gone = [m.group(0) for m in re.finditer(DETAIL_LINES[name] + r".*\n", text, flags=re.M)]
        text = re.sub(DETAIL_LINES[name] + r".*\n", "", text, flags=re.M)
        rows = sum(line.startswith("|") for line in gone)
        left += [f"{rows} more rows"] if rows else []
    text = _table_blocks(text, lambda lines: _leave_out(lines, DETAIL_COLUMNS.get(name, []), columns))
    left += [f"columns {', '.join(sorted(columns))}"] if columns else []
    if name in TITLES:
        text = re.sub(r"^#+ .*$", f"# {TITLES[name]}", text, count=1, flags=re.M)
    text = _footer(text, "python " + " ".join(dict(STEPS + GPU_STEPS).get(name, [])))
    file = f"benchmarks/results/{name}.md"
    return text + (f"\nAlso in [`{file}`]({file}): {'; '.join(left)}.\n" if left else "")


def _section(name: str) -> str | None:
    """A result as a level-2 section of BENCHMARKS.md."""
    text = _shown(name)
    return _as_section(text) if text else None


def _twin(name: str) -> str | None:
    """A twin result (the same benchmark on a GPU, or at another scale) under its main section: its tables with
    their headings, its short footer and a link to its file, which has its prose; the main section's prose is
    the same."""
    text = _shown(name)
    if not text:
        return None
    gpu = re.search(r"device cuda, (.+)_$", (RESULTS / f"{name}.md").read_text(), flags=re.M)
    title = TITLES.get(name) or f"On a GPU ({gpu.group(1) if gpu else 'CUDA'})"
    file = f"benchmarks/results/{name}.md"
    if name in PLOTTED:
        return f"### {title}\n\nR@1 per method: the accuracy plot at the top. The table: [`{file}`]({file}).\n"
    kept = [line for line in text.split("\n")[1:] if not line or line[0] in "#|_"]
    kept.append(f"\nIn full: [`{file}`]({file}).")
    text = re.sub(r"^#+ .*$", f"## {title}", _as_section("# twin\n" + "\n".join(kept)), count=1, flags=re.M)
    return re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)  # one level below the main section


def _as_section(text: str) -> str:
    """Markdown with its first heading moved to level 2 and the others with it."""
    first = re.search(r"^(#+) ", text, flags=re.M)
    shift = 2 - len(first.group(1)) if first else 0
    return re.sub(r"^(#+) ", lambda m: "#" * max(1, len(m.group(1)) + shift) + " ", text.strip() + "\n", flags=re.M)


def _twins(name: str) -> list[str]:
    """The results shown under `name`: its GPU run and TWINS."""
    return [t for t in (f"{name}_cuda", *TWINS.get(name, [])) if any(n == t for n, _ in STEPS + GPU_STEPS)]


def _shown_order() -> list[tuple[str, list[str]]]:
    """(name, command) of every result in the order BENCHMARKS.md shows it (GPU results are named *_cuda or *_gpu)."""
    commands = dict(STEPS + GPU_STEPS)
    twins = {t for name, _ in STEPS for t in _twins(name)}
    order = []
    for name, cmd in STEPS:
        if name not in twins:
            shown_after = _twins(name) + ([GPU_TWIN[name]] if name in GPU_TWIN else [])
            order += [(name, cmd)] + [(extra, commands[extra]) for extra in shown_after]
    return order


def _how_made() -> str:
    """The opening table: for each section, the command that makes it and where it runs."""
    rows = ["| result | command |", "|---|---|"]
    rows += [f"| {name} | `python {' '.join(cmd)}` |" for name, cmd in _shown_order()]
    rows.append("| fidelity | `python -m benchmarks.fidelity.<method> --official PATH` (a checkout of the authors' code) |")
    return ("## How each figure is made\n\n"
            "Each command below writes `benchmarks/results/<result>.md` and `.json` (date, exact command, machine). A "
            "section's footer gives the date, the machine and, where it differs, the command; a section that leaves "
            "rows, columns or sections out links its file. CPU rows come from a shared 2-core machine: read timing "
            "ratios, not absolute milliseconds. To refresh a table, run its command, then `python -m benchmarks.run_all "
            "--assemble`; `make bench` runs them all (about an hour on 2 cores; the GPU ones need a GPU). Superseded "
            "runs are in git history.\n\n" + "\n".join(rows) + "\n")


def assemble() -> None:
    parts = [f"# MetricLens benchmarks\n\nToday's results, assembled by `python -m benchmarks.run_all --assemble` on "
             f"{date.today()}.\n", _how_made()]
    for plot in (plot_accuracy(), plot_attention_in_object()):
        if plot:
            parts.append(f"![{plot.split('/')[-1]}]({plot})\n")
    commands = dict(STEPS + GPU_STEPS)
    twins = {t for name, _ in STEPS for t in _twins(name)}
    for name, _ in _shown_order():
        if name in READINGS:  # a hand-kept reading that goes with this result
            parts.append(_as_section((NOTES / READINGS[name]).read_text()))
        text = _twin(name) if name in twins else _section(name)
        if text or name not in twins:
            parts.append(text or f"## {name}\n\nNot measured yet: run `python {' '.join(commands[name])}`.\n")
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
