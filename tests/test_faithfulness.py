"""Faithfulness scores (core/faithfulness.py), occlusion, and the counterfactual re-ranking (core/rerank.py).

The metric is checked where the right answer is known: a model whose similarity rests on one region of the
image only. A map of that region must beat random orders, its inverse must lose to them, and a constant map
must score like them; an explainer that ignores the model must fail the randomisation check on a shipped run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.faithfulness import (MapSource, Pair, PairScorer, drop_at, faithfulness, map_sources, score_map,
                               step_counts)
from core.randomisation import randomised_models
from core.rerank import Reranker, cells_by_map

ROOT = Path(__file__).resolve().parents[1]
GAP_RUN = ROOT / "checkpoints" / "shapes_gap"
REGION = (slice(16, 32), slice(16, 32))      # pixels the region model looks at: cells (2..3, 2..3) of 8×8


class RegionModel(nn.Module):
    """Embeds only the mean colour of one 16×16 block (plus a constant): its similarity rests on that block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        colour = (x[:, :, REGION[0], REGION[1]] - 0.5).mean((2, 3))
        return F.normalize(torch.cat([colour, torch.full_like(colour[:, :1], 0.3)], 1), dim=1)


def region_image(seed: int) -> torch.Tensor:
    """Grey noise with a red block where the region model looks."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(3, 64, 64, generator=g)
    x[:, REGION[0], REGION[1]] = torch.tensor([0.9, 0.1, 0.1])[:, None, None] + 0.1 * torch.rand(3, 16, 16, generator=g)
    return x


def region_map() -> np.ndarray:
    m = np.zeros((8, 8))
    m[2:4, 2:4] = 1.0
    return m


@pytest.fixture(scope="module")
def scorer():
    return PairScorer(RegionModel(), Pair(region_image(0), region_image(1)))


def test_the_region_beats_random_and_its_inverse_loses(scorer):
    good = score_map(scorer, region_map())
    bad = score_map(scorer, -region_map())
    assert good["start_similarity"] == pytest.approx(1.0, abs=0.02)
    assert good["deletion_auc"] < good["random"]["deletion_auc"] - 0.25
    assert good["insertion_auc"] > good["random"]["insertion_auc"] + 0.08
    assert bad["deletion_auc"] > bad["random"]["deletion_auc"] + 0.05
    assert bad["insertion_auc"] < bad["random"]["insertion_auc"] - 0.25
    # the inverted control of the region map is the inverse map's own score
    assert good["inverted"]["deletion_auc"] == pytest.approx(bad["deletion_auc"], abs=1e-6)
    assert good["inverted"]["insertion_auc"] == pytest.approx(bad["insertion_auc"], abs=1e-6)


def test_drop_at_reads_the_curves_at_a_share(scorer):
    """"Hiding the top 25 % drops the similarity by …; a random 25 % by …": the region's four cells are the top
    6 %, so at 25 % the region map has dropped the similarity as far as hiding every cell does."""
    good = score_map(scorer, region_map())
    drop = drop_at(good, 0.25)
    assert drop["share"] == 0.25
    with torch.inference_mode():
        hidden = scorer.similarities(scorer.filled[None])[0, 0].item()
    assert drop["map"] == pytest.approx(scorer.start_neighbour - hidden, abs=1e-4)
    assert drop["random"] < drop["map"] - 0.1


def test_drop_at_of_a_contrast_map_is_the_margin_it_loses():
    """For "why this neighbour rather than the true match" the page says how much the margin shrinks: from the
    unoccluded margin, not from the similarity."""
    true_match = region_image(2)
    true_match[:, REGION[0], REGION[1]] = torch.tensor([0.1, 0.8, 0.2])[:, None, None]   # the true match is green
    scorer = PairScorer(RegionModel(), Pair(region_image(0), region_image(1), true_match))
    drop = drop_at(score_map(scorer, region_map(), contrast=True), 0.25)
    with torch.inference_mode():
        margins = scorer.similarities(torch.stack([scorer.query, scorer.filled]))[:, 1]
    assert margins[0] > 0.2                                   # a margin worth explaining
    assert drop["map"] == pytest.approx(float(margins[0] - margins[1]), abs=1e-4)


def test_a_constant_map_scores_like_random():
    """Ties are broken at random: a constant map is a random order (in raster order it would hide the region's
    cells at a fixed share of the curve)."""
    model, pair = RegionModel(), Pair(region_image(0), region_image(1))
    scores = [score_map(PairScorer(model, pair, seed=seed), np.ones((8, 8))) for seed in range(8)]
    for curve in ("deletion_auc", "insertion_auc"):
        constant = np.mean([s[curve] for s in scores])
        random = np.mean([s["random"][curve] for s in scores])
        assert abs(constant - random) < 0.06, (curve, constant, random)


def test_inverted_curves_are_the_reversed_order_computed_directly(scorer):
    """The inverted map's curves are read off the insertion images; hiding in the reversed order gives them."""
    rng = np.random.default_rng(3)
    order = rng.permutation(64)
    (deletion, insertion, counts) = scorer.curves([order], (8, 8), 16)
    (rev_deletion, rev_insertion, _) = scorer.curves([order[::-1]], (8, 8), 16)
    np.testing.assert_allclose(rev_deletion[0], insertion[0][::-1], atol=1e-6)
    np.testing.assert_allclose(rev_insertion[0], deletion[0][::-1], atol=1e-6)
    assert counts[0] == 0 and counts[-1] == 64
    for cells, steps in ((64, 16), (49, 16), (4096, 16), (256, 16), (3, 16)):
        c = step_counts(cells, steps)
        assert (np.diff(c) > 0).all() and (c + c[::-1] == cells).all()


@pytest.fixture(scope="module")
def gap_run():
    from core.run_items import RunItems
    return RunItems(GAP_RUN)


def _edges(image: torch.Tensor) -> np.ndarray:
    """An edge detector on the 8×8 grid: it never asks the model."""
    grey = image.mean(0)
    edges = (grey[1:, :-1] - grey[:-1, :-1]).abs() + (grey[:-1, 1:] - grey[:-1, :-1]).abs()
    return F.adaptive_avg_pool2d(edges[None, None], 8)[0, 0].numpy()


def test_an_explainer_that_ignores_the_model_fails_the_randomisation_check(gap_run):
    model = gap_run.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    query = 100
    # numpy model inputs, as a page holds them
    pair = Pair(gap_run.image(query).numpy(), gap_run.image(int(gap_run.neighbours(query)[0])).numpy())
    edges = MapSource("edges", lambda m, p: {"edges": _edges(p.query)})
    sources = [edges, *map_sources(model, ["occlusion"])]
    out = faithfulness(model, [pair], sources=sources, steps=4, random_orders=1)
    rho = {key: s["randomised_model_spearman"] for key, s in out["explainers"].items()}
    assert set(rho) == {"edges/edges", "occlusion/attribution"} and set(out["randomised"]) == {"head", "head+top_stage"}
    assert all(r["mean"] > 0.99 for r in rho["edges/edges"].values())
    assert rho["occlusion/attribution"]["head+top_stage"]["mean"] < 0.6      # the model's own answer changes
    for key, value in model.state_dict().items():                            # randomised copies, never the model
        assert torch.equal(value, before[key]), key


def test_randomised_models_reinitialise_head_then_top_stage(gap_run):
    model = gap_run.model
    copies = randomised_models(model)
    head, top = copies["head"], copies["head+top_stage"]
    changed = lambda m, prefix: any(not torch.equal(v, model.state_dict()[k]) for k, v in m.state_dict().items()
                                    if k.startswith(prefix))
    assert changed(head, "head.") and not changed(head, "backbone.")
    assert changed(top, "head.") and changed(top, f"backbone.stages.{model.stage_order[-1]}.")
    assert not changed(top, "backbone.stages.stem.")


# ---- re-ranking -------------------------------------------------------------------------------------------
def test_reranking_with_nothing_hidden_reproduces_the_ranking_exactly(gap_run):
    query = 7
    reranker = Reranker(gap_run.model, gap_run.image(query), gap_run.embeddings, exclude=query)
    same = reranker.rerank(np.zeros((8, 8), bool))
    assert np.array_equal(same.order, reranker.order_before) and np.array_equal(same.rank, reranker.rank_before)
    assert np.array_equal(same.similarity, reranker.before) and not same.delta.any()
    assert query not in same.order and same.rank[query] == 0 and len(same.order) == len(gap_run) - 1
    # the fresh embedding ranks like the stored one (the top neighbours agree)
    np.testing.assert_array_equal(reranker.order_before[:3], gap_run.neighbours(query, 3))
    assert [f["rank"] for f in same.former(5)] == [1, 2, 3, 4, 5]


def test_hiding_the_query_moves_its_neighbours(gap_run):
    query = 7
    reranker = Reranker(gap_run.model, gap_run.image(query), gap_run.embeddings, exclude=query)
    everything = reranker.rerank(np.ones((4, 4), bool))                 # any grid: the whole image filled
    flat = reranker.filled
    torch.testing.assert_close(reranker.hidden_image(np.ones((4, 4), bool)), flat)
    with torch.inference_mode():
        expected = gap_run.embeddings @ F.normalize(gap_run.model(flat[None]), dim=-1)[0].numpy()
    np.testing.assert_allclose(everything.similarity, expected, atol=1e-5)
    former = everything.former(5)
    assert [f["rank_before"] for f in former] == [1, 2, 3, 4, 5]
    assert all(f["delta"] == pytest.approx(everything.similarity[f["item"]] - reranker.before[f["item"]]) for f in former)
    assert sorted(everything.rank[everything.order][:5]) == [1, 2, 3, 4, 5]
    assert np.abs(everything.delta).max() > 0.05


def test_cells_by_map_hides_the_top_share_or_keeps_it():
    m = np.arange(16, dtype=float).reshape(4, 4)
    hidden = cells_by_map(m, 0.25)
    assert hidden.sum() == 4 and hidden[3].all()                          # the four largest values
    kept = cells_by_map(m, 0.25, keep=True)
    assert np.array_equal(kept, ~hidden)
    with pytest.raises(ValueError, match="share"):
        cells_by_map(m, 1.5)


# ---- the command -----------------------------------------------------------------------------------------
@pytest.mark.slow   # every explainer of a shipped run on three models (the run and two randomised copies)
def test_cli_scores_every_map_of_a_shipped_run(tmp_path, capsys):
    from core.__main__ import main

    out = tmp_path / "f.json"
    run = ROOT / "checkpoints" / "shapes_grouping"
    progress = tmp_path / "progress.jsonl"
    assert main(["faithfulness", str(run), "--queries", "1", "--steps", "4", "--channels", "2",
                 "--out", str(out), "--json", "--progress", str(progress)]) == 0
    text = capsys.readouterr().out
    printed = json.loads(text)
    assert "NaN" not in text and "Infinity" not in text                  # strict JSON, for any reader
    assert printed == json.loads(out.read_text())
    assert printed["run"] == str(run) and printed["queries"] == 1 and printed["fill"] == "mean"
    keys = set(printed["explainers"])
    assert {"gradcam/attribution", "integrated_gradients/attribution", "occlusion/attribution",
            "why_neighbour/difference", "learned/group_attention", "similarity_correspondence/b_in_a"} <= keys
    assert len([k for k in keys if k.startswith("learned/group_attention[")]) == 2
    for key, s in printed["explainers"].items():
        for number in (s["deletion_auc"], s["insertion_auc"], s["random"]["deletion_auc"],
                       s["inverted"]["insertion_auc"], *s["randomised_model_spearman"].values()):
            assert set(number) == {"mean", "std"}, key
        assert np.isfinite(s["deletion_auc"]["mean"]), key
        mass = s["mass_on_object"]["mean"]                                  # shapes items carry their masks
        assert (mass is None and key.startswith("why_neighbour")) or 0 <= mass <= 1, key  # a difference may be < 0
    assert 0 < printed["uniform_mass"] < 0.5 and len(printed["weights_sha256"]) == 64
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert lines[-1]["done"] == lines[-1]["total"] == 2                    # maps drawn, then curves, per query
    assert main(["faithfulness", str(tmp_path / "missing")]) == 2
