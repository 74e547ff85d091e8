"""How a map is scored against the object (core/map_scores.py: the benchmarks and the faithfulness table), on real shapes masks."""
import numpy as np
import torch
import torch.nn.functional as F

from core.map_scores import score_maps
from core.data.shapes import ShapesSpec, generate


def _masks(n=24):
    data = generate(ShapesSpec(train_per_class=1, test_per_class=1), "test")
    return torch.from_numpy(np.stack([data.annotation(i)["mask"] for i in range(n)]))


def test_uniform_and_exact_maps_score_the_area_and_one():
    masks = _masks()
    area = masks.float().mean((1, 2)).numpy()
    uniform = score_maps(torch.full((len(masks), 1, 8, 8), 3.0), masks)    # any scale: maps are normalised
    np.testing.assert_allclose(uniform["mass"][:, 0], area, atol=1e-6)
    exact = score_maps(masks[:, None].float(), masks)                       # the mask itself, full resolution
    np.testing.assert_allclose(exact["mass"][:, 0], 1.0, atol=1e-6)
    assert (exact["hit"] == 1).all()


def test_the_object_shaped_map_is_below_one_and_inner_cells_beat_it():
    """The reference the benchmarks print beside each map: covering exactly the object at an 8×8 grid loses mass to
    the upsampling, and only a map that favours the object's inner cells scores above it."""
    masks = _masks()
    shaped = F.adaptive_avg_pool2d(masks[:, None].float(), 8)
    inner = (shaped > 0.99).float()
    keep = inner.flatten(1).sum(1) > 0                                      # objects with a cell fully inside
    area = masks.float().mean((1, 2)).numpy()
    shaped_mass = score_maps(shaped, masks)["mass"][:, 0]
    assert (shaped_mass > 2 * area).all() and (shaped_mass < 0.9).all()
    inner_mass = score_maps(inner[keep], masks[keep])["mass"][:, 0]
    assert (inner_mass > shaped_mass[keep.numpy()]).all()
    background = torch.zeros(len(masks), 1, 8, 8)
    background[:, 0, 0, 0] = 1.0                                            # a corner cell: the target is never there
    far = score_maps(background, masks)
    assert (far["mass"][:, 0] < area).all() and (far["hit"] == 0).all()
