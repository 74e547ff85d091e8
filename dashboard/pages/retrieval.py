"""Retrieval: a query (test item or upload) -> top-k neighbours, per-group retrieval, hardest failures."""
from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import artifacts, counterfactual, figures, item_rows, logic, session, tables, ui
from dashboard.caching import artifact_stamp


def query_source_ui(run: str, n: int, has_model: bool) -> None:
    """A test item (picked or random) or an uploaded image becomes the shared query."""
    source = st.radio("Query", ["A test image", "Upload an image"], horizontal=True, key="retrieval_source",
                      index=1 if st.session_state.get(session.UPLOAD) else 0)
    if source == "Upload an image":
        ui.upload_widget(run, "retrieval_upload", has_model)
        if not st.session_state.get(session.UPLOAD):
            st.info("Upload a PNG or JPEG image to search the test set with it.")
            st.stop()
        return
    st.session_state[session.UPLOAD] = None
    q1, q2 = st.columns([3, 1])
    with q1:
        ui.query_picker(artifacts.artifacts(run), "retrieval")
    if q2.button("Random query", icon=":material/casino:", key="retrieval_random"):
        st.session_state[session.QUERY] = int(np.random.default_rng().integers(n))
        st.rerun()


def neighbours_ui(run: str, art: artifacts.Artifacts, table: logic.RetrievalTable, query: ui.Query, k: int,
                  has_model: bool) -> None:
    """The query, its top-k neighbours (images when the run has them, and always as a table) and a jump to the
    Attention page for one of them."""
    if query.item is not None:
        ids, sims = table.neighbours[query.item, :k], table.similarities[query.item, :k]
    else:
        ids, sims = logic.search(art.embeddings, query.embedding, k)
    left, right = st.columns([1, 5])
    with left:
        if query.item is None or artifacts.has_images(run):
            st.image(figures.enlarge(logic.to_uint8(query.pixels), 160), caption=query.caption, width="stretch")
        else:  # no image to show: the query's own row heads the table
            st.markdown(f"**Query {query.caption}**")
        if query.item is not None:
            true = logic.nearest_true_match(table, art.embeddings, art.labels, query.item)
            rank = logic.rank_of(art.embeddings, query.item, true) if true is not None else "—"
            st.caption(f"R-precision {table.r_precision[query.item]:.2f} · first true match at rank {rank} · "
                       f"{table.relevant[query.item]} same-class items")
    with right:
        st.markdown(f"**Top {k} neighbours** (cosine similarity; ✓ same class, ✗ other class)")
        ok = artifacts.has_images(run) and ui.neighbours_row(run, art, ids, sims, query.label,
                                                              columns=min(8, max(k, 4)))
        neighbour_table_ui(run, art, query, ids, sims)
    if ok and has_model:
        e1, e2 = st.columns([3, 1])
        neighbour = e1.selectbox("Explain the similarity to", ids.tolist(), key="retrieval_explain_target",
                                 format_func=lambda i: ui.item_caption(art, int(i)))
        if e2.button("Explain in Attention →", key="retrieval_explain", type="primary"):
            ui.go_to("attention", query.item, **{"attention_neighbour": int(neighbour)})


def neighbour_table_ui(run: str, art: artifacts.Artifacts, query: ui.Query, ids, sims) -> None:
    """The top-k as a table (the query's own row first when it is an item); a picked row becomes the query."""
    rows = item_rows.neighbour_rows(art, ids, sims, query.label, artifacts.listed_fields(run), query=query.item)
    which = "upload" if query.item is None else query.item
    picked = tables.item_table(rows, key=f"retrieval_neighbours_{which}_{len(ids)}")
    if picked is not None and picked != query.item:
        ui.set_query(picked)
        st.rerun()
    st.caption("Select a row to make that item the query." + (" Rank 0 is the query itself." if query.item is not None
                                                               else ""))


def group_retrieval_ui(run: str, art: artifacts.Artifacts, query: ui.Query, k: int) -> None:
    st.subheader("Retrieval in each group's subspace")
    if len(art.groups) < 2:
        st.caption("This model's embedding is a single group, so there is no subspace to search separately. "
                   "Heads with groups (e.g. attentive grouping, dynamic subspaces) get one row per group here.")
        return
    st.caption("Each row searches with only that group's dimensions (re-normalised within the group): "
               "what each group alone considers similar.")
    tabs = st.tabs([f"group {g} (dims {s.start}–{s.stop - 1})" for g, s in enumerate(art.groups)])
    for tab, group in zip(tabs, art.groups):
        with tab:
            gids, gsims = logic.group_knn(art.embeddings, query.embedding, group, k, exclude=query.item)
            ui.neighbours_row(run, art, gids, gsims, query.label, columns=min(8, max(k, 4)))


@st.cache_data(show_spinner=False, max_entries=8)
def _failures(run: str, stamp: float):
    """The run's hardest failures and their table: the same for every query, so once per artifacts version (each
    row ranks its true match among every item: a pass over a million embeddings per row)."""
    art, table = artifacts.artifacts(run), artifacts.retrieval(run)
    failures = logic.hardest_failures(table, 8)
    return failures, item_rows.failure_rows(art, table, failures, artifacts.listed_fields(run))


def failures_ui(run: str, art: artifacts.Artifacts, table: logic.RetrievalTable, has_model: bool) -> None:
    st.subheader("Hardest failures")
    failures, rows = _failures(run, artifact_stamp(run))
    if not len(failures):
        st.success("No query has a wrong top-1 neighbour.")
        return
    st.caption("Queries whose top-1 neighbour has another class, lowest R-precision first: the wrong top-1, the "
               "nearest item of the query's own class and where it ranks. Select a row to make that failure the "
               "query." + (" **Explain** opens it on the Attention page against its wrong top-1." if has_model else ""))
    picked = tables.item_table(rows, key=f"retrieval_failures_{ui.query_item(len(art.labels))}", pick_column="query")
    if picked is not None:
        ui.set_query(picked)
        st.rerun()
    if not artifacts.has_images(run):
        return
    for position, f in enumerate(failures):
        wrong, true = int(table.neighbours[f, 0]), logic.nearest_true_match(table, art.embeddings, art.labels, int(f))
        images = ui.images_or_error(run, [f, wrong] + ([true] if true is not None else []))
        if images is None:
            break
        cols = st.columns([1, 1, 1, 4])
        cols[0].image(figures.enlarge(images[0], 96), caption=f"query {ui.item_caption(art, int(f))}", width="stretch")
        cols[1].image(figures.enlarge(images[1], 96),
                      caption=f"top-1 ✗ {ui.item_caption(art, wrong, float(table.similarities[f, 0]))}", width="stretch")
        if true is not None:
            cols[2].image(figures.enlarge(images[2], 96), caption=f"nearest ✓ {ui.item_caption(art, true)}",
                          width="stretch")
        true_rank = logic.rank_of(art.embeddings, int(f), true) if true is not None else "—"
        cols[3].markdown(f"R-precision **{table.r_precision[f]:.2f}** · first true match at rank **{true_rank}** "
                         f"of {len(art.labels) - 1}")
        if has_model and cols[3].button("Explain →", key=f"failure_{position}"):
            ui.go_to("attention", int(f), **{"attention_neighbour": wrong})


def main() -> None:
    st.title("Retrieval")
    run = ui.require_run()
    model, _, art = ui.load_or_stop(run)
    table = artifacts.retrieval(run)
    query_source_ui(run, len(art.labels), has_model=model is not None)
    query = ui.current_query(run, art)
    if query is None:
        st.stop()
    k = ui.int_slider(st, "Neighbours (k)", 1, min(32, table.neighbours.shape[1]), 8, key="retrieval_k")
    neighbours_ui(run, art, table, query, k, has_model=model is not None)
    counterfactual.rerank_ui(run, model, art, query, k, "retrieval")
    group_retrieval_ui(run, art, query, k)
    failures_ui(run, art, table, has_model=model is not None)


main()
