"""Is each map faithful? What the Attention page shows beside its maps (issue 26).

- Beside each map, from the run's faithfulness table when it has one: over the table's test queries, the map's
  deletion AUC against random orders, the sanity check's verdict and its mass on the object (`run_note`).
- Beside each map, on demand ("Test each map on this query"): the deletion test of this query's map on screen
  against the image it is compared with: "hiding the map's top 19 % of cells drops the similarity by 0.41; a
  random 19 % by 0.12" (`core.faithfulness.score_map` with fewer steps than the table, and `drop_at`), cached
  per run, images and map; the random orders are drawn once per pair and grid (one `PairScorer` per pair).
- The run-level table itself (`table_ui`): every explainer of the run side by side, faithful or not against
  the random orders, the sanity check, the mass on the object where there is ground truth, and what that makes
  it ("faithful and on the object", "on the object, not faithful", ...). Computed by `python -m core
  faithfulness` in the background (`background.start_faithfulness`) with a progress bar, and kept in
  RUN_DIR/faithfulness.json, or in .cache/faithfulness/ when the run folder is read-only; a table of other
  weights (the run was retrained) is not shown. Teaching mode shows a table but does not compute one.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from core.faithfulness import Pair, PairScorer, drop_at, score_map
from core.faithfulness_table import faithful, reading, sanity, weights_sha256
from core.progress import read_progress
from core.run_dir import FAITHFULNESS
from dashboard import background, jobs, session
from dashboard.caching import cache_path, digest, mtime, weights_stamp
from dashboard.model_cache import load_model

QUERY_STEPS = 10          # steps of this query's deletion curve (the table's: 16)
SHARE = 0.2               # "hiding the top 20 % ..." (at the curve's nearest step)
TEST_KEY = "attention_test_maps"


# ---- the run-level table ----------------------------------------------------------------------------------
def table_files(run_dir: str) -> list[Path]:
    """Where a run's table may be: in the run folder, or (read-only run folder) in the cache."""
    return [Path(run_dir) / FAITHFULNESS, cache_path("faithfulness", f"{digest(str(run_dir))}.json")]


def output_file(run_dir: str) -> Path:
    """Where a new table is written: the run folder when it can be written, else the cache."""
    inside, cached = table_files(run_dir)
    writable = os.access(run_dir, os.W_OK) and (not inside.exists() or os.access(inside, os.W_OK))
    return inside if writable else cached


@st.cache_data(show_spinner=False, max_entries=64)
def _read(path: str, stamp: float) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@st.cache_data(show_spinner=False, max_entries=64)
def _weights(run_dir: str, stamp: float) -> str | None:
    return weights_sha256(run_dir)


def run_table(run_dir: str) -> tuple[dict | None, str | None]:
    """(the run's newest table of its current weights or None, a note when only a table of other weights exists)."""
    found = sorted((p for p in table_files(run_dir) if p.exists()), key=mtime, reverse=True)
    current, stale = _weights(run_dir, weights_stamp(run_dir)), None
    for path in found:
        result = _read(str(path), mtime(path))
        if result is None or not result.get("explainers"):
            continue
        if result.get("weights_sha256") in (None, current):
            return result, None
        stale = path
    return None, (f"The faithfulness table in {stale} was computed for other weights (the run was trained again "
                  f"since), so it is not shown." if stale else None)


def level_name(level: str) -> str:
    return level.replace("+", " + ").replace("_", " ")


def _two(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table_rows(result: dict) -> list[dict]:
    """One row per map: what it makes the map (faithful and/or on the object), faithful or not against the random
    orders, deletion and insertion AUC (the random orders' in brackets), the mass on the object (where there are
    masks), the sanity check and the randomisation ρ per level, the map's grid."""
    levels, uniform = result.get("randomised", []), result.get("uniform_mass")
    rows = []
    for key, e in result["explainers"].items():       # what it makes the map first: the table is wide
        row = {"map": key, "reading": reading(e, uniform), "faithful?": faithful(e),
               "deletion (random)": f"{_two(e['deletion_auc']['mean'])} ({_two(e['random']['deletion_auc']['mean'])})",
               "insertion (random)": f"{_two(e['insertion_auc']['mean'])} ({_two(e['random']['insertion_auc']['mean'])})"}
        if uniform is not None:
            row["mass on object"] = (e.get("mass_on_object") or {}).get("mean")
        row["sanity check"] = {True: "passes", False: "fails", None: "–"}[sanity(e, levels)["passed"]]
        if levels:
            row["ρ " + " / ".join(level_name(level) for level in levels)] = " / ".join(
                _two(e["randomised_model_spearman"][level]["mean"]) for level in levels)
        row["grid"] = "×".join(map(str, e["grid"]))
        rows.append(row)
    return rows


def queries_said(result: dict) -> str:
    n = result["queries"]
    return f"{n} test quer{'y' if n == 1 else 'ies'}"


def run_note(result: dict | None, key: str) -> str | None:
    """What the run's table says about one map ('<explainer>/<map>' or '<explainer>/<map>[k]'), in a sentence."""
    entry = (result or {}).get("explainers", {}).get(key)
    if entry is None:
        return None
    d, r = entry["deletion_auc"]["mean"], entry["random"]["deletion_auc"]["mean"]
    text = (f"The run's table ({queries_said(result)}): deletion AUC {d:.2f} against {r:.2f} for random orders "
            f"({faithful(entry)}); {sanity(entry, result.get('randomised', []))['text']}")
    mass, uniform = (entry.get("mass_on_object") or {}).get("mean"), result.get("uniform_mass")
    if mass is not None and uniform is not None:
        text += f"; {mass:.0%} of its mass on the object (a uniform map: {uniform:.0%})"
    return text + "."


# ---- this query's deletion test ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Shown:
    """An image a map is tested on or against: its identity (item, or a digest), its model input, what to call it."""
    id: str
    pixels: np.ndarray
    name: str


@st.cache_resource(show_spinner=False, max_entries=64)
def _scorer(run_dir: str, stamp: float, ids: tuple, _pair: Pair) -> PairScorer:
    model, _ = load_model(run_dir)
    return PairScorer(model, _pair)


@st.cache_data(show_spinner=False, max_entries=1024)
def _query_score(run_dir: str, stamp: float, ids: tuple, cell_map: np.ndarray, contrast: bool, _pair: Pair) -> dict:
    score = score_map(_scorer(run_dir, stamp, ids, _pair), cell_map, contrast=contrast, steps=QUERY_STEPS)
    return {"drop": drop_at(score, SHARE), "deletion_auc": score["deletion_auc"],
            "random_deletion_auc": score["random"]["deletion_auc"]}


def query_score(run_dir: str, cell_map: np.ndarray, query: Shown, reference: Shown, true_match: Shown | None = None,
                contrast: bool = False) -> dict:
    """The deletion test of one h×w map of `query` against `reference` (a contrast map: the margin over
    `true_match`): {"drop": drop_at(...), "deletion_auc", "random_deletion_auc"}; ValueError when the two are not
    similar at all (cosine ≤ 0: nothing to delete)."""
    pair = Pair(query.pixels, reference.pixels, None if true_match is None else true_match.pixels)
    ids = (query.id, reference.id, None if true_match is None else true_match.id)
    cells = np.nan_to_num(np.asarray(cell_map, dtype=np.float32))
    return _query_score(run_dir, weights_stamp(run_dir), ids, cells, contrast, pair)


def _moves(value: float, what: str) -> str:
    return f"drops {what} by {value:.2f}" if value >= 0 else f"raises {what} by {-value:.2f}"


def query_note(score: dict, reference: Shown, contrast: bool) -> str:
    d = score["drop"]
    share = f"{d['share']:.0%}"
    what = "the margin over the true match" if contrast else f"the similarity to {reference.name}"
    return (f"This query: hiding the map's top {share} of cells {_moves(d['map'], what)}; a random {share} "
            f"{_moves(d['random'], 'it')} (deletion AUC {score['deletion_auc']:.2f}, random "
            f"{score['random_deletion_auc']:.2f}).")


def testing() -> bool:
    """Whether this session asked for each map's test on the query (kept across page switches)."""
    kept = f"_kept_{TEST_KEY}"
    st.session_state[TEST_KEY] = bool(st.session_state.get(kept, False))

    def changed():
        st.session_state[kept] = st.session_state[TEST_KEY]
    st.toggle("Test each map on this query", key=TEST_KEY, on_change=changed,
              help="hide each map's top cells of the query and watch its similarity drop, against random cells "
                   "(a deletion curve per map: about a second for the first map of an image pair, less for the next)")
    return bool(st.session_state[TEST_KEY])


def map_note_ui(run_dir: str, result: dict | None, key: str | None, cell_map: np.ndarray | None, query: Shown,
                reference: Shown, test: bool, true_match: Shown | None = None, contrast: bool = False,
                label: str = "") -> None:
    """The notes beside one map: this query's test (when asked for) and what the run's table says of `key` (when
    there is a table, and `key`)."""
    notes = []
    if test and cell_map is not None:
        try:
            notes.append(query_note(query_score(run_dir, cell_map, query, reference, true_match, contrast),
                                    reference, contrast))
        except ValueError as err:   # the pair is not similar at all: there is no similarity to delete
            notes.append(f"This query: not tested ({err}).")
    said = run_note(result, key) if key else None
    if said:
        notes.append(said)
    if notes:
        st.caption(f":material/fact_check: **{label or key}**: " + " ".join(notes))


# ---- the table on the page, and its job ------------------------------------------------------------------
COLUMNS = {"mass on object": st.column_config.NumberColumn(format="%.2f")}


def table_ui(run_dir: str) -> dict | None:
    """The run-level table in an expander, with the job that computes it; returns the table (None: none yet)."""
    result, note = run_table(run_dir)
    job = background.faithfulness_job(run_dir)
    running = job is not None and job.status == "running"
    with st.expander("Is each map faithful? The run's faithfulness table", expanded=running, icon=":material/fact_check:"):
        if result is not None:
            uniform = result.get("uniform_mass")
            st.caption(
                f"{queries_said(result)}, each against its top-1 neighbour: the query's cells hidden in the "
                f"map's order ({result['steps']} steps, filled with the image's {result['fill']} colour). Deletion AUC: "
                f"lower is more faithful; insertion: higher; 'faithful' beats the mean of {result['random_orders']} "
                f"random orders on one curve and loses on none. ρ: the map against the same map with those layers "
                f"re-initialised: near 1, the map ignores the model and fails the sanity check. "
                + (f"Mass on object: the share of the map on the object's mask (a uniform map: {uniform:.2f}); "
                   f"'on the object' is twice that or more." if uniform is not None else
                   "This data set has no object masks, so there is no mass on the object."))
            st.dataframe(table_rows(result), hide_index=True, column_config=COLUMNS)
        elif note:
            st.warning(note)
        else:
            st.caption("This run has no faithfulness table yet.")
        job_ui(run_dir, job, result is not None)
    return result


def job_ui(run_dir: str, job: jobs.Job | None, have: bool) -> None:
    if session.teaching():
        if not have:
            st.caption(f"Computing it is off in teaching mode; the host can run `python -m core faithfulness "
                       f"{Path(run_dir).name}`.")
        return
    if job is not None and job.status == "running":
        st.fragment(_progress_ui, run_every=2.0)(run_dir)
        return
    if job is not None and job.status == "failed":
        st.error(f"Computing the table failed: {job.error()}")
    c1, c2 = st.columns([1, 3])
    n_queries = c1.number_input("Test queries", 1, 64, 8, key="faithfulness_queries",
                              help="spread over the test set; each costs every explainer on three models "
                                   "(the run's and two randomised copies)")
    c2.write("")  # lines the button up with the number box
    if c2.button("Compute again" if have else "Compute in the background", key="faithfulness_start",
                 icon=":material/play_arrow:"):
        background.start_faithfulness(run_dir, int(n_queries), output_file(run_dir))
        st.rerun(scope="app")


def _progress_ui(run_dir: str) -> None:
    """The running job's bar; the whole page reruns once it ends (to show the table, or why it failed)."""
    job = background.faithfulness_job(run_dir)
    if job is None or job.status != "running":
        st.rerun(scope="app")
    lines = read_progress(job.progress_path)
    elapsed = time.time() - job.started
    if not lines:
        st.progress(0.0, text=f"Starting: loading the model and drawing the first query's maps ({elapsed:.0f} s)…")
        return
    last = lines[-1]
    done, total = last["done"], max(last["total"], 1)
    left = elapsed / done * (total - done) if done else None
    st.progress(min(done / total, 1.0), text=f"{last['message']} ({done}/{total} steps, {elapsed:.0f} s"
                                             + (f", about {jobs.format_eta(left)} left)" if left else ")"))
