"""Explore's item table without Streamlit: which items its filters keep, in which order, and the columns its CSV
export adds. Every step works on whole columns (numpy over the retrieval table's per-item scores and the item
store's categorical codes), never item by item, so a million items filter, sort and export at the speed of a
few array passes; dashboard/explore/item_table.py draws the controls and a page of the rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dashboard.logic import RetrievalTable

# the per-item scores a filter's range or the sort may use: column name -> RetrievalTable attribute
SCORES = {"R-precision": "r_precision", "MAP@R": "map_at_r", "first match rank": "first_match_rank"}
WRONG_TOP1 = "wrong at top-1"
SORTS = ("item", "label", *SCORES)
EXPORT_NEIGHBOURS = 10      # neighbour ids per item in the CSV export


@dataclass(frozen=True)
class Filters:
    """What the table keeps: items whose top-1 is wrong (`wrong_top1`), whose scores lie in closed ranges
    (`ranges`: score -> (low, high); an item without the score, e.g. the only one of its class, is left out), and
    whose fields hold one of the chosen values (`values`: field -> values)."""
    wrong_top1: bool = False
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    values: dict[str, tuple[str, ...]] = field(default_factory=dict)


def score(table: RetrievalTable, name: str) -> np.ndarray:
    return getattr(table, SCORES[name])


def filter_mask(table: RetrievalTable, fields: dict[str, pd.Categorical], filters: Filters,
                within: np.ndarray | None = None) -> np.ndarray:
    """A boolean mask over every item: those `filters` keep, among `within` (ids, e.g. the map's selection) when
    given."""
    n = len(table.relevant)
    keep = np.ones(n, bool)
    if within is not None:
        keep[:] = False
        keep[np.asarray(within, dtype=np.int64)] = True
    if filters.wrong_top1:
        keep &= ~table.top1_correct
    for name, (low, high) in filters.ranges.items():
        values = score(table, name)
        keep &= (values >= low) & (values <= high)      # nan compares False: an item without the score leaves
    for name, chosen in filters.values.items():
        values = fields[name]
        allowed = np.isin(np.asarray(values.categories, dtype=object), list(chosen))
        keep &= allowed[values.codes]                   # one lookup per item, by its value's code
    return keep


def sorted_ids(ids: np.ndarray, by: str, table: RetrievalTable, labels: pd.Categorical,
               descending: bool = False) -> np.ndarray:
    """`ids` ordered by the item number, the label (alphabetically) or a score; ties keep item order; an item
    without the score comes last either way."""
    ids = np.asarray(ids, dtype=np.int64)
    if by == "item":
        return ids[::-1] if descending else ids
    if by == "label":
        rank = np.empty(len(labels.categories), np.int64)       # each label's place in alphabetical order
        rank[np.argsort(np.asarray(labels.categories, dtype=str), kind="stable")] = np.arange(len(rank))
        key = rank[labels.codes[ids]].astype(float)
    else:
        key = np.asarray(score(table, by)[ids], dtype=float)
    key = -key if descending else key
    return ids[np.argsort(np.where(np.isnan(key), np.inf, key), kind="stable")]


def export_columns(table: RetrievalTable, view_ids: np.ndarray, coords: np.ndarray,
                   k: int = EXPORT_NEIGHBOURS) -> dict[str, np.ndarray]:
    """The per-item columns Explore's CSV adds to the items' own (core.item_store.selection_csv): the map's
    coordinates (x, y of the projection shown; empty for an item off an isolated map), top-1 correct, R-precision,
    MAP@R, the first true match's rank, and the ids of the k nearest other items (neighbour_1 nearest)."""
    n = len(table.relevant)
    xy = np.full((n, 2), np.nan, np.float32)
    xy[np.asarray(view_ids, dtype=np.int64)] = coords
    out = {"x": xy[:, 0], "y": xy[:, 1], "top1_correct": np.asarray(table.top1_correct),
           "r_precision": np.asarray(table.r_precision), "map_at_r": np.asarray(table.map_at_r),
           "first_match_rank": np.asarray(table.first_match_rank)}
    for j in range(min(k, table.neighbours.shape[1])):
        out[f"neighbour_{j + 1}"] = table.neighbours[:, j]     # a memory-mapped column: read for the chosen rows only
    return out
