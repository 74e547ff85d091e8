"""Compare: two runs on the same test data, side by side."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import figures, logic, state, ui

st.title("Compare two runs")
run_a = ui.require_run()
others = [r for r in state.discover_runs() if r["path"] != run_a and r["complete"]]
if not others:
    st.info("Comparing needs a second finished run. Train one on the **Train** page (e.g. the same config with "
            "another seed or head), or add a folder of runs in the sidebar.")
    st.stop()
paths = [r["path"] for r in others]
labels = {r["path"]: r["name"] for r in others}
# a run named in the link (or picked earlier) that is not a finished, listed run is said, never replaced
# silently by another one: B stays empty until the user picks it
missing = st.session_state.pop("_deep_link_missing_compare", None)
wanted = st.session_state.get(state.COMPARE)
if missing is None and wanted not in (None, run_a) and wanted not in paths:
    missing = wanted
if missing is not None:
    st.warning(f"Run B {Path(str(missing)).name[:80]!r} is not a finished run in the run list, so nothing is "
               f"compared yet. Pick run B below.")
    st.session_state[state.COMPARE] = None
    st.session_state["_compare_wait"] = True
elif st.session_state.get(state.COMPARE) not in paths and not st.session_state.get("_compare_wait"):
    st.session_state[state.COMPARE] = paths[0]  # first visit, or B became the sidebar run: the first other run
st.session_state["compare_widget"] = st.session_state[state.COMPARE]


def chose() -> None:
    st.session_state[state.COMPARE] = st.session_state["compare_widget"]
    st.session_state["_compare_wait"] = False


st.selectbox("Compare the sidebar run (A) with (B)", paths, key="compare_widget", format_func=labels.get,
             on_change=chose, placeholder="pick run B")
if st.session_state[state.COMPARE] not in paths:
    st.info("Pick run B above to compare it with the sidebar run.")
    st.stop()
run_b = st.session_state[state.COMPARE]

_, _, art_a = ui.load_or_stop(run_a)
_, _, art_b = ui.load_or_stop(run_b)
name_a, name_b = Path(run_a).name, labels[run_b]
if len(art_a.labels) != len(art_b.labels) or not np.array_equal(art_a.labels, art_b.labels):
    st.error(f"**{name_a}** and **{name_b}** were evaluated on different test data ({len(art_a.labels)} vs "
             f"{len(art_b.labels)} items, or other labels), so per-query comparison is meaningless. Pick two runs "
             f"trained on the same data set and split.")
    st.stop()
table_a, table_b = state.retrieval(run_a), state.retrieval(run_b)

# ---- metrics ---------------------------------------------------------------------------------------
summaries = {r["path"]: r for r in state.discover_runs()}
ma, mb = summaries[run_a]["metrics"], summaries[run_b]["metrics"]
keys = [k for k in ma if k in mb]
metrics = pd.DataFrame({"metric": keys, f"A: {name_a}": [ma[k] for k in keys], f"B: {name_b}": [mb[k] for k in keys],
                        "B − A": [mb[k] - ma[k] for k in keys]})
st.dataframe(metrics, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4f") for c in metrics.columns[1:]})

# ---- per-query differences -------------------------------------------------------------------------------
k = ui.int_slider(st, "Top-k for the neighbourhood overlap", 1,
                  min(table_a.neighbours.shape[1], table_b.neighbours.shape[1]), 8, key="compare_k")
rank_a, rank_b = table_a.first_match_rank, table_b.first_match_rank
jaccard = logic.jaccard_topk(table_a.neighbours, table_b.neighbours, k)
h1, h2 = st.columns(2)
h1.plotly_chart(figures.histogram(rank_b - rank_a, "Rank change of the first true match (B − A)",
                                  "rank in B − rank in A (negative: B finds it sooner)"),
                key="compare_rank_hist", width="stretch")
h2.plotly_chart(figures.histogram(jaccard, f"Neighbourhood overlap (Jaccard of top-{k})", "Jaccard", nbins=20),
                key="compare_jaccard_hist", width="stretch")
better, worse = int((rank_b < rank_a).sum()), int((rank_b > rank_a).sum())
st.caption(f"B ranks the first true match sooner for {better} queries and later for {worse}; mean top-{k} overlap "
           f"{jaccard.mean():.2f}. Ranks beyond {table_a.neighbours.shape[1]} count as "
           f"{table_a.neighbours.shape[1] + 1}.")

# ---- the same query in both ---------------------------------------------------------------------
st.subheader("The same query in both runs")
ui.query_picker(art_a, "compare")
q = ui.query_item(len(art_a.labels))
query_img = ui.images_or_error(run_a, [q])
if query_img is None:
    st.stop()
left, right = st.columns([1, 6])
left.image(figures.enlarge(query_img[0], 140), caption=f"query {ui.item_caption(art_a, q)}", width="stretch")
with right:
    for name, run, art, table in [(f"A: {name_a}", run_a, art_a, table_a), (f"B: {name_b}", run_b, art_b, table_b)]:
        st.markdown(f"**{name}** — first true match at rank {table.first_match_rank[q]}, "
                    f"R-precision {table.r_precision[q]:.2f}")
        # eight columns whatever k: with k columns, k = 1 stretched one thumbnail over the whole width
        ui.neighbours_row(run, art, table.neighbours[q, :k], table.similarities[q, :k], int(art.labels[q]),
                          columns=8)

# ---- where they disagree most -------------------------------------------------------------------
st.subheader("Queries where they disagree most")
worst = logic.disagreements(rank_a, rank_b, jaccard, 10)
frame = pd.DataFrame({"query": worst, "class": [art_a.class_names[i] for i in worst],
                      "rank A": rank_a[worst], "rank B": rank_b[worst], f"top-{k} Jaccard": jaccard[worst].round(2)})
event = st.dataframe(frame, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                     key="compare_disagreements")
rows = (event or {}).get("selection", {}).get("rows", []) if hasattr(event, "get") else []
picked = int(worst[rows[0]]) if rows else None
if picked is not None and picked != st.session_state.get("compare_last_pick"):  # apply a new pick once
    st.session_state["compare_last_pick"] = picked
    st.session_state[state.QUERY] = picked
    st.rerun()
st.caption("Select a row to show that query in both runs above.")
