"""Shared pieces of the head benchmarks: machine info, result files (JSON + markdown), run folders."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from core.mode import evaluating

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs"          # git-ignored: trained runs the benchmarks share


# Methods with a benchmark of their own (DSL's growth needs its schedule: benchmarks/dsl_cia_*.py), left out of
# the generic head benchmarks; every other registered head and block is in them without editing a list.
OWN_BENCHMARK = {"dsl"}


def registered_methods() -> list[str]:
    """Every registered head, then every registered block (GAP first: the tables compare against it)."""
    import core.models.embedder  # noqa: F401  (importing the model registers the built-in heads and blocks)
    from core.registry import BLOCKS, HEADS

    names = [h for h in HEADS.names() if h not in OWN_BENCHMARK] + [b for b in BLOCKS.names() if b not in HEADS.names()]
    return sorted(names, key=lambda name: name != "gap")


def use_method(model_cfg, name: str, stage: str, args: dict | None = None):
    """`model_cfg` (a GAP model) made to use the registered head or block `name` (a block after `stage`)."""
    from core.config import BlockConfig
    from core.registry import BLOCKS

    if name in BLOCKS.names():
        model_cfg.blocks = [BlockConfig(name, stage, dict(args or {}))]
    else:
        model_cfg.head, model_cfg.head_args = name, dict(args or {})
    return model_cfg


def machine_info(device: str = "cpu") -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device,
            "processor": platform.processor() or platform.machine()}
    try:
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]  # the CPU is shared: say how busy
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command_line() -> str:
    """The command as typed: `python -m benchmarks.<name> args...` when run as a module."""
    script = Path(sys.argv[0]).resolve()
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        module = ".".join(script.relative_to(ROOT).with_suffix("").parts)
        return f"python -m {module} {args}".strip()
    except ValueError:
        return f"python {shlex.quote(sys.argv[0])} {args}".strip()


def _footer(meta: dict) -> str:
    m = meta["machine"]
    return (f"\n\n_{meta['date']} · `{meta['command']}` · {m['platform']}, {m['cpu_count']} CPUs, "
            f"torch {m['torch']}, device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}_\n")


def write_results(name: str, payload: dict, markdown: str, device: str = "cpu", results_dir: Path = RESULTS) -> Path:
    """benchmarks/results/<name>.json (with machine, date, command) and <name>.md."""
    results_dir.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": name, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(), "machine": machine_info(device)}
    out = results_dir / f"{name}.json"
    out.write_text(json.dumps({**meta, **payload}, indent=2, default=float) + "\n")
    (results_dir / f"{name}.md").write_text(markdown.rstrip() + _footer(meta))
    return out


def read_results(name: str, results_dir: Path = RESULTS) -> dict:
    """What write_results saved as <name>.json (its meta and payload together)."""
    path = results_dir / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run the benchmark first")
    return json.loads(path.read_text())


def rewrite_markdown(name: str, markdown: str, results_dir: Path = RESULTS) -> str:
    """<name>.md in a new layout of the figures <name>.json already holds: the footer keeps that JSON's date,
    command and machine (nothing was measured again)."""
    text = markdown.rstrip() + _footer(read_results(name, results_dir))
    (results_dir / f"{name}.md").write_text(text)
    return text


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- timing one training step / one inference, shared by the speed benchmarks -----------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_training_step(trainer, x: torch.Tensor, y: torch.Tensor, tag=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one `Trainer.step` (the step every epoch runs: the
    head hears `tag`, loss terms under the trainer's autocast, backward, optimiser step)."""
    sync(trainer.device)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.step((x, y), tag)
    sync(trainer.device)
    return time.perf_counter() - start, time.process_time() - cpu


@torch.no_grad()
def timed_inference(trainer, x: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one eval-mode forward of the batch under the trainer's autocast."""
    with evaluating(trainer.model):
        sync(trainer.device)
        start, cpu = time.perf_counter(), time.process_time()
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.use_amp):
            trainer.model(x)
        sync(trainer.device)
    return time.perf_counter() - start, time.process_time() - cpu


# ---- the dashboard benchmarks (dashboard_latency, dashboard_load): a real server and browser ---------------
def require_chromium() -> bool:
    """True when the browser the dashboard benchmarks drive is installed; else says how to get it."""
    from tests.dashboard_testing import CHROMIUM
    if Path(CHROMIUM).exists():
        return True
    print(f"{CHROMIUM} is missing: apt-get install chromium (or `make browser`)", file=sys.stderr)
    return False
