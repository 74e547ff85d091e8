"""Is the map faithful? Deletion and insertion curves on the map's own grid, their controls, and the
model-randomisation sanity check (Petsiuk et al., RISE 2018; Adebayo et al., Sanity Checks, 2018).

For one query, its top-1 neighbour (and, for a contrast map, its nearest true match), and one map of the
query on a grid of h×w cells (8×8 learned maps, 16×16 CSA maps, 64×64 Integrated Gradients ...):

* **Deletion**: the cells are hidden in the map's order, most important first, in `steps` equal shares
  (each cell's pixels filled as `core.attribution.fill_image` fills them: the image's mean colour, or a
  blur). After each step the cosine similarity to the neighbour is divided by the unoccluded similarity;
  the area under that curve over the hidden share 0..1 is the deletion AUC (lower: the map found what the
  similarity rests on). **Insertion** starts from the filled image and reveals the cells in the same order
  (higher is better). A contrast map ("why this neighbour rather than the true match") is scored on what it
  explains, the margin cos(q, neighbour) − cos(q, true match), divided by the same unoccluded similarity.
* **Controls** on the same steps: random orders (the mean of `random_orders` curves) and the inverted map.
  The inverted map's deletion hides the least important cells first, i.e. keeps the top cells: its images
  are the insertion images in reverse order, so its curves are read off those (no second forward).
  Ties in a map are broken at random, so a constant map is a random order.
* **Randomisation**: the Spearman correlation between the map and the same map drawn from copies of the
  model with its head (and the CIA branch, when there is one) re-initialised, then also its top backbone
  stage (with the blocks placed after it). A faithful map changes: ρ near 0. A map that survives the model's
  randomisation (ρ near 1, e.g. an edge detector) shows the image, not the model (core/randomisation.py).

Explainers are taken from the registry (`core.explain.explainers`): learned maps (multi-channel maps as
their channel mean plus each channel), attributions (Grad-CAM, Integrated Gradients, occlusion), contrast
maps (why this neighbour: its "difference") and cross maps (where the neighbour looks in the query:
"b_in_a"). Position and patch explainers are left out: their maps answer what one chosen position looks
at, not which cells the similarity uses.

Every curve image goes through the model in one batched forward per map (deletion and insertion together),
and the random orders once per grid and query. `score_pair` scores one query (what a page calls);
`faithfulness` aggregates many into the JSON of `python -m core faithfulness` (a run's queries, their mass on
the object and the verdicts in words: core/faithfulness_table.py).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.attribution import cells_to_pixels, fill_image
from core.explain import explain, explainers
from core.randomisation import randomised_models, spearman

STEPS = 16            # equal shares of the cells per curve (fewer when the grid has fewer cells)
RANDOM_ORDERS = 5     # random orders averaged for the control
CHANNELS = 8          # channels of a multi-channel map scored one by one (beyond: the strongest ones)
BATCH = 128           # images per forward


@dataclass
class Pair:
    """A query and what it is compared with (3×H×W images in [0, 1]); `true_match` only for contrast maps."""
    query: torch.Tensor
    neighbour: torch.Tensor
    true_match: torch.Tensor | None = None
    ids: dict = field(default_factory=dict)      # item ids, for the record

    def __post_init__(self):                     # a page holds numpy model inputs
        for name in ("query", "neighbour", "true_match"):
            value = getattr(self, name)
            if value is not None and not torch.is_tensor(value):
                setattr(self, name, torch.as_tensor(np.asarray(value, dtype=np.float32)))


@dataclass(frozen=True)
class MapSource:
    """One explainer, as the scores draw it: `draw(model, pair) -> {map name: h×w or K×h×w}`."""
    explainer: str
    draw: Callable[[nn.Module, Pair], dict[str, np.ndarray]]
    contrast: bool = False                       # scored on the margin to the true match


def map_sources(model, names: list[str] | None = None, *, n_steps: int = 32, fill: str = "mean") -> list[MapSource]:
    """Every registered explainer the model supports whose maps live on the query (or those `names`)."""
    sources = []
    for entry in explainers(model=model):
        if names is not None and entry.name not in names:
            continue
        name = entry.name
        if entry.kind == "maps":
            draw = lambda m, p, name=name: explain(m, p.query, explainer=name).maps
        elif entry.kind == "attribution":
            takes = inspect.signature(entry.fn).parameters      # IG's path steps, occlusion's fill
            opts = {k: v for k, v in (("n_steps", n_steps), ("fill", fill)) if k in takes}
            draw = lambda m, p, name=name, opts=opts: explain(m, p.query, p.neighbour, explainer=name, **opts).maps
        elif entry.kind == "contrast":
            draw = lambda m, p, name=name: {"difference": explain(m, p.query, p.neighbour, explainer=name,
                                                                  true_match=p.true_match).maps["difference"]}
        elif entry.kind == "cross":   # b_in_a: where the neighbour (B) looks in the query (A), a map of the query
            draw = lambda m, p, name=name: {"b_in_a": explain(m, p.query, p.neighbour, explainer=name).maps["b_in_a"]}
        else:
            continue
        sources.append(MapSource(name, draw, contrast=entry.kind == "contrast"))
    if names is not None and {s.explainer for s in sources} != set(names):
        known = ", ".join(s.explainer for s in map_sources(model))
        raise ValueError(f"explainer(s) {', '.join(sorted(set(names) - {s.explainer for s in sources}))} cannot be "
                         f"scored on this model; the ones that can: {known}")
    return sources


# ---- the curves ------------------------------------------------------------------------------------------
def ranked_cells(cell_map: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat cell indices, most important (largest value) first; ties in a random order."""
    values = np.nan_to_num(np.asarray(cell_map, dtype=np.float64).ravel(), nan=-np.inf)
    return np.lexsort((rng.random(values.size), -values))


def step_counts(cells: int, steps: int = STEPS) -> np.ndarray:
    """Cells hidden after each step, 0..cells, symmetric (counts[S−k] = cells − counts[k]) so that the inverted
    order's images are the insertion images."""
    steps = min(steps, cells)
    if steps % 2 == 0 and cells % 2:     # an odd number of cells has no middle step that is its own mirror
        steps = steps + 1 if steps < cells else steps - 1
    half = np.floor(np.arange(steps + 1) * cells / steps).astype(int)
    return np.where(np.arange(steps + 1) <= steps // 2, half, cells - half[::-1])


def auc(curve: np.ndarray, counts: np.ndarray) -> float:
    """Area under a normalised curve over the hidden share 0..1 (trapezoids)."""
    return float(np.trapezoid(curve, counts / counts[-1]))


class PairScorer:
    """The images and similarities one pair's curves share: the unoccluded and filled query, the targets."""

    def __init__(self, model, pair: Pair, fill: str = "mean", seed: int = 0):
        self.model, self.pair = model, pair
        self.query = pair.query.float()
        self.filled = fill_image(self.query, fill)
        with torch.inference_mode():
            refs = [pair.neighbour] + ([pair.true_match] if pair.true_match is not None else [])
            self.targets = self._embed(torch.stack([r.float() for r in refs])).T        # D×T
            start = self.similarities(torch.stack([self.query, self.filled]))           # T: query, filled
        self.start_neighbour = float(start[0, 0])       # the normaliser: unoccluded cosine to the neighbour
        if self.start_neighbour <= 0:
            raise ValueError(f"the query's cosine to its neighbour is {self.start_neighbour:.3f}: curves "
                             f"normalised to it would be meaningless")
        self.ends = start
        self.seed = seed
        self._random: dict[tuple, dict] = {}

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        out = [self.model(images[i:i + BATCH]) for i in range(0, len(images), BATCH)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    def similarities(self, images: torch.Tensor) -> torch.Tensor:
        """N×2: (cosine to the neighbour, margin over the true match) of each image (margin 0 without one)."""
        sims = self._embed(images) @ self.targets
        margin = sims[:, 0] - sims[:, 1] if sims.shape[1] > 1 else torch.zeros_like(sims[:, 0])
        return torch.stack([sims[:, 0], margin], 1)

    def curves(self, orders: list[np.ndarray], grid: tuple[int, int], steps: int) -> tuple[np.ndarray, ...]:
        """(deletion, insertion) similarities, each len(orders)×(S+1)×2, and the step counts; one forward."""
        cells = grid[0] * grid[1]
        counts = step_counts(cells, steps)
        inner = counts[1:-1]                                                    # the endpoints are shared
        first = np.zeros((len(orders), len(inner), cells), bool)                # the first counts[k] cells
        for o, order in enumerate(orders):
            for k, c in enumerate(inner):
                first[o, k, order[:c]] = True
        first = torch.from_numpy(first).reshape(len(orders), len(inner), *grid)
        hidden = torch.cat([first, ~first]).reshape(-1, *grid)                  # deletion, then insertion
        pixels = cells_to_pixels(hidden, tuple(self.query.shape[-2:]))[:, None]
        with torch.inference_mode():
            sims = self.similarities(torch.where(pixels, self.filled, self.query)).numpy()
        sims = sims.reshape(2, len(orders), len(inner), 2)
        query, filled = self.ends[0].numpy(), self.ends[1].numpy()
        tile = lambda v: np.broadcast_to(v, (len(orders), 1, 2))
        deletion = np.concatenate([tile(query), sims[0], tile(filled)], 1)
        insertion = np.concatenate([tile(filled), sims[1], tile(query)], 1)
        return deletion, insertion, counts

    def random_control(self, grid: tuple[int, int], steps: int, orders: int) -> dict:
        """The mean curves of `orders` random orders on this grid (computed once per grid)."""
        key = (grid, steps, orders)
        if key not in self._random:
            rng = np.random.default_rng([self.seed, grid[0], grid[1]])
            shuffled = [rng.permutation(grid[0] * grid[1]) for _ in range(orders)]
            deletion, insertion, counts = self.curves(shuffled, grid, steps)
            self._random[key] = {"deletion": deletion.mean(0), "insertion": insertion.mean(0), "counts": counts}
        return self._random[key]


def score_map(scorer: PairScorer, cell_map: np.ndarray, *, contrast: bool = False, steps: int = STEPS,
              random_orders: int = RANDOM_ORDERS) -> dict:
    """Deletion and insertion AUC of one h×w map with both controls, plus the curves (normalised) and the
    hidden shares they were taken at: what a page draws ("hiding the top 20 % drops the similarity …")."""
    grid = tuple(cell_map.shape)
    order = ranked_cells(cell_map, np.random.default_rng([scorer.seed, *grid, 1]))
    deletion, insertion, counts = scorer.curves([order], grid, steps)
    control = scorer.random_control(grid, steps, random_orders)
    column = 1 if contrast else 0
    norm = lambda c: c[..., column] / scorer.start_neighbour
    curves = {"deletion": norm(deletion[0]), "insertion": norm(insertion[0]),
              "random_deletion": norm(control["deletion"]), "random_insertion": norm(control["insertion"])}
    # the inverted order keeps the top cells while it hides: the insertion images, read backwards
    curves["inverted_deletion"], curves["inverted_insertion"] = curves["insertion"][::-1], curves["deletion"][::-1]
    a = {name: auc(curve, counts) for name, curve in curves.items()}
    return {"deletion_auc": a["deletion"], "insertion_auc": a["insertion"],
            "random": {"deletion_auc": a["random_deletion"], "insertion_auc": a["random_insertion"]},
            "inverted": {"deletion_auc": a["inverted_deletion"], "insertion_auc": a["inverted_insertion"]},
            "start_similarity": scorer.start_neighbour, "hidden_share": (counts / counts[-1]).tolist(),
            "curves": {name: curve.tolist() for name, curve in curves.items()}}


def drop_at(score: dict, share: float) -> dict:
    """What a page writes beside a map: how much the similarity drops when the map's top `share` of cells is
    hidden, and when a random share is (mean of the random orders), in cosine units, at the nearest step. For a
    contrast map: how much the margin over the true match shrinks (its curve starts at the margin, not at 1)."""
    k = int(np.argmin(np.abs(np.asarray(score["hidden_share"]) - share)))
    start, curves = score["start_similarity"], score["curves"]
    return {"share": score["hidden_share"][k], "map": start * (curves["deletion"][0] - curves["deletion"][k]),
            "random": start * (curves["random_deletion"][0] - curves["random_deletion"][k])}


# ---- scoring one query, and many -------------------------------------------------------------------------
def map_entries(explainer: str, maps: dict[str, np.ndarray], channels: dict[str, list[int]] | None) -> dict[str, np.ndarray]:
    """'<explainer>/<map>' -> h×w: single maps as they are, multi-channel ones as their channel mean plus
    '<explainer>/<map>[k]' for each chosen channel k (`channels[key]`; None: every channel)."""
    out = {}
    for name, m in maps.items():
        m = np.asarray(m, dtype=np.float32)
        m = m[0] if m.ndim == 3 and len(m) == 1 else m
        key = f"{explainer}/{name}"
        out[key] = m.mean(0) if m.ndim == 3 else m
        if m.ndim == 3:
            for k in (range(len(m)) if channels is None else channels.get(key, [])):
                out[f"{key}[{k}]"] = m[k]
    return out


def draw_maps(model, pair: Pair, sources: list[MapSource], randomised: dict[str, nn.Module]) -> dict:
    """{source: {"model": maps, level: maps of the randomised copy}} for one pair (raw, every channel)."""
    drawn = {}
    for source in sources:
        drawn[source.explainer] = {"model": source.draw(model, pair)}
        for level, other in randomised.items():
            drawn[source.explainer][level] = source.draw(other, pair)
    return drawn


def score_drawn(model, pair: Pair, sources: list[MapSource], drawn: dict, *, channels=None, fill: str = "mean",
                steps: int = STEPS, random_orders: int = RANDOM_ORDERS, seed: int = 0) -> dict[str, dict]:
    """Per map entry: `score_map` plus {"randomised_model_spearman": {level: ρ}}."""
    scorer = PairScorer(model, pair, fill, seed)
    scores = {}
    for source in sources:
        maps = map_entries(source.explainer, drawn[source.explainer]["model"], channels)
        others = {level: map_entries(source.explainer, m, channels)
                  for level, m in drawn[source.explainer].items() if level != "model"}
        for key, cell_map in maps.items():
            score = score_map(scorer, cell_map, contrast=source.contrast, steps=steps, random_orders=random_orders)
            score["randomised_model_spearman"] = {level: spearman(cell_map, o[key]) for level, o in others.items()}
            score["grid"] = list(cell_map.shape)
            scores[key] = score
    return scores


def score_pair(model, pair: Pair, explainer_names: list[str] | None = None, *, fill: str = "mean",
               steps: int = STEPS, random_orders: int = RANDOM_ORDERS, randomise: bool = True, seed: int = 0,
               n_steps: int = 32) -> dict[str, dict]:
    """Every map of the named explainers (default: all that apply) for one query: what a page calls beside its
    maps. '<explainer>/<map>[k]' entries for every channel of a multi-channel map."""
    sources = map_sources(model, explainer_names, n_steps=n_steps, fill=fill)
    randomised = randomised_models(model, seed) if randomise else {}
    drawn = draw_maps(model, pair, sources, randomised)
    return score_drawn(model, pair, sources, drawn, fill=fill, steps=steps, random_orders=random_orders, seed=seed)


def strongest_channels(drawn: list[dict], limit: int | None) -> dict[str, list[int]] | None:
    """For every multi-channel map: the `limit` channels with the most mass over the queries (all when it has
    no more; None: every channel of every map)."""
    if limit is None:
        return None
    chosen = {}
    for source, by_level in drawn[0].items():
        for name, m in by_level["model"].items():
            if np.ndim(m) == 3 and len(m) > 1:
                mass = np.mean([np.abs(d[source]["model"][name]).sum((1, 2)) for d in drawn], 0)
                chosen[f"{source}/{name}"] = sorted(np.argsort(-mass, kind="stable")[:limit].tolist())
    return chosen


def _mean_std(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    return {"mean": float(ok.mean()) if len(ok) else None, "std": float(ok.std()) if len(ok) else None}


def summarise(per_query: list[dict[str, dict]]) -> dict[str, dict]:
    """Mean ± std over queries of every number of every map entry (curves averaged point by point)."""
    out = {}
    for key in per_query[0]:
        rows = [q[key] for q in per_query if key in q]
        out[key] = {
            "deletion_auc": _mean_std([r["deletion_auc"] for r in rows]),
            "insertion_auc": _mean_std([r["insertion_auc"] for r in rows]),
            "random": {k: _mean_std([r["random"][k] for r in rows]) for k in ("deletion_auc", "insertion_auc")},
            "inverted": {k: _mean_std([r["inverted"][k] for r in rows]) for k in ("deletion_auc", "insertion_auc")},
            "randomised_model_spearman": {level: _mean_std([r["randomised_model_spearman"][level] for r in rows])
                                          for level in rows[0]["randomised_model_spearman"]},
            "grid": rows[0]["grid"], "queries": len(rows),
            "curves": {name: np.mean([r["curves"][name] for r in rows], 0).round(5).tolist()
                       for name in rows[0]["curves"]},
            "hidden_share": rows[0]["hidden_share"]}
    return out


def faithfulness(model, pairs: list[Pair], explainer_names: list[str] | None = None, *,
                 sources: list[MapSource] | None = None, fill: str = "mean", steps: int = STEPS,
                 random_orders: int = RANDOM_ORDERS, channels: int | None = CHANNELS, randomise: bool = True,
                 seed: int = 0, n_steps: int = 32, progress=None, on_maps=None) -> dict:
    """Scores over many pairs: {"queries", "fill", "steps", "explainers": {key: mean ± std ...}, "per_query"}.
    `sources` (default: `map_sources(model, explainer_names)`) may hold maps of your own; `channels`:
    multi-channel maps are scored as their mean plus their `channels` strongest channels (None: all).
    `progress(step, total, message)` after each phase of each query; `on_maps(i, pair, {key: h×w})` is handed
    each query's scored maps (e.g. to score them against an object mask as well)."""
    if sources is None:
        sources = map_sources(model, explainer_names, n_steps=n_steps, fill=fill)
    randomised = randomised_models(model, seed) if randomise else {}
    total = 2 * len(pairs)
    drawn = []
    for i, pair in enumerate(pairs):
        drawn.append(draw_maps(model, pair, sources, randomised))
        if progress:
            progress(i + 1, total, f"faithfulness: drawing maps of query {i + 1}/{len(pairs)}")
    chosen = strongest_channels(drawn, channels)
    per_query = []
    for i, (pair, maps) in enumerate(zip(pairs, drawn)):
        per_query.append(score_drawn(model, pair, sources, maps, channels=chosen, fill=fill, steps=steps,
                                     random_orders=random_orders, seed=seed))
        if on_maps is not None:
            on_maps(i, pair, {k: m for s in sources for k, m in map_entries(s.explainer, maps[s.explainer]["model"],
                                                                           chosen).items()})
        if progress:
            progress(len(pairs) + i + 1, total, f"faithfulness: deletion curves of query {i + 1}/{len(pairs)}")
    return {"queries": len(pairs), "fill": fill, "steps": steps, "random_orders": random_orders,
            "randomised": list(randomised), "explainers": summarise(per_query),
            "per_query": [{"ids": p.ids, "scores": _finite({k: {n: v for n, v in s.items() if n != "curves"}
                                                             for k, s in q.items()})}
                          for p, q in zip(pairs, per_query)]}


def _finite(obj):
    """NaN (e.g. the ρ of a constant map) as None, so the JSON is valid for every reader."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and not np.isfinite(obj) else obj
