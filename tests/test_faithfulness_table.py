"""The run-level faithfulness table in words (core/faithfulness_table.py): which maps it calls faithful, on the
object, and failing the sanity check, checked on scores of real maps where the answer is known (the region
model of tests/test_faithfulness.py), and the mass on the object on real shapes masks."""
from __future__ import annotations

import numpy as np
import pytest

from core.faithfulness import MapSource, Pair, faithfulness
from core.faithfulness_table import faithful, on_object, reading, sanity
from core.map_scores import mass_on_object
from test_faithfulness import RegionModel, region_image, region_map


@pytest.fixture(scope="module")
def region_scores():
    """The region map and its inverse, scored over three queries (no randomised model)."""
    sources = [MapSource("region", lambda m, p: {"map": region_map()}),
               MapSource("inverse", lambda m, p: {"map": -region_map()})]
    pairs = [Pair(region_image(2 * i), region_image(2 * i + 1)) for i in range(3)]
    return faithfulness(RegionModel(), pairs, sources=sources, steps=8, randomise=False)["explainers"]


def test_the_region_map_is_faithful_and_its_inverse_worse_than_random(region_scores):
    assert faithful(region_scores["region/map"]) == "faithful"
    assert faithful(region_scores["inverse/map"]) == "worse than random"
    region = region_scores["region/map"]
    as_random = dict(region, deletion_auc=region["random"]["deletion_auc"], insertion_auc=region["random"]["insertion_auc"])
    assert faithful(as_random) == "like random"
    assert faithful(dict(region, insertion_auc=region_scores["inverse/map"]["insertion_auc"])) == "mixed"


def test_plausible_and_faithful_are_told_apart(region_scores):
    """The same scores read against where the object is: a faithful map off the object is not called plausible."""
    entry = dict(region_scores["region/map"], mass_on_object={"mean": 0.6, "std": 0.0})
    assert on_object(entry, 0.15) and reading(entry, 0.15) == "faithful and on the object"
    off = dict(entry, mass_on_object={"mean": 0.2, "std": 0.0})
    assert on_object(off, 0.15) is False and reading(off, 0.15) == "faithful, off the object"
    pretty = dict(region_scores["inverse/map"], mass_on_object={"mean": 0.6, "std": 0.0})
    assert reading(pretty, 0.15) == "on the object, not faithful"
    assert on_object(region_scores["region/map"], None) is None       # no masks: no claim about the object
    assert reading(region_scores["region/map"], None) == "faithful"


def _rho(*values):
    levels = ["head", "head+top_stage"][:len(values)]
    return {"randomised_model_spearman": {lvl: {"mean": v, "std": 0.0} for lvl, v in zip(levels, values)}}, levels


def test_the_sanity_check_is_judged_at_the_most_randomised_level():
    entry, levels = _rho(0.9, 0.1)
    verdict = sanity(entry, levels)
    assert verdict["passed"] is True and "head and top stage" in verdict["text"]
    assert sanity(*_rho(0.9, 0.7))["passed"] is False
    untouched = sanity(*_rho(1.0, 1.0))
    assert untouched["passed"] is False and "does not change at all" in untouched["text"]
    assert sanity({"randomised_model_spearman": {}}, [])["passed"] is None


def test_mass_on_object_of_the_mask_itself_and_of_a_uniform_map():
    from core.data.shapes import ShapesSpec, generate

    mask = generate(ShapesSpec(train_per_class=1, test_per_class=1), "test").annotation(0)["mask"]
    assert mass_on_object(np.ones((8, 8)), mask) == pytest.approx(mask.mean(), abs=1e-6)
    assert mass_on_object(mask.astype(float), mask) == pytest.approx(1.0, abs=1e-6)
    assert mass_on_object(-np.ones((8, 8)), mask) != mass_on_object(-np.ones((8, 8)), mask)   # no mass: NaN
