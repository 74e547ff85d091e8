"""Train: a form over a config -> `python -m core train` in a subprocess, with live progress and curves.

The shapes_<method>.yaml configs train on the procedural shapes; the real_<method>.yaml recipes train on
photos: the config's own data set, or the user's image folder or CSV (`data_ui`), by default with the backbone
frozen on a machine without a GPU (its features computed once and cached: minutes on a CPU, `mode_ui`). A job belongs to the browser session that started it: only that
session sees its panel and may cancel or restart it; others see that the machine is busy. Not part of
the teaching mode."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

import core.models.embedder  # noqa: F401  (registers every backbone and head)
from core.config import RunConfig
from core.registry import BACKBONES, HEADS
from core.run_dir import CONFIG, HISTORY
from core.train_features import frozen_backbone_overrides
from dashboard import background, catalog, figures, jobs, session, ui


# what a config's `data.name` trains on, as the config picker says it
PROCEDURAL = "shapes"
QUICK = ["data.max_per_class=24", "data.image_size=160", "train.num_workers=0"]  # real_gap.yaml's CPU hint
QUICK_EPOCHS = 2
MODES = {  # how a photo recipe trains; the first is the default without a GPU, the last with one
    "frozen": "Frozen backbone (fast on a CPU): the backbone's features are computed once and cached, the head "
              "trains on them",
    "quick": f"Fine-tune, a quick first result: {QUICK_EPOCHS} epochs, 24 images per class, 160 px",
    "full": "Fine-tune the backbone: the recipe's full schedule (a GPU; hours on a CPU)",
}


@st.cache_data(show_spinner=False, max_entries=64)
def _config_label(path: str, mtime: float) -> str:
    try:
        data = RunConfig.load(path).data
    except (ValueError, TypeError, OSError):
        return f"{Path(path).name} (cannot be read)"
    own = Path(data.csv).parent.name if data.name == "csv" and data.csv else data.name  # e.g. cub100
    kind = "procedural shapes" if data.name == PROCEDURAL else f"photos ({own}, or your own folder or CSV)"
    return f"{Path(path).name} · {kind}"


def config_label(path: Path) -> str:
    return _config_label(str(path), path.stat().st_mtime)


def config_ui() -> tuple[Path, RunConfig]:
    """The config file picked, read (the page stops with a message when none can be read)."""
    configs = sorted((catalog.REPO / "configs").glob("*.yaml"))
    if not configs:
        st.error(f"No config files in {catalog.REPO / 'configs'}; add a YAML config (see configs/shapes_gap.yaml in the repo).")
        st.stop()
    names = [p.name for p in configs]
    st.caption("**shapes_<method>.yaml** train a small network from scratch on procedural shapes (minutes on a CPU). "
               "**real_<method>.yaml** are the real-photo recipes, one per method (ImageNet-pretrained "
               "EfficientNet-Lite0, 224 px): they train on their own data set or on **your image folder or CSV** "
               "(below, once one is picked).")
    config_path = st.selectbox("Config file", configs, key="train_config", format_func=config_label,
                               index=names.index("shapes_gap.yaml") if "shapes_gap.yaml" in names else 0)
    try:
        base = RunConfig.load(config_path)
    except (ValueError, TypeError, OSError) as err:
        st.error(f"{config_path.name} cannot be read: {err}")
        st.stop()
    if base.description:
        st.caption(base.description)
    return config_path, base


def config_data(data) -> tuple[str, bool]:
    """(what the config's own data is, whether it is here)."""
    if data.name == PROCEDURAL:
        return "procedural shapes, generated on the fly", True
    if data.name == "csv" and data.csv:
        where = Path(data.csv) if Path(data.csv).is_absolute() else catalog.REPO / data.csv
        return f"the CSV {data.csv}", where.is_file()
    where = Path(data.root or "") if Path(data.root or "").is_absolute() else catalog.REPO / (data.root or "")
    return f"{data.name} at {data.root or '(no data.root set)'}", bool(data.root) and where.exists()


def data_ui(base: RunConfig) -> list[str] | None:
    """Where the images come from: the config's own data, or the user's folder or CSV (the real_<method>.yaml
    recipes are made for that). The overrides it needs, or None (after saying why) when it cannot train."""
    own, here = config_data(base.data)
    sources = {"config": f"The config's data: {own}" + ("" if here else " — not found on this machine"),
               "folder": "My image folder: one sub-folder per class (root/<class>/<image>, or nested deeper)",
               "csv": "My CSV: a path column and a label column (optionally split: train/test/query/gallery)"}
    source = st.radio("Train on", list(sources), format_func=sources.get, key="train_data_source")
    if source == "config":
        if not here:
            st.warning(f"{own} is not on this machine, so this config cannot train as it is: pick your own folder "
                       f"or CSV above, or get the data first (docs/datasets.md).")
            return None
        return []
    if base.data.name == PROCEDURAL:
        st.caption("The shapes configs train a small network from scratch on 64-px drawings; for photos pick a "
                   "real_<method>.yaml recipe (ImageNet-pretrained EfficientNet-Lite0).")
    folder = source == "folder"
    given = st.text_input("Image folder" if folder else "CSV file", key=f"train_data_{source}",
                          placeholder="/data/my_images" if folder else "/data/my_images/labels.csv",
                          help=("classes are the sub-folders; the first half of the sorted classes train, the rest "
                                "test" if folder else "paths relative to the CSV's folder; without a split column "
                                "the first half of the sorted classes train, the rest test"))
    if not given.strip():
        st.info(f"Give the path of your {'image folder' if folder else 'CSV file'} to train on it.")
        return None
    path = Path(given.strip()).expanduser().resolve()
    if not (path.is_dir() if folder else path.is_file()):
        st.error(f"{path} is not {'a folder' if folder else 'a file'} on this machine (the server's); give the "
                 f"path as the server sees it.")
        return None
    quoted = json.dumps(str(path))  # read as a YAML string whatever the path looks like
    if folder:
        return ["data.name=folder", f"data.root={quoted}", "data.csv=null"]
    return ["data.name=csv", f"data.csv={quoted}", "data.root=null", "data.csv_label_column=label",
            "data.csv_split_column=split"]


@st.cache_data(show_spinner=False, max_entries=64)
def _frozen_overrides(path: str, mtime: float) -> list[str]:
    return frozen_backbone_overrides(RunConfig.load(path))


def mode_ui(config_path: Path, base: RunConfig) -> tuple[list[str], bool]:
    """How a photo recipe trains (frozen backbone by default without a GPU): (its overrides, whether it is the
    quick fine-tuning, which sets the epochs). Nothing to choose for the shapes or an already frozen config."""
    import torch

    if base.data.name == PROCEDURAL or not base.model.pretrained or base.model.freeze_backbone:
        return [], False
    gpu = torch.cuda.is_available()
    mode = st.radio("How to train", list(MODES), index=len(MODES) - 1 if gpu else 0, format_func=MODES.get,
                    key="train_mode",
                    help=f"Frozen: one pass of the backbone over the images (cached on disk, shared by every head on "
                         f"the same folder), then the head's {base.train.epochs} epochs in seconds each; a block inside "
                         f"the backbone moves onto its last stage's output. Fine-tuning trains the backbone too: "
                         f"better with a GPU, hours without one.")
    if mode == "frozen":
        return _frozen_overrides(str(config_path), config_path.stat().st_mtime), False
    return (QUICK, True) if mode == "quick" else ([], False)


def form_ui(config_path: Path, base: RunConfig, quick: bool = False) -> dict | None:
    """The settings form; its values once submitted, else None."""
    stem = config_path.stem
    with st.form(f"train_form_{stem}"):
        c1, c2, c3 = st.columns(3)
        # its own key when quick: ticking the box sets the epochs, unticking brings back the config's
        epochs = c1.number_input("Epochs", 1, 1000, QUICK_EPOCHS if quick else int(base.train.epochs),
                                 key=f"train_epochs_{stem}{'_quick' if quick else ''}")
        lr = c1.number_input("Learning rate", 1e-6, 1.0, float(base.train.lr), format="%.0e", step=1e-4, key=f"train_lr_{stem}")
        heads = HEADS.names()
        head = c2.selectbox("Head", heads, index=heads.index(base.model.head) if base.model.head in heads else 0,
                            key=f"train_head_{stem}")
        backbones = BACKBONES.names()
        backbone = c2.selectbox("Backbone", backbones, key=f"train_backbone_{stem}",
                                index=backbones.index(base.model.backbone) if base.model.backbone in backbones else 0)
        seed = c3.number_input("Seed", 0, 2**31 - 1, int(base.train.seed), key=f"train_seed_{stem}")
        # the default name is fixed once per session: a default that changed every minute would reset the field
        default_name = st.session_state.setdefault(f"train_default_name_{stem}", f"{stem}_{time.strftime('%m%d_%H%M')}")
        name = c3.text_input("Run name (output folder)", default_name, key=f"train_name_{stem}")
        with st.expander("Advanced"):
            root = st.text_input("Save runs in", os.environ.get("METRICLENS_TRAIN_ROOT", str(catalog.DEFAULT_RUNS)),
                                 key=f"train_root_{stem}", help="a folder the sidebar lists (checkpoints/ by default)")
            extra = st.text_input("More overrides (section.key=value, space separated)", "", key=f"train_extra_{stem}",
                                  placeholder="data.max_per_class=8 train.batch_size=32")
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return None
    return dict(epochs=epochs, lr=lr, head=head, backbone=backbone, seed=seed, name=name, root=root, extra=extra)


def start_job(board, owner: str, config_path: Path, base: RunConfig, form: dict, data: list[str]) -> None:
    """Check the form and start the training child (or say what is wrong); `data`: data_ui's overrides."""
    name, extra = form["name"], form["extra"]
    problem = jobs.validate_name(name)
    out = Path(form["root"]).expanduser() / name
    overrides = data + [f"train.lr={form['lr']:g}", f"model.backbone={form['backbone']}"]
    if form["head"] != base.model.head:  # the config's head arguments belong to its own head
        overrides += [f"model.head={form['head']}", "model.head_args={}"]
    overrides += extra.split()
    bad = [o for o in extra.split() if "=" not in o]
    if problem:
        st.error(f"Run name {name!r}: {problem}")
        return
    if bad:
        st.error(f"Overrides must look like section.key=value; these do not: {', '.join(bad)}")
        return
    try:
        RunConfig.load(config_path).with_overrides(overrides)  # fail here, not in the child, on typos
    except (ValueError, TypeError) as err:
        st.error(f"These settings do not make a valid config: {err}")
        return
    if out.exists() and (out / CONFIG).exists():
        st.info(f"{out} exists: training resumes it if its config matches, and says so in the log if not.")
    command = jobs.train_command(str(config_path), str(out), form["epochs"], form["seed"], overrides)
    try:
        board.start(jobs.TrainJob(name, out, command, owner))
    except jobs.JobLimit as err:
        st.error(str(err))
        return
    if out.parent.resolve() not in catalog.run_roots():  # so the sidebar lists the new run
        st.session_state[session.EXTRA_ROOT] = str(out.parent)


def history_frame(run_dir: Path) -> pd.DataFrame | None:
    try:
        frame = pd.read_csv(run_dir / HISTORY)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    return frame if len(frame) else None


def progress_panel(job) -> None:
    """One bar per phase (all epochs, then embedding, nearest neighbours + k-means, ...) with its ETA, from
    the run's progress.jsonl."""
    bars = job.progress_bars()
    if not bars:
        st.progress(0.0, text="starting… (building the data set and the model)")
    for bar in bars:
        st.progress(bar.fraction, text=bar.text)


def job_panel(key: str) -> None:
    board, owner = background.training_jobs(), session.session_owner()
    job = board.jobs[key]
    status = job.status
    icon = {"running": ":material/hourglass_top:", "finished": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/stop_circle:"}[status]
    st.markdown(f"#### {icon} {job.name} — {status}")
    st.caption(f"`python {' '.join(job.command[1:])}` · log: `{job.log_path}`")
    if status == "running":
        progress_panel(job)
        if st.button("Cancel (keeps the completed epochs)", key=f"cancel_{key}"):
            with st.spinner("Stopping after the current step…"):
                board.cancel(owner, key)
            st.rerun(scope="app")
    elif status == "finished":
        st.success(f"Done: **{job.name}** is in the run list in the sidebar.")
        if st.button("Explore it →", key=f"explore_{key}"):
            st.session_state[session.RUN] = str(job.run_dir.resolve())
            st.switch_page(ui.PAGES["explore"])
    elif status == "cancelled":
        st.warning(f"Cancelled. {job.kept or jobs.kept_after_stop(job.run_dir)}")
    else:
        st.error(f"Training stopped with exit code {job.returncode}; the log below says why.")
    if status != "running" and st.button("Run again / resume", key=f"again_{key}"):
        try:
            board.restart(owner, key)
        except jobs.JobLimit as err:
            st.error(str(err))
        else:
            st.rerun(scope="app")
    history = history_frame(job.run_dir)
    if history is not None:
        losses = [c for c in history.columns if c not in ("epoch", "seconds", "lr") and not c.startswith(("val_", "test_"))]
        scores = [c for c in history.columns if c.startswith(("val_", "test_"))]
        h1, h2 = st.columns(2)
        h1.plotly_chart(figures.history_curves(history, losses, "training loss"), key=f"loss_{key}", width="stretch")
        h2.plotly_chart(figures.history_curves(history, scores, "validation metrics"), key=f"val_{key}", width="stretch")
        if (history["epoch"] < 0).any():
            st.caption("Epoch −1: the starting weights, scored before training (the run keeps them if no epoch "
                       "beats them).")
    with st.expander("Log", expanded=status == "failed"):
        st.code(job.log_tail() or "(empty)", language=None)
    if status != "running" and not job.announced:
        job.announced = True  # one full rerun so the sidebar lists the new run
        st.rerun(scope="app")


def jobs_ui(board, owner: str) -> None:
    """Other sessions' jobs as a count, this session's as live panels."""
    busy = board.others_running(owner)
    if busy:  # no names, folders or buttons: another session's job is none of this one's business
        st.info(f"The machine is busy: {len(busy)} training job(s) started by other sessions are running "
                f"(the server runs at most {board.limit} at once).")
    mine = board.mine(owner)
    if mine:
        st.subheader("Your jobs")
    for key in sorted(mine, key=lambda k: -mine[k].started):
        live = mine[key].status == "running"
        # only running jobs poll; a fragment reruns alone, so the form above keeps its inputs
        st.fragment(job_panel, run_every=2.0 if live else None)(key)
    if not mine:
        st.info("Pick a config, adjust the fields and start. Training runs in the background; you can use the other "
                "pages meanwhile and come back here to follow it. A new run is listed in the sidebar at once (as "
                "unfinished) and can be explored when it finishes.")


def main() -> None:
    st.title("Train a model")
    if session.teaching():  # app.py leaves the page out of the navigation; this guards a direct call
        st.info("Training is off in teaching mode (the dashboard is shared read-only).")
        st.stop()
    config_path, base = config_ui()
    data = data_ui(base)
    mode, quick = mode_ui(config_path, base)
    form = form_ui(config_path, base, quick)
    board, owner = background.training_jobs(), session.session_owner()
    if form is not None:
        if data is None:
            st.error("Choose data this config can train on (above) first.")
        else:
            start_job(board, owner, config_path, base, form, data + mode)
    jobs_ui(board, owner)


main()
