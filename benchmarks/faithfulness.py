"""Is each map faithful, and is it plausible? Every explainer of every shipped run, side by side.

For N test queries of each run (spread over the test set, each with its top-1 neighbour; core/faithfulness.py):
deletion and insertion AUC of the similarity (normalised to the unoccluded one) with the random-order and
inverted-map controls, the Spearman ρ of the map with the same map of the model randomised (head; head + top
backbone stage), and beside them
  * mass on the object: the share of the map's positive mass inside the target mask, scored as
    benchmarks/heads_interpretability.py scores the learned maps (`core.map_scores`; the mask's area is what a
    uniform map gets);
  * Captum's `infidelity` (normalised): E[(Σ_hidden cells map − (s(x) − s(x with those cells filled)))²] over
    random hidings of a quarter of the map's cells, the map read as each cell's share of the similarity;
  * Captum's `sensitivity_max` of each explainer (its channel-mean maps together): the largest relative
    change of the maps when the query's pixels move by at most 0.02 (on the first queries only: every sample
    draws the explainer again).

    python -m benchmarks.faithfulness                        # every checkpoints/shapes_* run
    python -m benchmarks.faithfulness checkpoints/shapes_gsp --queries 4
    python -m benchmarks.faithfulness --timing               # seconds a page waits: one pass, one re-rank
    python -m benchmarks.faithfulness --rerank               # one re-rank as the dashboard does it (one thread)
    python -m benchmarks.faithfulness --tabulate             # only the markdown again, from the saved JSON
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.common import ROOT, md_table, read_results, rewrite_markdown, write_results
from core.attribution import cells_to_pixels, fill_image
from core.faithfulness import Pair, faithfulness, map_entries, map_sources
from core.faithfulness_table import run_pairs
from core.map_scores import score_maps
from core.run_dir import is_complete
from core.run_items import RunItems


class Similarity(nn.Module):
    """x -> cos(model(x), neighbour), or its margin over the true match for a contrast map."""

    def __init__(self, model, pair: Pair, contrast: bool):
        super().__init__()
        self.model = model
        with torch.no_grad():
            refs = [pair.neighbour] + ([pair.true_match] if contrast else [])
            self.refs = F.normalize(model(torch.stack(refs)).float(), dim=-1)

    def forward(self, x):
        sims = F.normalize(self.model(x).float(), dim=-1) @ self.refs.T
        return sims[:, 0] - sims[:, 1] if sims.shape[1] > 1 else sims[:, 0]


def cell_infidelity(model, pair: Pair, cell_map: np.ndarray, contrast: bool, fill: str, samples: int,
                    seed: int) -> float:
    """Captum's infidelity with hidings of random cells of the map's grid (each cell with probability ¼)."""
    from captum.metrics import infidelity

    x = pair.query[None].float()
    grid, size = cell_map.shape, x.shape[-2:]
    filled = fill_image(x, fill)
    per_cell = 3 * size[0] * size[1] / (grid[0] * grid[1])
    gen = torch.Generator().manual_seed(seed)

    def perturb(inputs):
        hidden = cells_to_pixels(torch.rand(len(inputs), *grid, generator=gen) < 0.25, size)[:, None]
        # I·Φ over the pixels sums the hidden cells' values: the map read as each cell's share of the similarity
        return hidden.expand_as(inputs).float() / per_cell, torch.where(hidden, filled, inputs)

    attribution = F.interpolate(torch.from_numpy(np.nan_to_num(cell_map)).float()[None, None], size=size,
                                mode="nearest").expand_as(x)
    with torch.no_grad():
        return float(infidelity(Similarity(model, pair, contrast), perturb, x, attribution,
                                n_perturb_samples=samples, normalize=True)[0])


def explainer_sensitivity(model, pair: Pair, source, samples: int) -> float:
    """Captum's sensitivity_max of one explainer's channel-mean maps (concatenated), relative to their norm."""
    from captum.metrics import sensitivity_max

    def explanation(inputs):
        maps = []
        for image in inputs[0] if isinstance(inputs, tuple) else inputs:   # Captum hands a tuple of inputs
            entries = map_entries(source.explainer, source.draw(model, Pair(image, pair.neighbour, pair.true_match)), {})
            maps.append(torch.cat([torch.from_numpy(np.nan_to_num(m)).float().ravel() for m in entries.values()]))
        return (torch.stack(maps),)    # a tuple, as Captum hands the inputs

    return float(sensitivity_max(explanation, pair.query[None].float(), n_perturb_samples=samples,
                                 max_examples_per_batch=samples)[0])


def evaluate_run(run: Path, queries: int, steps: int, channels: int, fill: str, ig_steps: int, infidelity_samples: int,
                 sensitivity_queries: int, sensitivity_samples: int, seed: int = 0) -> dict:
    items = RunItems(run)
    model = items.model
    pairs = run_pairs(items, queries)
    masks = {p.ids["query"]: torch.from_numpy(items.annotation(p.ids["query"])["mask"]) for p in pairs}
    sources = map_sources(model, n_steps=ig_steps, fill=fill)
    contrast = {s.explainer for s in sources if s.contrast}
    extra: dict[str, dict[str, list]] = {}

    def on_maps(i, pair, maps):
        mask = masks[pair.ids["query"]]
        for key, m in maps.items():
            row = extra.setdefault(key, {"mass": [], "infidelity": []})
            row["mass"].append(float(score_maps(torch.from_numpy(np.nan_to_num(m))[None, None], mask[None])["mass"][0, 0]))
            row["infidelity"].append(cell_infidelity(model, pair, m, key.split("/")[0] in contrast, fill,
                                                     infidelity_samples, seed + i))

    start = time.perf_counter()
    result = faithfulness(model, pairs, sources=sources, fill=fill, steps=steps, channels=channels, seed=seed,
                          on_maps=on_maps,
                          progress=lambda step, total, message: print(f"  {run.name}: {message}", flush=True))
    seconds = time.perf_counter() - start
    drawn = {key.split("/")[0] for key in result["explainers"]}     # e.g. a GAP head has no learned map
    sensitivity = {s.explainer: float(np.mean([explainer_sensitivity(model, p, s, sensitivity_samples)
                                               for p in pairs[:sensitivity_queries]]))
                   for s in sources if s.explainer in drawn} if sensitivity_queries else {}
    for key, s in result["explainers"].items():
        s["mass_on_object"] = float(np.nanmean(extra[key]["mass"]))
        s["infidelity"] = float(np.mean(extra[key]["infidelity"]))
        s["sensitivity_max"] = sensitivity.get(key.split("/")[0])
    area = float(np.mean([m.float().mean() for m in masks.values()]))
    cfg = items.config.model
    return {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
            "model": cfg.head + "".join(f" + {b.name}" for b in cfg.blocks) + (" + cia" if cfg.cia else ""),
            "uniform_mass": area, "seconds": round(seconds, 1), **{k: v for k, v in result.items() if k != "per_query"}}


def _pm(x: dict) -> str:
    return "–" if x["mean"] is None else f"{x['mean']:.2f} ± {x['std']:.2f}"


POST_HOC = ("gradcam", "integrated_gradients", "occlusion", "similarity_correspondence", "why_neighbour")


def summary_rows(results: list[dict]) -> list[list]:
    """One row per map: each post-hoc explainer's channel-mean map averaged over the runs, then each learned map
    (it belongs to one method, so to one run). Single channels (`[k]`) stay in the full table."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        for key, s in r["explainers"].items():
            if "[" not in key:
                explainer = key.split("/")[0]
                groups.setdefault(f"`{explainer}`" if explainer in POST_HOC else f"`{key}` ({r['model']})", []).append(s)
    order = [f"`{k}`" for k in POST_HOC if f"`{k}`" in groups] + sorted(k for k in groups if k.strip("`") not in POST_HOC)
    levels = results[0]["randomised"]

    def mean(rows, get) -> str:
        values = [v for v in (get(s) for s in rows) if v is not None]
        return f"{np.mean(values):.2f}" if values else "–"

    return [[k, len(groups[k]),
             f"{mean(groups[k], lambda s: s['deletion_auc']['mean'])} "
             f"({mean(groups[k], lambda s: s['random']['deletion_auc']['mean'])})",
             f"{mean(groups[k], lambda s: s['insertion_auc']['mean'])} "
             f"({mean(groups[k], lambda s: s['random']['insertion_auc']['mean'])})",
             " / ".join(mean(groups[k], lambda s, lv=lv: s["randomised_model_spearman"][lv]["mean"]) for lv in levels),
             mean(groups[k], lambda s: s["mass_on_object"]), f"{np.mean([s['infidelity'] for s in groups[k]]):.3g}",
             mean(groups[k], lambda s: s["sensitivity_max"])] for k in order]


def markdown(results: list[dict], settings: dict) -> str:
    """The results file: what is measured, a summary per map over the runs, then every run's maps and channels.
    `settings`: channels, ig_steps, sensitivity_queries."""
    rows = []
    for r in results:
        rows.append([r["model"], "uniform (mass baseline)", "", "", "", "", "", "", f"{r['uniform_mass']:.2f}", "", ""])
        for key, s in r["explainers"].items():
            rho = s["randomised_model_spearman"]
            rows.append([r["model"], f"`{key}`", "×".join(map(str, s["grid"])),
                         f"{_pm(s['deletion_auc'])} ({s['random']['deletion_auc']['mean']:.2f})",
                         f"{s['inverted']['deletion_auc']['mean']:.2f}",
                         f"{_pm(s['insertion_auc'])} ({s['random']['insertion_auc']['mean']:.2f})",
                         f"{s['inverted']['insertion_auc']['mean']:.2f}",
                         " / ".join(_pm(rho[level]) for level in r["randomised"]),
                         f"{s['mass_on_object']:.2f}", f"{s['infidelity']:.3g}",
                         "–" if s["sensitivity_max"] is None else f"{s['sensitivity_max']:.2f}"])
    r0 = results[0]
    uniform = np.mean([r["uniform_mass"] for r in results])
    return ("# Faithfulness: does each map show what the similarity uses? (shapes test queries)\n\n"
            f"{r0['queries']} test queries per run, each with its top-1 neighbour (`python -m core faithfulness`; "
            f"core/faithfulness.py). Cells hidden in {r0['steps']} equal steps on each map's own grid, filled with the "
            f"image's {'mean colour' if r0['fill'] == 'mean' else 'blur'}. *Deletion*: area under the similarity to "
            "the neighbour (normalised to the unoccluded one) as the map's top cells are hidden: lower is more "
            "faithful; *insertion*: the same revealing them on the filled image: higher is better; in brackets the "
            f"mean of {r0['random_orders']} random orders. `why_neighbour/difference` "
            "is scored on the margin cos(q, neighbour) − cos(q, true match), divided by the same unoccluded "
            "similarity. *ρ*: Spearman of the map with the same map after re-initialising the head / the head and "
            "the top backbone stage (near 1: the map does not depend on those weights; fails the sanity check). "
            "*Mass on object*: share of the map's positive mass inside the target mask (heads_interpretability's "
            "scoring). *Infidelity*: Captum's `infidelity` (normalised) over random hidings of a quarter of the "
            "cells, lower is better. *Sensitivity*: Captum's `sensitivity_max` of the explainer's maps under "
            f"pixel noise of 0.02 (first {settings['sensitivity_queries']} queries), lower is steadier. Integrated "
            f"Gradients with {settings['ig_steps']} path steps.\n\n"
            "## Each map over the runs\n\n"
            f"Post-hoc explainers: the mean over the {len(results)} runs of each run's mean; a learned map: its run's. "
            "Insertion equals the inverted map's deletion by construction. A uniform map's mass on the object: "
            f"{uniform:.2f}.\n\n"
            + md_table(["map", "runs", "deletion (random)", "insertion (random)", "ρ head / head + top stage",
                        "mass on object", "infidelity", "sensitivity"], summary_rows(results))
            + "\n\n## Every run and map\n\n*Inverted*: the map's least important cells first (a faithful map's "
            f"inverted deletion is high, its inverted insertion low). Multi-channel maps: the channel mean and the "
            f"{settings['channels']} strongest channels `[k]`. Runs (seconds on a shared 2-core CPU): "
            + ", ".join(f"`{r['run']}` ({r['seconds']:.0f} s)" for r in results) + ".\n\n"
            + md_table(["model", "map", "grid", "deletion (random)", "inverted deletion", "insertion (random)",
                        "inverted insertion", "ρ head / head + top stage", "mass on object", "infidelity",
                        "sensitivity"], rows))


def timing(runs: list[Path], repeats: int) -> tuple[dict, str]:
    """What a page waits for: one query's full faithfulness pass per explainer (CLI defaults: 16 steps, 5 random
    orders, both randomised models), and one re-rank (median of `repeats`) with a random quarter hidden."""
    from core.faithfulness import score_pair
    from core.rerank import Reranker

    rows, out = [], {}
    for run in runs:
        items = RunItems(run)
        model, pair = items.model, run_pairs(items, 1)[0]
        per_explainer = {}
        for source in map_sources(model):
            start = time.perf_counter()
            score_pair(model, pair, [source.explainer])
            per_explainer[source.explainer] = time.perf_counter() - start
        query = pair.ids["query"]
        start = time.perf_counter()
        reranker = Reranker(model, pair.query, items.embeddings, exclude=query)
        setup = time.perf_counter() - start
        rng, seconds = np.random.default_rng(0), []
        for _ in range(repeats):
            hidden = rng.random((8, 8)) < 0.25
            start = time.perf_counter()
            reranker.rerank(hidden)
            seconds.append(time.perf_counter() - start)
        out[run.name] = {"faithfulness_pass_s": per_explainer, "rerank_setup_s": setup,
                         "rerank_s_median": float(np.median(seconds)), "rerank_s_max": float(np.max(seconds)),
                         "gallery": len(items)}
        rows.append([run.name, len(items), *(f"{per_explainer[e]:.1f}" if e in per_explainer else "–"
                                             for e in ("learned", "gradcam", "integrated_gradients", "occlusion",
                                                       "why_neighbour", "similarity_correspondence",
                                                       "cross_attention")),
                     f"{setup:.2f}", f"{np.median(seconds):.3f} (max {np.max(seconds):.3f})"])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    md = ("# Faithfulness and re-ranking: what a page waits for\n\n"
          f"Seconds for one query on a shared 2-core CPU (load average {load} at the end: other work ran beside "
          "it, read them as upper bounds). "
          "*Faithfulness pass*: `core.faithfulness.score_pair` for one explainer (every map and channel of it, "
          "16 steps, 5 random orders, the two randomised models). *Re-rank*: `core.rerank.Reranker.rerank` "
          f"with a random quarter of the 8×8 cells hidden, median (max) of {repeats}; *set-up*: embedding the "
          "unmodified query once.\n\n"
          + md_table(["run", "test items", "learned", "Grad-CAM", "Integrated Gradients", "occlusion",
                      "why this neighbour", "similarity correspondence", "CIA cross-attention",
                      "re-rank set-up", "re-rank"], rows))
    return out, md


def rerank_timing(runs: list[Path], queries: int, repeats: int, threads: int) -> tuple[dict, str]:
    """What one click on the re-ranking panel costs the server, with the dashboard's thread count: the re-rank alone
    (`Reranker.rerank`: the hidden query's forward and the whole test set's cosines and ranks), and with the
    picker drawn again (the query with its cells filled, the figure and its JSON). A random quarter of the
    dashboard's hiding grid is hidden per click; `queries` queries spread over the test set, `repeats` clicks
    each; the set-up is the Reranker's construction (once per query: one forward of the unmodified query)."""
    from core.rerank import Reranker
    from dashboard.counterfactual import GRID_SIDES
    from dashboard.figures import cell_picker, enlarge
    from dashboard.logic import to_uint8

    torch.set_num_threads(threads)
    out, rows = {}, []
    for run in runs:
        items = RunItems(run)
        model, gallery = items.model, torch.from_numpy(items.embeddings)
        with torch.inference_mode():
            h, w = model.forward_features(items.image(0)[None]).shape[-2:]
        grid = tuple(int(min(max(side, GRID_SIDES[0]), GRID_SIDES[1])) for side in (h, w))
        rng, setup, alone, panel = np.random.default_rng(0), [], [], []
        for q in np.linspace(0, len(items) - 1, queries).round().astype(int).tolist():
            image = items.image(q)
            start = time.perf_counter()
            reranker = Reranker(model, image, gallery, exclude=q)
            setup.append(time.perf_counter() - start)
            for _ in range(repeats):
                hidden = rng.random(grid) < 0.25
                start = time.perf_counter()
                reranker.rerank(hidden)
                alone.append(time.perf_counter() - start)
                start = time.perf_counter()
                reranker.rerank(hidden)
                shown = to_uint8(reranker.hidden_image(hidden).numpy())
                cell_picker(enlarge(shown, 256), hidden).to_json()
                panel.append(time.perf_counter() - start)
        stats = lambda v: {"median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "max": float(np.max(v))}
        out[run.name] = {"gallery": len(items), "grid": list(grid), "setup_s": stats(setup), "rerank_s": stats(alone),
                         "panel_s": stats(panel)}
        ms = lambda d: f"{1000 * d['median']:.0f} ({1000 * d['p95']:.0f}, {1000 * d['max']:.0f})"
        rows.append([run.name, len(items), "×".join(map(str, grid)), ms(out[run.name]["setup_s"]),
                     ms(out[run.name]["rerank_s"]), ms(out[run.name]["panel_s"])])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    md = ("# Counterfactual re-ranking: one click on the panel\n\n"
          f"Milliseconds on the CPU with {threads} PyTorch thread{'s' if threads > 1 else ''} (the dashboard's "
          f"default, METRICLENS_TORCH_THREADS), median (95th percentile, max) over {queries} queries × {repeats} clicks "
          f"per run, a random quarter of the hiding grid hidden per click. *Re-rank*: `core.rerank.Reranker.rerank` "
          "(one forward of the hidden query, the cosine to every test item, the new ranks). *With the picker*: the "
          "re-rank plus the query drawn again with its cells filled (the plotly figure and its JSON). *Set-up*: the "
          "Reranker of a new query (cached per query by the page). The target is at most 1 s per re-rank. "
          f"Load average {load} at the end (a shared 2-core machine: read them as upper bounds). The `--timing` "
          "table's re-rank column was taken with PyTorch's default thread count under heavier load.\n\n"
          + md_table(["run", "test items", "hiding grid", "set-up", "re-rank", "with the picker"], rows))
    return out, md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="run directories (default: every checkpoints/shapes_* run)")
    p.add_argument("--queries", type=int, default=4)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--channels", type=int, default=2, help="channels of a multi-channel map scored one by one")
    p.add_argument("--fill", default="mean", choices=["mean", "blur"])
    p.add_argument("--ig-steps", type=int, default=16, help="Integrated Gradients' path steps")
    p.add_argument("--infidelity-samples", type=int, default=8)
    p.add_argument("--sensitivity-queries", type=int, default=1, help="queries for sensitivity_max (0: none)")
    p.add_argument("--sensitivity-samples", type=int, default=2)
    p.add_argument("--timing", action="store_true", help="time one query's pass per explainer and one re-rank "
                                                            "instead (results: faithfulness_timing)")
    p.add_argument("--repeats", type=int, default=10, help="re-ranks timed per run (--timing) or per query (--rerank)")
    p.add_argument("--rerank", action="store_true", help="time one click of the re-ranking panel as the dashboard "
                                                         "runs it (results: faithfulness_rerank)")
    p.add_argument("--threads", type=int, default=1, help="PyTorch threads for --rerank (the dashboard's: 1)")
    p.add_argument("--name", default="faithfulness")
    p.add_argument("--tabulate", action="store_true", help="score nothing: write <name>.md again from <name>.json")
    args = p.parse_args(argv)
    if args.tabulate:  # a new layout of the scores already measured: the file keeps their date and command
        payload = read_results(args.name)
        payload.setdefault("sensitivity_queries", args.sensitivity_queries)  # not saved by runs before it was
        print(rewrite_markdown(args.name, markdown(payload["results"], payload)))
        return 0
    runs = args.runs or sorted(r for r in (ROOT / "checkpoints").glob("shapes_*") if is_complete(r))
    if args.rerank:
        out, md = rerank_timing([Path(r).resolve() for r in runs], args.queries, args.repeats, args.threads)
        write_results(f"{args.name}_rerank", {"threads": args.threads, "runs": out}, md)
        print(md)
        return 0
    if args.timing:
        out, md = timing([Path(r).resolve() for r in runs], args.repeats)
        write_results(f"{args.name}_timing", {"runs": out}, md)
        print(md)
        return 0
    results = []
    for run in runs:
        print(f"scoring {run}", flush=True)
        results.append(evaluate_run(Path(run).resolve(), args.queries, args.steps, args.channels, args.fill,
                                    args.ig_steps, args.infidelity_samples, args.sensitivity_queries, args.sensitivity_samples))
    payload = {"queries": args.queries, "steps": args.steps, "fill": args.fill, "channels": args.channels,
               "ig_steps": args.ig_steps, "sensitivity_queries": args.sensitivity_queries, "results": results}
    write_results(args.name, payload, markdown(results, payload))
    print(markdown(results, payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
