"""Train: a form over a config -> `python -m core train` in a subprocess, with live progress and curves.

A job belongs to the browser session that started it: only that session sees its panel and may
cancel or restart it; others see that the machine is busy. Not part of the teaching mode."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

import core.models.embedder  # noqa: F401  (registers every backbone and head)
from core.config import RunConfig
from core.registry import BACKBONES, HEADS
from core.run_dir import CONFIG, HISTORY
from dashboard import figures, jobs, state, ui


def config_ui() -> tuple[Path, RunConfig]:
    """The config file picked, read (the page stops with a message when none can be read)."""
    configs = sorted((state.REPO / "configs").glob("*.yaml"))
    if not configs:
        st.error(f"No config files in {state.REPO / 'configs'}; add a YAML config (see configs/shapes_gap.yaml in the repo).")
        st.stop()
    names = [p.name for p in configs]
    config_path = st.selectbox("Config file", configs, key="train_config", format_func=lambda p: p.name,
                               index=names.index("shapes_gap.yaml") if "shapes_gap.yaml" in names else 0)
    try:
        base = RunConfig.load(config_path)
    except (ValueError, TypeError, OSError) as err:
        st.error(f"{config_path.name} cannot be read: {err}")
        st.stop()
    if base.description:
        st.caption(base.description)
    return config_path, base


def form_ui(config_path: Path, base: RunConfig) -> dict | None:
    """The settings form; its values once submitted, else None."""
    stem = config_path.stem
    with st.form(f"train_form_{stem}"):
        c1, c2, c3 = st.columns(3)
        epochs = c1.number_input("Epochs", 1, 1000, int(base.train.epochs), key=f"train_epochs_{stem}")
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
            root = st.text_input("Save runs in", os.environ.get("METRICLENS_TRAIN_ROOT", str(state.DEFAULT_RUNS)),
                                 key=f"train_root_{stem}", help="a folder the sidebar lists (checkpoints/ by default)")
            extra = st.text_input("More overrides (section.key=value, space separated)", "", key=f"train_extra_{stem}",
                                  placeholder="data.max_per_class=8 train.batch_size=32")
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return None
    return dict(epochs=epochs, lr=lr, head=head, backbone=backbone, seed=seed, name=name, root=root, extra=extra)


def start_job(board, owner: str, config_path: Path, base: RunConfig, form: dict) -> None:
    """Check the form and start the training child (or say what is wrong)."""
    name, extra = form["name"], form["extra"]
    problem = jobs.validate_name(name)
    out = Path(form["root"]).expanduser() / name
    overrides = [f"train.lr={form['lr']:g}", f"model.backbone={form['backbone']}"]
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
        board.start(owner, name, out, command)
    except jobs.JobLimit as err:
        st.error(str(err))
        return
    if out.parent.resolve() not in state.run_roots():  # so the sidebar lists the new run
        st.session_state[state.EXTRA_ROOT] = str(out.parent)


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
    board, owner = state.training_jobs(), state.session_owner()
    job = board.jobs[key]
    status = job.status
    icon = {"running": ":material/hourglass_top:", "finished": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/stop_circle:"}[status]
    st.markdown(f"#### {icon} {job.name} — {status}")
    st.caption(f"`{' '.join(job.command[1:])}` · log: `{job.log_path}`")
    if status == "running":
        progress_panel(job)
        if st.button("Cancel (keeps the completed epochs)", key=f"cancel_{key}"):
            with st.spinner("Stopping after the current step…"):
                board.cancel(owner, key)
            st.rerun(scope="app")
    elif status == "finished":
        st.success(f"Done: **{job.name}** is in the run list in the sidebar.")
        if st.button("Explore it →", key=f"explore_{key}"):
            st.session_state[state.RUN] = str(job.run_dir.resolve())
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
        losses = [c for c in history.columns if c not in ("epoch", "seconds") and not c.startswith(("val_", "test_"))]
        scores = [c for c in history.columns if c.startswith(("val_", "test_"))]
        h1, h2 = st.columns(2)
        h1.plotly_chart(figures.history_curves(history, losses, "training loss"), key=f"loss_{key}", width="stretch")
        h2.plotly_chart(figures.history_curves(history, scores, "validation metrics"), key=f"val_{key}", width="stretch")
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
    if state.teaching():  # app.py leaves the page out of the navigation; this guards a direct call
        st.info("Training is off in teaching mode (the dashboard is shared read-only).")
        st.stop()
    config_path, base = config_ui()
    form = form_ui(config_path, base)
    board, owner = state.training_jobs(), state.session_owner()
    if form is not None:
        start_job(board, owner, config_path, base, form)
    jobs_ui(board, owner)


main()
