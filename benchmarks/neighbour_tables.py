"""What a neighbour or selection table costs the page that draws it (dashboard/item_rows.py, dashboard/tables.py):
building its rows, and Streamlit's serialisation of it with ✓/✗ coloured by a pandas Styler or plain. The Styler's
pass over every cell is why tables.COLOURED_ROWS caps the coloured tables.

    python -m benchmarks.neighbour_tables [--repeats 7]

Input: 5,000 × 128 clustered embeddings with two fields per item (as tests/test_neighbours_browser.py imports them);
the times are the best of --repeats, the variants interleaved, in this one process.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.common import write_results

SIZES = (9, 200, 1000)


def artifacts(n: int = 5000, dim: int = 128, classes: int = 50, seed: int = 24):
    from types import SimpleNamespace
    rng = np.random.default_rng(seed)
    labels = rng.integers(classes, size=n)
    emb = rng.normal(size=(classes, dim))[labels] + 2.0 * rng.normal(size=(n, dim))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    items = [{"split": "test", "index": i, "path": None, "class_name": f"species_{c:02d}", "site": f"site_{i % 7}",
              "specimen": f"S{i:05d}"} for i, c in enumerate(labels)]
    return SimpleNamespace(embeddings=emb, labels=labels, items=items, class_names=[it["class_name"] for it in items])


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    from streamlit import dataframe_util
    from streamlit.elements.lib.pandas_styler_utils import marshall_styler
    from streamlit.proto.Dataframe_pb2 import Dataframe

    from dashboard import item_rows, items, logic
    from dashboard.tables import mark_style

    art = artifacts()
    table = logic.retrieval_table(art.embeddings, art.labels)
    from core.item_store import ItemStore, items_table
    fields = item_rows.listed_fields(ItemStore(items_table(art.items)), items.categorical_fields(art.items, art.class_names))
    rows = []
    for n in SIZES:
        if n <= 9:
            build = lambda: item_rows.neighbour_rows(art, table.neighbours[0, :n - 1], table.similarities[0, :n - 1],
                                                     art.labels[0], fields, query=0)  # noqa: E731
        else:
            build = lambda n=n: item_rows.selection_rows(art, table, np.arange(n), fields)  # noqa: E731
        frame = build()

        def coloured():
            marshall_styler(Dataframe().arrow_data, frame.style.map(mark_style, subset=["same class"]), "x")
            dataframe_util.convert_pandas_df_to_arrow_bytes(frame)

        def plain():
            dataframe_util.convert_pandas_df_to_arrow_bytes(frame)
        timed = {"rows_ms": [], "coloured_ms": [], "plain_ms": []}
        for _ in range(args.repeats):   # interleaved: a busy machine slows every variant alike
            for key, fn in (("rows_ms", build), ("coloured_ms", coloured), ("plain_ms", plain)):
                timed[key].append(best_ms(fn, 1))
        rows.append({"rows": n, "columns": len(frame.columns), **{k: round(min(v), 2) for k, v in timed.items()}})
        print(rows[-1])
    md = ["## Neighbour and selection tables", "",
          "What one table costs a rerun: building its rows (item_rows) and Streamlit's serialisation with ✓/✗ coloured "
          "by a pandas Styler, or plain (dashboard/tables.py colours tables up to `COLOURED_ROWS` rows). 9 rows: a "
          "clicked item and its 8 neighbours; more: a selection's table. Best of "
          f"{args.repeats}, in ms; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs while measured.", "",
          "| rows | columns | build rows | serialise, ✓/✗ coloured | serialise, plain |", "|---|---|---|---|---|"]
    md += [f"| {r['rows']} | {r['columns']} | {r['rows_ms']:.1f} | {r['coloured_ms']:.1f} | {r['plain_ms']:.1f} |"
           for r in rows]
    write_results("neighbour_tables", {"repeats": args.repeats, "results": rows}, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
