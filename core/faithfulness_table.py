"""A run's faithfulness table: what `python -m core faithfulness RUN` writes to RUN_DIR/faithfulness.json and the
dashboard's Attention page shows beside the maps.

N test queries spread over the run's test items, each with its top-1 neighbour (and its nearest true match, for
the contrast maps), scored by `core.faithfulness.faithfulness`. Beside each map's scores:
* its mass on the object, where the data set has ground-truth masks (shapes): the share of the map's positive
  mass inside the query's target mask (`core.map_scores`, the benchmarks' scoring), with the uniform map's
  share (the mask's area) as `uniform_mass`. Mass measures plausibility (on the object), the curves measure
  faithfulness (what the similarity uses): the table sets both side by side so one can be told from the other;
* the run's weights checksum (`weights_sha256`), so a reader can tell a table of other weights.
`faithful`, `on_object`, `sanity` and `reading` put an entry in words (the rules are named constants below).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from core.faithfulness import Pair, faithfulness, map_sources

MARGIN = 0.05            # an AUC this much better (or worse) than the random orders' counts as better (worse):
                         # about the spread of one random order around the mean of five
ON_OBJECT = 2.0          # "on the object": at least twice the mass a uniform map puts there
SANITY_RHO = 0.5         # a map whose ρ with the randomised model's map stays at or above this fails the check


def run_pairs(items, n_queries: int, with_true_match: bool = True) -> list[Pair]:
    """N test queries spread over a run's items (`core.run_items.RunItems`), each with its top-1 neighbour by
    the stored embeddings and its nearest true match other than that neighbour."""
    ids = np.unique(np.linspace(0, len(items) - 1, min(n_queries, len(items))).round().astype(int))
    pairs = []
    for q in ids.tolist():
        neighbour = int(items.neighbours(q, 1)[0])
        true = items.nearest_true_match(q, besides=neighbour) if with_true_match else None
        pairs.append(Pair(items.image(q), items.image(neighbour), None if true is None else items.image(true),
                          {"query": q, "neighbour": neighbour, "true_match": true}))
    return pairs


def weights_sha256(run_dir: str | Path) -> str | None:
    """The checksum of a run's weights.safetensors (None when it has none)."""
    from core.run_dir import WEIGHTS

    digest = hashlib.sha256()
    try:
        with open(Path(run_dir) / WEIGHTS, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _mean_std(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    return {"mean": float(ok.mean()) if len(ok) else None, "std": float(ok.std()) if len(ok) else None}


def run_faithfulness(run_dir: str | Path, queries: int = 8, **options) -> dict:
    """`faithfulness` on a run's first-to-last spread of `queries` test items (see `run_pairs`), with each map's
    mass on the object when the items have masks."""
    from core.map_scores import mass_on_object
    from core.run_items import RunItems

    items = RunItems(run_dir)
    pairs = run_pairs(items, queries)
    if any(p.true_match is None for p in pairs):   # contrast maps need a true match for every query
        options.setdefault("explainer_names", [s.explainer for s in map_sources(items.model) if not s.contrast])
    masks = {p.ids["query"]: items.annotation(p.ids["query"]).get("mask") for p in pairs}
    masks = masks if all(m is not None for m in masks.values()) else {}
    mass: dict[str, list[float]] = {}

    def on_maps(i, pair, maps):
        if masks:
            for key, m in maps.items():
                mass.setdefault(key, []).append(mass_on_object(m, masks[pair.ids["query"]]))

    result = {"run": str(run_dir), "weights_sha256": weights_sha256(run_dir),
              **faithfulness(items.model, pairs, on_maps=on_maps, **options)}
    if masks:
        result["uniform_mass"] = float(np.mean([np.asarray(m, dtype=bool).mean() for m in masks.values()]))
        for key, entry in result["explainers"].items():
            entry["mass_on_object"] = _mean_std(mass[key])
    return result


# ---- in words ---------------------------------------------------------------------------------------------
def _compare(value, random, lower_is_better: bool) -> int:
    """+1 better than random by MARGIN, −1 worse, 0 alike (or unknown)."""
    if value is None or random is None:
        return 0
    gain = (random - value) if lower_is_better else (value - random)
    return 1 if gain > MARGIN else -1 if gain < -MARGIN else 0


def faithful(entry: dict) -> str:
    """"faithful" (beats the random orders on one curve, loses on none), "worse than random" (the reverse),
    "like random" or "mixed" (better on one curve, worse on the other)."""
    deletion = _compare(entry["deletion_auc"]["mean"], entry["random"]["deletion_auc"]["mean"], True)
    insertion = _compare(entry["insertion_auc"]["mean"], entry["random"]["insertion_auc"]["mean"], False)
    if deletion >= 0 and insertion >= 0:
        return "faithful" if deletion + insertion > 0 else "like random"
    return "worse than random" if deletion <= 0 and insertion <= 0 else "mixed"


def on_object(entry: dict, uniform_mass: float | None) -> bool | None:
    """Whether the map's mass on the object is at least ON_OBJECT times a uniform map's (None: no masks)."""
    mass = (entry.get("mass_on_object") or {}).get("mean")
    if mass is None or uniform_mass is None:
        return None
    return mass >= ON_OBJECT * uniform_mass


def sanity(entry: dict, levels: list[str]) -> dict:
    """The randomisation check in words: {"passed": True/False/None (not run), "text"}, judged at the most
    randomised level (`levels` in the order they randomise more): a map that stays alike (ρ ≥ SANITY_RHO) fails.
    ρ = 1 at every level means the map ignores those weights altogether: an edge detector would, and so does a
    map made below the re-initialised layers (CSA's early blocks), which the check cannot judge further."""
    rho = {level: entry["randomised_model_spearman"].get(level, {}).get("mean") for level in levels}
    known = [(level, r) for level, r in rho.items() if r is not None]
    if not known:
        return {"passed": None, "text": "sanity check not run"}
    said = ", ".join(f"ρ {r:.2f} with the {level.replace('+', ' and ').replace('_', ' ')} re-initialised"
                     for level, r in known)
    if known[-1][1] < SANITY_RHO:
        return {"passed": True, "text": f"passes the sanity check: randomising the weights changes the map ({said})"}
    untouched = all(r > 0.999 for _, r in known)
    return {"passed": False, "text": "fails the sanity check: the map " + (
        f"does not change at all when the weights are randomised ({said}): it ignores them, as an edge detector "
        f"would (or it is made below the re-initialised layers, which the check cannot judge)" if untouched else
        f"barely changes when the weights are randomised ({said})")}


def reading(entry: dict, uniform_mass: float | None) -> str:
    """Faithful and plausible, or only one of them: e.g. "faithful and on the object", "on the object, not faithful"."""
    is_faithful, placed = faithful(entry) == "faithful", on_object(entry, uniform_mass)
    if placed is None:
        return "faithful" if is_faithful else "not faithful"
    if is_faithful:
        return "faithful and on the object" if placed else "faithful, off the object"
    return "on the object, not faithful" if placed else "neither faithful nor on the object"


def table(result: dict) -> str:
    """The scores as a plain-text table (the CLI without --json)."""
    def cell(x: dict | None) -> str:
        return "–" if not x or x["mean"] is None else f"{x['mean']:.3f}±{x['std']:.3f}"
    levels = result.get("randomised", [])
    mass = "uniform_mass" in result
    header = ["map", "grid", "deletion", "random", "inverted", "insertion", "random", "inverted",
              *(f"ρ {level}" for level in levels), *(["mass on object"] if mass else [])]
    rows = [header]
    for key, s in result["explainers"].items():
        rows.append([key, "×".join(map(str, s["grid"])), cell(s["deletion_auc"]), cell(s["random"]["deletion_auc"]),
                     cell(s["inverted"]["deletion_auc"]), cell(s["insertion_auc"]), cell(s["random"]["insertion_auc"]),
                     cell(s["inverted"]["insertion_auc"]),
                     *(cell(s["randomised_model_spearman"][level]) for level in levels),
                     *([cell(s.get("mass_on_object"))] if mass else [])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    uniform = f"; mass on object: a uniform map's is {result['uniform_mass']:.3f}" if mass else ""
    return "\n".join([f"{result.get('run', '')}: {result['queries']} queries, fill {result['fill']}, "
                      f"{result['steps']} steps; AUCs of the similarity normalised to the unoccluded one "
                      f"(deletion: lower is more faithful; insertion: higher); ρ: Spearman of the map with the "
                      f"same map of the randomised model (near 1: the map ignores the model){uniform}", *lines])
