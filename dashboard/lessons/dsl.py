"""Lesson: dynamic subspace learners; a replay of a run's learner growth log."""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from core.models.heads.dsl import EVENTS_FILE
from dashboard import catalog, figures, learn_demos, ui
from dashboard.lessons import LessonContext, register_lesson


def replay(run: str, payload: dict) -> None:
    """The growth log up to a chosen epoch, opening on the epoch whose weights the run kept (metrics.json
    best_epoch), not on the last one logged."""
    epochs = payload["epochs"]
    best = catalog.summary(run).get("best_epoch")
    logged = [e["epoch"] for e in epochs]
    opening = logged.index(best) if best in logged else len(epochs) - 1
    step = ui.int_slider(st, "Replay up to logged epoch", 0, len(epochs) - 1, opening,
                         key=f"learn_dsl_epoch_{Path(run).name}",
                         help=f"opens on epoch {logged[opening]}, the one whose weights the run kept")
    now = learn_demos.dsl_state_at(payload, step)
    st.plotly_chart(figures.learner_partition(now["learners"]), key="learn_dsl_bar", width="stretch")
    metric = payload.get("growth_metric", "nmi")
    st.plotly_chart(figures.metric_curve(logged, [e.get(metric) for e in epochs], f"val {metric}", now["epoch"]),
                    key="learn_dsl_curve", width="stretch")
    kept_note = " (the kept weights)" if now["epoch"] == best else ""
    st.caption(f"Epoch {now['epoch']}{kept_note}: {len(now['learners'])} learner(s), phase {now['row'].get('phase', '?')}; "
               f"{len(now['events'])} split(s) so far. {now['row'].get('growth', '')}")


@register_lesson("dsl", title="DSL — dynamic subspace learners")
def dsl(ctx: LessonContext) -> None:
    st.markdown("One spatial attention map weights the features before average pooling; the embedding is split into "
                "**subspaces (learners)**, each trained on its own cluster of the data. When validation stops "
                "improving, the last learner **splits**: its most important neurons stay, the rest become a new "
                "learner. The replay below steps through a run's growth log.")
    run = ctx.first_run("shapes_dsl.yaml", "there is no growth log to replay.")
    if run is None:
        return
    events = Path(run) / EVENTS_FILE
    if not events.exists():
        st.info(f"Run {Path(run).name} has no {EVENTS_FILE} (it is written while training).")
        return
    payload = json.loads(events.read_text())
    if payload.get("epochs"):
        replay(run, payload)
    else:
        st.info(f"{events} has no epochs logged yet.")
