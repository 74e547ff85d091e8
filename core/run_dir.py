"""The run directory: the one table of its file names, and a reader beside the writer (core.train/checkpoint).

    RUN_DIR/config.json          the RunConfig (rebuilds the model)
    RUN_DIR/weights.safetensors  best-epoch weights; metadata carries the head's JSON state
    RUN_DIR/history.csv          one row per epoch
    RUN_DIR/resume.pt            last completed epoch (model + optimiser + RNG) for resuming
    RUN_DIR/progress.jsonl       progress as JSON lines {"phase", "done", "total", "eta_s", "time"}
    RUN_DIR/train.log            the training job's console output (dashboard jobs)
    RUN_DIR/dsl_events.json      DSL's growth log; dsl_clusters.npy its class clusters
    RUN_DIR/artifacts/           embeddings.npy, labels.npy, items.json (+ items.parquet), coords_<method>.npy
                                 (+ coords_<method>_drawn.npy: the points its map draws) for the dashboard;
                                 neighbours_ids.npy, neighbours_sims.npy, item_scores.npy and
                                 neighbours.json: every item's neighbours and retrieval scores, found once
    RUN_DIR/metrics.json         test metrics of the best weights; written last, so it marks the run finished
    RUN_DIR/faithfulness.json    `python -m core faithfulness`'s scores of the run's maps (core/faithfulness.py)
    RUN_DIR/selections/          named selections of items saved on the dashboard's Explore page (core/selections.py)

Every name above is a constant here; no other module spells one. Reading needs no torch.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from core import io
from core.config import RunConfig

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
METRICS = "metrics.json"
HISTORY = "history.csv"
RESUME = "resume.pt"
PROGRESS = "progress.jsonl"
LOG = "train.log"
DSL_EVENTS = "dsl_events.json"
DSL_CLUSTERS = "dsl_clusters.npy"
FAITHFULNESS = "faithfulness.json"
SELECTIONS = "selections"                      # a folder: <name>.json per saved selection (core.selections)
ARTIFACTS = "artifacts"
# inside ARTIFACTS
EMBEDDINGS = "embeddings.npy"
LABELS = "labels.npy"
ITEMS = "items.json"
ITEM_STORE = "items.parquet"                   # the items as columns (core.item_store); items.json: the older form
NEIGHBOUR_IDS = "neighbours_ids.npy"           # every item's top-k other items (core.neighbours)
NEIGHBOUR_SIMS = "neighbours_sims.npy"         # ... their cosine similarities
ITEM_SCORES = "item_scores.npy"                # ... and per item R, R-precision, MAP@R, first true match's rank
NEIGHBOURS_INFO = "neighbours.json"            # how they were found (exact, or IVF and its recall); written last
ARTIFACT_FILES = (EMBEDDINGS, LABELS, ITEMS)   # what the dashboard needs to show a run


def coords_file(method: str) -> str:
    """The cached 2-D map of one projection method, inside ARTIFACTS."""
    return f"coords_{method}.npy"


def drawn_file(method: str) -> str:
    """Which points of that map the dashboard draws (core.projection.MAP_POINTS at most), inside ARTIFACTS."""
    return f"coords_{method}_drawn.npy"


class CheckpointError(RuntimeError):
    """A run directory that cannot be used as it is; the message says what is wrong and what to do."""


class NoModelError(CheckpointError):
    """Something needs the model of a run that has none to give here: imported from embeddings, or a
    researcher's own model while importing its code is not allowed (teaching mode)."""


def read_json(path: str | Path):
    path = Path(path)
    try:
        return io.read_json(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except io.FileFormatError as err:
        raise CheckpointError(str(err)) from None


def load_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    raw = read_json(run_dir / CONFIG)
    try:
        return RunConfig.from_dict(raw)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{run_dir / CONFIG} does not describe a MetricLens run: {err}") from None


def read_history(path: str | Path) -> list[dict]:
    """history.csv as rows of numbers (empty cells: None); [] when it is missing or empty."""
    try:
        with open(path, newline="") as fh:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    except FileNotFoundError:
        return []


def _number(text: str | None):
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


@dataclass
class Run:
    path: Path
    config: RunConfig
    metrics: dict | None                       # None until the run finished (metrics.json is written last)
    history: list[dict] = field(default_factory=list)
    files: frozenset[str] = frozenset()        # top-level names present (CONFIG, WEIGHTS, ...)
    artifacts: frozenset[str] = frozenset()    # names present inside ARTIFACTS

    @property
    def complete(self) -> bool:
        """Finished: metrics.json (written last) and the dashboard's artifacts are there (see is_complete)."""
        return self.metrics is not None and set(ARTIFACT_FILES) <= self.artifacts

    @property
    def has_model(self) -> bool:
        return WEIGHTS in self.files

    def has(self, name: str) -> bool:
        return name in self.files

    def artifact(self, name: str) -> Path:
        return self.path / ARTIFACTS / name


def _names(folder: Path) -> frozenset[str]:
    try:
        return frozenset(p.name for p in folder.iterdir())
    except OSError:
        return frozenset()


def read_run(path: str | Path) -> Run:
    """Config, metrics, history and which files exist; CheckpointError (saying what) for a folder that is not
    a run or holds a damaged config.json/metrics.json."""
    path = Path(path)
    config = load_config(path)
    files = _names(path)
    metrics = read_json(path / METRICS) if METRICS in files else None
    return Run(path, config, metrics, read_history(path / HISTORY), files, _names(path / ARTIFACTS))


def is_complete(path: str | Path) -> bool:
    """A finished run: config, metrics.json and the dashboard's artifacts are all there. Weights are not asked
    for (a run of imported embeddings has none); `is_run_dir` says whether a model can be loaded."""
    path = Path(path)
    return (all((path / name).exists() for name in (CONFIG, METRICS))
            and all((path / ARTIFACTS / name).exists() for name in ARTIFACT_FILES))


def is_run_dir(path: str | Path) -> bool:
    """A run that can be loaded (config + weights), finished or not."""
    return (Path(path) / CONFIG).exists() and (Path(path) / WEIGHTS).exists()


def list_runs(root: str | Path) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.iterdir() if p.is_dir() and is_run_dir(p)) if root.is_dir() else []
