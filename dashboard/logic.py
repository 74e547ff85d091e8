"""Plain logic behind the pages: retrieval tables, selections, metrics of subsets, uploads.

No Streamlit here, so every function is testable on its own; `dashboard/artifacts.py` caches the
expensive ones and the pages only render what these return.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError


def knn(query, reference, k, exclude_self):
    """core.evaluate.knn, imported on first use: it pulls in faiss and scikit-learn (seconds on a busy
    machine), which the first paint of the map does not need."""
    from core.evaluate import knn as exact_knn
    return exact_knn(query, reference, k, exclude_self)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000      # e.g. 8000×5000; larger images are almost surely a mistake
MAX_UPLOAD_SIDE = 12_000


class UploadError(ValueError):
    """An uploaded file that cannot be used as a query; the message says why and what to do."""


# ---- retrieval over the run's artifacts ------------------------------------------------------
@dataclass
class RetrievalTable:
    """Leave-one-out retrieval of every item against all others (cosine, exact)."""
    neighbours: np.ndarray         # N×k item ids, best first
    similarities: np.ndarray       # N×k cosine similarities
    hits: np.ndarray               # N×k bool, neighbour shares the query's class (RowHits for saved neighbours)
    relevant: np.ndarray           # N: R, the number of other items of the query's class
    r_precision: np.ndarray        # N (nan where R = 0)
    map_at_r: np.ndarray           # N (nan where R = 0)
    first_match_rank: np.ndarray   # N: 1-based rank of the first true match; k + 1 when not within k

    @property
    def top1_correct(self) -> np.ndarray:
        """The top-1 neighbour shares the query's class: the first true match is at rank 1."""
        return np.asarray(self.first_match_rank) == 1


class RowHits:
    """A saved table's hits (neighbour j of item i shares its class), gathered for the rows asked for
    (`hits[i]`, `hits[ids, 0]`): every page needs a few rows, and gathering a million × k labels at once took
    seconds under load, in the way of the first click after paint."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray):
        self.ids, self.labels = ids, np.asarray(labels)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.ids.shape

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        ids = np.asarray(self.ids[rows])
        hits = (ids >= 0) & (self.labels[np.maximum(ids, 0)] == self.labels[rows][..., None])
        return hits[(Ellipsis, *rest)] if rest else hits


def retrieval_table(embeddings: np.ndarray, labels: np.ndarray) -> RetrievalTable:
    """Every item against all others, as a run saves it (core.neighbours.all_neighbours: exact up to
    EXACT_MAX_ITEMS items, an IVF index above)."""
    from core.neighbours import all_neighbours  # faiss: not needed for the first paint
    return table_from(all_neighbours(embeddings, labels), labels, every_row=True)


def table_from(found, labels: np.ndarray, every_row: bool = False) -> RetrievalTable:
    """The table of a run's saved neighbours (core.neighbours.Neighbours): its lists and per-item scores; its hits
    gathered for the rows asked for (RowHits), or for `every_row` at once (a table just computed, kept on disk)."""
    scores = found.scores
    hits = found.hits(labels) if every_row else RowHits(found.ids, labels)
    return RetrievalTable(np.asarray(found.ids), np.asarray(found.sims), hits,
                          np.asarray(scores["relevant"]), np.asarray(scores["r_precision"]),
                          np.asarray(scores["map_at_r"]), np.asarray(scores["first_match_rank"]))


def save_table(table: RetrievalTable, path) -> None:
    """Write a table whole or not at all (a reader never sees half of one)."""
    from core.io import atomic_write

    def write(tmp):
        with open(tmp, "wb") as fh:   # a file object: np.savez would append .npz to a bare name
            np.savez(fh, **vars(table))
    atomic_write(path, write)


def load_table(path) -> RetrievalTable:
    with np.load(path) as saved:
        return RetrievalTable(**{name: saved[name] for name in saved.files})


def selection_metrics(table: RetrievalTable, selected: np.ndarray) -> dict[str, tuple[float, float]]:
    """R@1 and MAP@R of the selected queries and of the rest (each against the full set)."""
    mask = np.zeros(len(table.relevant), bool)
    mask[np.asarray(selected, dtype=int)] = True
    valid = table.relevant > 0

    def mean(values, m):
        m = m & valid
        return float(np.mean(values[m])) if m.any() else float("nan")
    top1 = table.top1_correct.astype(float)
    return {"R@1": (mean(top1, mask), mean(top1, ~mask)),
            "MAP@R": (mean(table.map_at_r, mask), mean(table.map_at_r, ~mask))}


def hardest_failures(table: RetrievalTable, n: int = 10) -> np.ndarray:
    """Queries whose top-1 is wrong, lowest R-precision first (ties: most confident mistake first)."""
    wrong = np.flatnonzero(~table.top1_correct & (table.relevant > 0))
    order = np.lexsort((-table.similarities[wrong, 0], table.r_precision[wrong]))
    return wrong[order][:n]


def nearest_true_match(table: RetrievalTable, embeddings: np.ndarray, labels: np.ndarray, query: int) -> int | None:
    """The most similar other item of the query's class (searched beyond the table's k if needed)."""
    hits = np.flatnonzero(table.hits[query])
    if len(hits):
        return int(table.neighbours[query, hits[0]])
    same = np.flatnonzero((np.asarray(labels) == labels[query]) & (np.arange(len(labels)) != query))
    if not len(same):
        return None
    return int(same[np.argmax(embeddings[same] @ embeddings[query])])


def rank_of(embeddings: np.ndarray, query: int, item: int) -> int:
    """1-based rank of `item` among every other item, by cosine to the query (exact, beyond any k)."""
    sims = embeddings @ embeddings[query]
    sims[query] = -np.inf
    return int((sims > sims[item]).sum()) + 1


# ---- a multi-channel map (CSA's base maps, grouping's per-group maps) ------------------------------
def channel_spread(maps: np.ndarray) -> np.ndarray:
    """Per channel of a K×h×w map: how far its positive mass spreads around its centre (the mean squared
    distance of a position from the centre of mass, in cells; inf for a channel with no positive mass)."""
    mass = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64)), 0, None)
    total = mass.sum((1, 2))
    p = mass / np.where(total > 0, total, 1)[:, None, None]
    rows, cols = np.indices(mass.shape[1:])
    centre_r = (p * rows).sum((1, 2))[:, None, None]
    centre_c = (p * cols).sum((1, 2))[:, None, None]
    spread = (p * ((rows - centre_r) ** 2 + (cols - centre_c) ** 2)).sum((1, 2))
    return np.where(total > 0, spread, np.inf)


def most_concentrated_channel(maps: np.ndarray) -> int:
    """The channel whose mass is most compact in space (smallest `channel_spread`): the one to show first.
    Not the largest sum (CSA's base maps all sum to 1) nor the lowest entropy or highest peak, which ignore
    where the mass lies: a channel on a few scattered cells of the distractors scores as concentrated as one
    on the object, while a spatial spread prefers the single blob an object makes."""
    return int(np.argmin(channel_spread(maps)))


def channel_shares(maps: np.ndarray) -> np.ndarray:
    """Each channel's share of the map's positive mass (sums to 1; equal for channels normalised alike)."""
    mass = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64)), 0, None).sum((1, 2))
    return mass / mass.sum() if mass.sum() > 0 else np.full(len(mass), 1 / len(mass))


# ---- per-group (subspace) similarity --------------------------------------------------------
def group_terms(query: np.ndarray, other: np.ndarray, groups: list[slice]) -> np.ndarray:
    """Dot products over each group slice; they sum to the cosine when the slices tile the embedding."""
    return np.asarray([float(query[g] @ other[g]) for g in groups])


def dominant_group(embeddings: np.ndarray, neighbour: np.ndarray, groups: list[slice]) -> np.ndarray:
    """Per item, the group contributing most to its similarity with its top-1 neighbour."""
    other = embeddings[neighbour]
    terms = np.stack([(embeddings[:, g] * other[:, g]).sum(1) for g in groups], 1)
    return terms.argmax(1)


def group_knn(embeddings: np.ndarray, query: np.ndarray, group: slice, k: int,
              exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k in one group's subspace (both sides re-normalised within the slice)."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    sims = unit(embeddings[:, group]) @ unit(query[group])
    if exclude is not None:
        sims[exclude] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return order, sims[order]


def search(embeddings: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items for an embedding that is not in the set (e.g. an uploaded image)."""
    sims, idx = knn(query[None].astype(np.float32), embeddings, k, exclude_self=False)
    return idx[0], sims[0]


# ---- comparing two runs on the same items ----------------------------------------------------
def disagreements(rank_a: np.ndarray, rank_b: np.ndarray, jaccard: np.ndarray, n: int = 10) -> np.ndarray:
    """Queries where two runs disagree most: largest |rank change|, then smallest overlap."""
    order = np.lexsort((jaccard, -np.abs(rank_b - rank_a)))
    return order[:n]


def different_items(labels_a, labels_b, store_a, store_b) -> str | None:
    """Why two runs' items cannot be compared one by one, or None when they are the same test items. Labels
    need only agree up to a renaming (an imported run numbers its classes its own way): the same items fall
    into the same classes. Image file names, where both runs have them, must match too. Whole columns (the
    item stores, core.item_store), never item by item."""
    import pyarrow.compute as pc

    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    if len(labels_a) != len(labels_b):
        return f"they hold {len(labels_a)} and {len(labels_b)} test items"
    # a one-to-one renaming: each class of A meets one class of B, and each of B one of A
    _, code_a = np.unique(labels_a, return_inverse=True)
    _, code_b = np.unique(labels_b, return_inverse=True)
    code_a, code_b = code_a.ravel().astype(np.int64), code_b.ravel().astype(np.int64)
    pairs = np.unique(code_a * (code_b.max(initial=0) + 1) + code_b)    # each (class of A, class of B) met
    if len(pairs) != code_a.max(initial=-1) + 1 or len(pairs) != code_b.max(initial=-1) + 1:
        to_b = code_b[np.unique(code_a, return_index=True)[1]]   # each class's partner at its first item
        to_a = code_a[np.unique(code_b, return_index=True)[1]]
        wrong = int(np.argmax((to_b[code_a] != code_b) | (to_a[code_b] != code_a)))
        return f"their items fall into different classes (first at item {wrong}): another data set, split or order"
    names = [pc.struct_field(pc.extract_regex(pc.fill_null(store.table.column("path").cast("string"), ""),
                                              r"(?P<name>[^/]*)$"), "name") for store in (store_a, store_b)]
    if all(pc.all(pc.greater(pc.utf8_length(name), 0)).as_py() for name in names):
        differ = pc.not_equal(*names).to_numpy(zero_copy_only=False)
        if differ.any():
            wrong = int(np.argmax(differ))
            return f"item {wrong} is {names[0][wrong].as_py()} in one run and {names[1][wrong].as_py()} in the other"
    return None


def rank_shift(table_a: RetrievalTable, table_b: RetrievalTable, measure: str) -> np.ndarray:
    """Per query, how much better run B retrieves it than run A (positive: B better): fewer ranks to the
    first true match ("first match rank") or a higher R-precision ("R-precision")."""
    if measure == "first match rank":
        return (table_a.first_match_rank - table_b.first_match_rank).astype(float)
    return table_b.r_precision - table_a.r_precision


# ---- embedding-map helpers ------------------------------------------------------------------
def stratified_sample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """At most `max_points` indices (about), the same share of every class (at least one each), sorted.
    Vectorised: a loop over classes took seconds on 11k SOP classes."""
    labels = np.asarray(labels)
    if len(labels) <= max_points:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]   # by class, shuffled within each class
    by_class = labels[order]
    first = np.flatnonzero(np.r_[True, by_class[1:] != by_class[:-1]])
    counts = np.diff(np.r_[first, len(labels)])
    rank = np.arange(len(labels)) - np.repeat(first, counts)       # position within its class
    take = np.maximum(1, np.round(max_points / len(labels) * counts).astype(int))
    return np.sort(order[rank < np.repeat(take, counts)])


def interleave_classes(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Reorder ids round-robin over their classes, so the first few of a big selection show its variety."""
    ids = np.asarray(ids)
    if not len(ids):
        return ids
    lab = np.asarray(labels)[ids]
    by_class = np.argsort(lab, kind="stable")
    _, first, counts = np.unique(lab[by_class], return_index=True, return_counts=True)
    rank = np.empty(len(ids), int)          # position of each id within its class
    rank[by_class] = np.arange(len(ids)) - np.repeat(first, counts)
    return ids[np.lexsort((lab, rank))]


def decode_customdata(value):
    """Plotly returns customdata as a scalar, a list, or (numpy-backed traces) a {'0': v} dict."""
    if isinstance(value, dict):
        value = value.get("0", next(iter(value.values()), None))
    elif isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


def _polygon_members(coords: np.ndarray, xs, ys) -> np.ndarray:
    from matplotlib.path import Path
    return Path(np.column_stack([xs, ys])).contains_points(coords)


def selected_ids(event, coords: np.ndarray | None = None, use_geometry: bool = False, ids=None) -> np.ndarray:
    """Item ids of a plotly selection event (plain dict in tests, attribute-dict in the app).

    With `use_geometry` (the map shows a sample of the points), box and lasso shapes select
    server-side over the full coordinates, so metrics cover every point inside the shape; `ids` are
    the item ids of those coordinates' rows (default: the row numbers).
    """
    selection = (event or {}).get("selection", {}) if hasattr(event, "get") else {}
    if use_geometry and coords is not None and (selection.get("box") or selection.get("lasso")):
        inside = np.zeros(len(coords), bool)
        for box in selection.get("box") or []:
            (x0, x1), (y0, y1) = sorted(box["x"][:2]), sorted(box["y"][:2])
            inside |= (coords[:, 0] >= x0) & (coords[:, 0] <= x1) & (coords[:, 1] >= y0) & (coords[:, 1] <= y1)
        for lasso in selection.get("lasso") or []:
            inside |= _polygon_members(coords, lasso["x"], lasso["y"])
        return np.flatnonzero(inside) if ids is None else np.asarray(ids)[inside]
    picked = [decode_customdata(p.get("customdata")) for p in selection.get("points") or []]
    return np.unique(np.asarray([i for i in picked if i is not None], dtype=int))


# ---- images ----------------------------------------------------------------------------------
def to_uint8(image) -> np.ndarray:
    """A 3×H×W float tensor/array in [0, 1] -> H×W×3 uint8 for display."""
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)


def validate_upload(data: bytes, name: str = "upload") -> Image.Image:
    """The uploaded bytes as an RGB image, or UploadError saying what is wrong."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name} is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB. "
                          f"Resize or re-encode it (e.g. as JPEG) and upload again.")
    if not data:
        raise UploadError(f"{name} is empty. Upload a PNG or JPEG image.")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_UPLOAD_PIXELS or max(width, height) > MAX_UPLOAD_SIDE:
                raise UploadError(f"{name} is {width}×{height} pixels, too large to embed here (limit "
                                  f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels, {MAX_UPLOAD_SIDE} px a side). "
                                  f"Downscale it and upload again.")
            return img.convert("RGB")     # decodes fully, so truncated files fail here
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError(f"{name} declares an enormous image size; it is refused. Upload a normal photo.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UploadError(f"{name} is not a readable image ({type(err).__name__}). Upload a PNG, JPEG, "
                          f"BMP or WebP file.") from None
