"""The Explore page's per-item logic: fields to colour or size by, search, neighbours, export, and the
selection and colouring in a link. No Streamlit here (testable on its own); dashboard/artifacts.py caches.
"""
from __future__ import annotations

import re
from pathlib import PurePath

import numpy as np

from dashboard.figures import NAMED_COLOURS, NAMED_SYMBOLS

BASE_KEYS = ("split", "index", "path", "class_name")     # what every run's items.json holds
# continuous fields: colour on a scale, or marker size
SCORES = {"R-precision": "r_precision", "MAP@R": "map_at_r"}
QUERY_SIMILARITY = "similarity to the query"


def name_attributes(class_names) -> dict[str, np.ndarray]:
    """Attributes spelled in the class names themselves, when every name carries one: a colour word
    ("green circle" -> colour green) and a shape word (-> shape circle). The shapes set names its
    classes so; a folder of "red_car" / "blue_car" gets a colour too."""
    names = np.asarray(class_names, dtype=str)
    uniq, inverse = np.unique(names, return_inverse=True)
    out = {}
    for field, words in (("colour", NAMED_COLOURS), ("shape", NAMED_SYMBOLS)):
        found = []
        for name in uniq.tolist() if len(uniq) > 1 else []:
            found.append(next((t for t in name.lower().replace("_", " ").split() if t in words), None))
            if found[-1] is None:   # every name must carry one: stop at the first without (SOP: at once)
                break
        if found and found[-1] is not None and len(set(found)) > 1:
            out[field] = np.asarray(found)[inverse]
    return out


def categorical_fields(items: list[dict], class_names) -> dict[str, np.ndarray]:
    """Field name -> one value per item, for 'Colour by' and search: class, split (when there are
    several), every other scalar key of items.json (an imported run's metadata columns) and the
    attributes in the class names. A field with one value, or a distinct value per item (an id or
    a file name), colours nothing and is left out (search still reads file names)."""
    n = len(items)
    out = {"class": np.asarray(class_names, dtype=str)}
    splits = [str(it.get("split", "")) for it in items]
    if len(set(splits)) > 1:
        out["split"] = np.asarray(splits)
    extra = [k for k in dict.fromkeys(k for it in items[:1000] for k in it) if k not in BASE_KEYS]
    for key in extra:
        values = ["" if it.get(key) is None else str(it.get(key)) for it in items]
        if 1 < len(set(values)) < max(2, n // 2) and all(
                isinstance(it.get(key), (str, int, float, bool, type(None))) for it in items[:1000]):
            out[key] = np.asarray(values)
    for key, values in name_attributes(out["class"]).items():
        out.setdefault(key, values)
    return out


def search_text(items: list[dict], fields: dict[str, np.ndarray]) -> np.ndarray:
    """Per item the lower-case text a search reads: '#id', every field value, the file name and its
    folder (never the rest of the path: '/work/shared/...' would match 'red')."""
    columns = [[value.lower() for value in values.tolist()] for values in fields.values()]
    files = [f"{p.parent.name}/{p.name}".lower() if p else "" for p in
             (PurePath(str(it["path"])) if it.get("path") else None for it in items)]
    return np.asarray([" | ".join((f"#{i}", *row)) for i, row in enumerate(zip(*columns, files))])


def search(haystack: np.ndarray, text: str) -> np.ndarray:
    """Ids of the items whose text holds every word of `text` (case-insensitive; '#12' is item 12)."""
    words = [w for w in re.split(r"[\s,]+", str(text).lower().strip()) if w]
    if not words:
        return np.zeros(0, int)
    keep = np.ones(len(haystack), bool)
    for word in words:
        if re.fullmatch(r"#\d+", word):
            keep &= np.char.startswith(haystack, word + " ")
        else:
            keep &= np.char.find(haystack, word) >= 0
    return np.flatnonzero(keep)


# ---- neighbours of one item ---------------------------------------------------------------------
def neighbour_index(embeddings: np.ndarray):
    """Exact cosine search over the (unit) embeddings in place (core.neighbours.ExactSearch: faiss's brute force,
    the kernel of IndexFlatIP, without the index's copy of every embedding: half a gigabyte at 1M × 128)."""
    from core.neighbours import ExactSearch
    return ExactSearch(embeddings)


def neighbours(index, embeddings: np.ndarray, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other items of `item` (ids, cosine similarities), best first."""
    query = np.ascontiguousarray(embeddings[[item]], dtype=np.float32)
    sims, ids = index.search(query, min(k + 1, index.ntotal))
    keep = (ids[0] != item) & (ids[0] >= 0)
    return ids[0][keep][:k], sims[0][keep][:k]


# ---- the selection in a link ----------------------------------------------------------------------
MAX_LINK_CHARS = 2000   # longer selections are left out of the link (browsers and chat apps cut long URLs)


def encode_ids(ids) -> str:
    """Sorted ids as runs: [1, 2, 3, 7] -> '1-3,7'."""
    ids = np.unique(np.asarray(ids, dtype=int))
    if not len(ids):
        return ""
    breaks = np.flatnonzero(np.diff(ids) != 1)
    starts, ends = ids[np.r_[0, breaks + 1]], ids[np.r_[breaks, len(ids) - 1]]
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in zip(starts, ends))


class LinkError(ValueError):
    """A link value that cannot be used; the message says what is allowed."""


def shown_safely(value: str, limit: int = 40) -> str:
    """A link value as it may be echoed in a message: letters, digits and a few marks only (no markdown,
    HTML or link can ride along), cut short."""
    text = re.sub(r"[^A-Za-z0-9 _.,@#-]", "?", str(value))
    return text[:limit] + ("…" if len(text) > limit else "")


def decode_ids(text: str, n: int) -> np.ndarray:
    """'1-3,7' -> [1, 2, 3, 7], each id in 0..n-1; LinkError for anything else."""
    text = str(text).strip()
    if len(text) > MAX_LINK_CHARS or not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", text):
        raise LinkError(f"sel={shown_safely(text)!r} is not a list of item numbers such as 3,7-12")
    keep = np.zeros(n, bool)   # a mask, not a list of ranges: '0-99999,0-99999,...' costs no more than once
    for part in text.split(","):
        a, _, b = part.partition("-")
        lo, hi = int(a), int(b or a)
        if hi < lo or hi >= n:
            raise LinkError(f"sel={shown_safely(text)!r} names items outside this run's 0–{n - 1}")
        keep[lo:hi + 1] = True
    return np.flatnonzero(keep)
