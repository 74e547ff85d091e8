"""Items listed as text: a query's neighbours, a selection, the hardest failures. Each is a table whose rows name
the items (number, label, cosine, ✓/✗ same class) and every field the run knows of them (an imported run's CSV
columns, the attributes in the class names, the file name), so a run without images still shows what is near what,
as a list one can sort. No Streamlit here; dashboard/tables.py draws the tables, the same way on every page.

Every table takes its neighbours from the caller (the retrieval table, a search, the neighbour index): where the
neighbours come from can change without changing what a table shows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.logic import RetrievalTable, nearest_true_match, rank_of

SAME, OTHER = "✓", "✗"      # the "same class" column: the item's class is the query's, or another
QUERY_MARK = "query"         # the query's own row in a neighbour table


def listed_fields(store, fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-item columns a table lists after the label: every metadata column of the item store (an imported
    run's CSV columns, also those with a value per item, such as an id), the other fields the page colours by
    (`fields`, e.g. attributes read from the class names; the class itself is the label), and the file name when
    items name files. Whole columns (core.item_store.ItemStore), never item by item."""
    import pyarrow.compute as pc

    out: dict[str, np.ndarray] = {}
    for key in store.metadata_columns:
        out[key] = pc.fill_null(store.table.column(key).cast("string"), "").to_numpy(zero_copy_only=False)
    for key, values in fields.items():
        if key != "class" and key not in out:
            out[key] = np.asarray(values, dtype=object)
    paths = pc.fill_null(store.table.column("path").cast("string"), "")
    if pc.any(pc.greater(pc.utf8_length(paths), 0)).as_py():
        names = pc.struct_field(pc.extract_regex(paths, r"(?P<name>[^/]*)$"), "name")
        out["file"] = names.to_numpy(zero_copy_only=False).astype(object)
    return out


def _same(labels: np.ndarray, ids, label) -> list[str]:
    """✓/✗ per item: its class is `label`'s or another."""
    return [SAME if labels[i] == label else OTHER for i in ids]


def _with_fields(frame: pd.DataFrame, fields: dict[str, np.ndarray], ids) -> pd.DataFrame:
    for name, values in fields.items():
        if name not in frame:     # a field named like a column of the table (e.g. "rank") is not listed twice
            frame[name] = values[np.asarray(ids, dtype=int)] if len(ids) else []
    return frame


def neighbour_rows(art, ids, sims, query_label, fields: dict[str, np.ndarray],
                   query: int | None = None) -> pd.DataFrame:
    """A query's neighbours, best first: rank, item, label, cosine, same class (✓/✗; not for a query without a
    label, e.g. an upload), then `fields` (name -> one value per item of the run). With `query` (an item of the
    run), its own row comes first as rank 0."""
    ids = [int(i) for i in ids]
    sims = [float(s) for s in sims]
    ranks = list(range(1, len(ids) + 1))
    marks = None if query_label is None else _same(art.labels, ids, query_label)
    if query is not None:
        ids, ranks = [int(query), *ids], [0, *ranks]
        marks = None if marks is None else [QUERY_MARK, *marks]
        sims = [float(art.embeddings[query] @ art.embeddings[query]), *sims]
    frame = pd.DataFrame({"rank": ranks, "item": ids, "label": [art.class_names[i] for i in ids], "cosine": sims})
    if marks is not None:
        frame["same class"] = marks
    return _with_fields(frame, fields, ids)


def selection_rows(art, table: RetrievalTable, ids, fields: dict[str, np.ndarray]) -> pd.DataFrame:
    """Items in the order given: item, label, split, its top-1 neighbour (number, label, cosine, ✓/✗ same class),
    its R-precision, MAP@R and the rank of its first true match, then `fields`."""
    ids = np.asarray(ids, dtype=int)
    top1 = table.neighbours[ids, 0]
    frame = pd.DataFrame({"item": ids, "label": [art.class_names[i] for i in ids],
                          "split": art.store.take("split", ids), "top-1": top1,
                          "top-1 label": [art.class_names[i] for i in top1], "cosine": table.similarities[ids, 0],
                          "same class": [SAME if ok else OTHER for ok in table.top1_correct[ids]],
                          "R-precision": table.r_precision[ids], "MAP@R": table.map_at_r[ids],
                          "first match rank": table.first_match_rank[ids]})
    return _with_fields(frame, fields, ids)


def failure_rows(art, table: RetrievalTable, failures, fields: dict[str, np.ndarray]) -> pd.DataFrame:
    """Failed queries, worst first: the query (number, label), its wrong top-1 (number, label, cosine), its nearest
    item of the same class (number, cosine, rank among all others), its R-precision, then the query's `fields`."""
    failures = [int(f) for f in failures]
    wrong = [int(table.neighbours[f, 0]) for f in failures]
    true = [nearest_true_match(table, art.embeddings, art.labels, f) for f in failures]
    frame = pd.DataFrame({
        "query": failures, "label": [art.class_names[f] for f in failures],
        "top-1": wrong, "top-1 label": [art.class_names[w] for w in wrong],
        "cosine": [float(table.similarities[f, 0]) for f in failures],
        "true match": pd.array([t for t in true], dtype="Int64"),
        "true match cosine": [np.nan if t is None else float(art.embeddings[f] @ art.embeddings[t])
                              for f, t in zip(failures, true)],
        "true match rank": pd.array([None if t is None else rank_of(art.embeddings, f, t)
                                     for f, t in zip(failures, true)], dtype="Int64"),
        "R-precision": [float(table.r_precision[f]) for f in failures]})
    return _with_fields(frame, fields, failures)
