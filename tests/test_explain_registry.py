"""The explainer registry (core/explain.py): every registered explainer on every shipped run returns an
`Explanation` with named, described maps of a documented shape. Parametrised over the registry, so a newly
registered explainer is covered without editing this file (timm's tests/test_models.py is the anchor)."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import core.models.embedder  # noqa: F401  (registers the methods' own explainers, e.g. CSA's per-position map)
from core.explain import EXPLAINERS, Explanation, explain, explainers, feature_grid

ROOT = Path(__file__).resolve().parents[1]
RUNS = sorted(p for p in (ROOT / "checkpoints").glob("shapes_*") if (p / "metrics.json").exists())


def shapes_images(size: int, count: int = 3) -> list[torch.Tensor]:
    """Test images of the procedural shapes set (3×H×W in [0, 1]), three different classes."""
    from core.data import shapes
    data = shapes.load(shapes.ShapesSpec(image_size=size, test_per_class=1), "test")
    return [torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1) for img in data.images[:count]]


def arguments(kind: str, images: list[torch.Tensor], model) -> tuple:
    """(reference, options) an explainer of `kind` takes (core/explain.py's module doc)."""
    query, other, third = images
    _, height, width = query.shape
    if kind == "maps":
        return None, {}
    if kind == "position":
        return None, {"row": height // 3, "col": width // 2}
    if kind == "contrast":
        return other, {"true_match": third}
    if kind == "patch":
        h, w = feature_grid(model, query)
        return other, {"row": h // 2, "col": w - 1}
    return other, {}


@pytest.fixture(scope="module")
def loaded():
    from core import checkpoint as ckpt
    return {run.name: ckpt.load_run(run) for run in RUNS}


@pytest.mark.slow  # ~50 cases, a few seconds each on a busy 2-core machine
@pytest.mark.skipif(not RUNS, reason="no shipped runs in checkpoints/")
@pytest.mark.parametrize("run", [r.name for r in RUNS])
@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_every_explainer_on_every_shipped_run(loaded, run, name):
    model, cfg = loaded[run]
    entry = EXPLAINERS.get(name)
    if not entry.supports(model):
        with pytest.raises(ValueError, match="does not apply"):
            explain(model, torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), explainer=name)
        pytest.skip(f"{name} does not apply to {run}")
    images = shapes_images(cfg.data.image_size)
    reference, options = arguments(entry.kind, images, model)
    if "n_steps" in inspect.signature(entry.fn).parameters:  # Integrated Gradients: fewer steps keep it quick
        options["n_steps"] = 8
    out = explain(model, images[0], reference, explainer=name, **options)
    assert isinstance(out, Explanation)
    grid = feature_grid(model, images[0])
    block_grids = {m.shape[-2:] for m in explain(model, images[0]).maps.values()}
    size = tuple(images[0].shape[1:])
    if entry.kind != "maps":  # only a model's own maps may be absent (a head that pools uniformly has none)
        assert out.maps, f"{name} returned no map"
    for map_name, m in out.maps.items():
        assert isinstance(m, np.ndarray) and m.ndim in (2, 3), (map_name, type(m), getattr(m, "shape", None))
        assert m.shape[-2:] in {grid, size, *block_grids}, (map_name, m.shape, grid, size)
        assert np.isfinite(m).all(), map_name
        assert out.describe(map_name) != "no description registered", map_name
    for extra, values in out.extras.items():
        assert values.ndim == 1 and np.isfinite(values).all(), extra
        assert out.describe(extra) != "no description registered", extra
    if entry.kind in ("cross", "patch", "position"):  # distributions over positions
        for map_name, m in out.maps.items():
            assert np.allclose(m.reshape(1 if m.ndim == 2 else len(m), -1).sum(-1), 1, atol=1e-4), map_name


def test_reference_is_required_and_unknown_explainers_name_the_known_ones():
    from core.config import ModelConfig
    from core.models.embedder import build_model

    model = build_model(ModelConfig(backbone="convnet", head="gap", embed_dim=16)).eval()
    image = shapes_images(64)[0]
    with pytest.raises(ValueError, match="needs a reference"):
        explain(model, image, explainer="gradcam")
    with pytest.raises(KeyError, match="learned"):
        explain(model, image, explainer="no_such_explainer")
    assert {e.kind for e in explainers(model=model)} >= {"maps", "attribution", "contrast", "cross", "patch"}


def test_attribution_explainers_agree_with_captum_and_the_difference_is_exact():
    """The verb returns what core/attribution.py computes: IG's completeness (the map sums to the similarity
    gained over a black image) survives the wrapping, and the contrast map is the exact difference."""
    from core.config import ModelConfig
    from core.models.embedder import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="convnet", head="grouping", embed_dim=16)).eval()
    query, neighbour, true = shapes_images(64)
    ig = explain(model, query, neighbour, explainer="integrated_gradients", n_steps=32).maps["attribution"]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model(neighbour[None]), dim=-1)[0]
        gained = float(model(query[None])[0] @ ref - model(torch.zeros_like(query)[None])[0] @ ref)
    assert abs(float(ig.sum()) - gained) < 0.05 * max(abs(gained), 1e-3)
    out = explain(model, query, neighbour, explainer="why_neighbour", true_match=true)
    assert out.signed == {"to_neighbour", "to_true_match", "difference"}
    np.testing.assert_allclose(out.maps["difference"], out.maps["to_neighbour"] - out.maps["to_true_match"])
    # the caller's own map towards the neighbour (the Attention page draws it first) is used, not recomputed
    given = explain(model, query, neighbour, explainer="why_neighbour", true_match=true,
                    to_reference=out.maps["to_neighbour"] + 1.0)
    np.testing.assert_allclose(given.maps["difference"], out.maps["difference"] + 1.0, rtol=1e-5, atol=1e-6)
    assert np.abs(out.maps["difference"]).max() > 0          # the two references pull differently


def test_gsp_knobs_turn_on_a_copy():
    """`with_transport(mu, gamma)` (the Learn page's knobs) returns a changed copy and leaves the shared head
    alone: μ = 1 transports every position, so the copy's keep map is average pooling's uniform 1."""
    from core.config import ModelConfig
    from core.models.embedder import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="convnet", head="gsp", embed_dim=16,
                                    head_args={"num_prototypes": 4, "memory_size": 0})).eval()
    with torch.no_grad():
        features = model.forward_features(torch.stack(shapes_images(64)[:1]))
        before = model.head(features).maps["keep"]
        copy = model.head.with_transport(1.0, 10.0)
        everything, after = copy(features).maps["keep"], model.head(features).maps["keep"]
    assert (copy.mu, copy.gamma) == (1.0, 10.0) and model.head.mu == 0.3 and model.head.gamma == 5.0
    np.testing.assert_allclose(everything.numpy(), 1.0, atol=1e-4)
    assert float((before - 1).abs().max()) > 1e-3               # the head's own μ = 0.3 does not keep all alike
    torch.testing.assert_close(after, before)                   # and the shared head is unchanged
    with pytest.raises(ValueError, match="μ"):
        model.head.with_transport(0.0)
