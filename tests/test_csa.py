"""CSA block: identity at initialisation, M = N with the identity assignment equals full self-attention
(the `nonlocal` block with the same weights), map shapes/normalisation and the per-pixel map, every
base/weights option, deep supervision, training on real shapes batches and the save/load round trip."""
from __future__ import annotations

import pytest
import torch

from core.config import BlockConfig, ModelConfig
from core.models.blocks.csa import CompressedSelfAttention2d, NonLocal2d
from core.registry import MAP_DESCRIPTIONS
from heads_testing import assert_falling, build, loss_terms, overfit, round_trip, shapes_batch


def _randomise_bn(block):
    """Non-zero residual branch (a fresh block is the identity) with non-trivial running statistics."""
    with torch.no_grad():
        block.bn.weight.normal_()
        block.bn.bias.normal_()
        block.bn.running_mean.normal_()
        block.bn.running_var.uniform_(0.5, 2.0)


def test_starts_as_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 6)
    for block in (CompressedSelfAttention2d(16, groups=4, num_bases=4), NonLocal2d(16, groups=2)):
        assert torch.equal(block.train()(x), x) and torch.equal(block.eval()(x), x)


def test_identity_assignment_equals_full_self_attention():
    torch.manual_seed(0)
    c, g, h, w = 16, 2, 4, 5
    csa = CompressedSelfAttention2d(c, groups=g, num_bases=h * w, base="identity", weights="assign").eval()
    _randomise_bn(csa)
    full = NonLocal2d(c, groups=g).eval()
    missing, unexpected = full.load_state_dict(csa.state_dict(), strict=False)
    assert not missing and not unexpected                           # the same θ, φ, v, out, BN
    x = torch.randn(3, c, h, w)
    torch.testing.assert_close(csa.attend(x), full.attend(x), atol=1e-6, rtol=1e-5)
    out = csa(x)
    torch.testing.assert_close(out, full(x), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out, x)
    # per-pixel reconstructed map = the exact attention row of that pixel
    torch.testing.assert_close(csa.reconstructed_map(2, 3), full.reconstructed_map(2, 3), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("base", ["assign", "pool", "kmeans"])
@pytest.mark.parametrize("weights", ["sim", "assign"])
def test_maps_shapes_and_normalisation(base, weights):
    torch.manual_seed(0)
    b, c, g, m, h, w = 2, 16, 4, 6, 6, 5
    block = CompressedSelfAttention2d(c, groups=g, num_bases=m, base=base, weights=weights)
    _randomise_bn(block)
    x = torch.randn(b, c, h, w)
    block.train()(x)
    assert block.last_maps == {}                                    # maps are produced in eval mode only
    y = block.eval()(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    base_maps, mix = block.last_maps["csa_base"], block.last_maps["csa_weights"]
    assert base_maps.shape == (b, g * m, h, w) and mix.shape == (b, g * m, h, w)
    torch.testing.assert_close(base_maps.sum((2, 3)), torch.ones(b, g * m))       # distributions over positions
    torch.testing.assert_close(mix.view(b, g, m, h, w).sum(2), torch.ones(b, g, h, w))  # over bases, per position
    query = block.reconstructed_map(1, 2)
    assert query.shape == (b, g, h, w)
    torch.testing.assert_close(query.sum((2, 3)), torch.ones(b, g))
    torch.testing.assert_close(block.reconstructed_map(10, 20, image_hw=(60, 50)), query)  # image pixel -> cell (1, 2)
    assert {"csa_base", "csa_weights"} <= set(MAP_DESCRIPTIONS)


def test_pool_assignment_is_adaptive_average_pooling():
    block = CompressedSelfAttention2d(8, groups=2, num_bases=8, base="pool")
    x = torch.randn(1, 8, 6, 8)
    s = block.assignment(x)[0, 0]                                   # M×N
    pooled = torch.nn.functional.adaptive_avg_pool2d(x[:, :4], (2, 4)).flatten(2)[0]  # c×M
    torch.testing.assert_close(x[0, :4].flatten(1) @ s.T, pooled)


def test_deep_supervision_and_explain_in_embedder():
    x, y, splits = shapes_batch(n_classes=2, per_class=4)
    cfg = ModelConfig(backbone="convnet", stage="stage3", head="gap", embed_dim=16,
                      blocks=[BlockConfig("csa", "stage2", {"num_bases": 4, "deep_supervision": True, "ds_dim": 8,
                                                           "ds_weight": 0.5})])
    model, criterion = build(cfg, splits.num_train_classes)
    model.train()
    terms = loss_terms(model, criterion, x, y)
    assert set(terms) == {"dml", "csa_stage2_deep_supervision"}
    sum(terms.values()).backward()
    block = model.blocks["stage2"][0]
    assert block.ds_head[-1].weight.grad.abs().sum() > 0
    assert block.loss(y, criterion) == {}   # consumed: nothing stale for the next step
    explanation = model.explain(x)
    assert explanation.maps["csa_base"].shape == (8, 16, 8, 8)      # 32 px input: stage2 is 8×8, G·M = 4·4
    assert block.reconstructed_map(4, 4, image_hw=(32, 32)).shape == (8, 4, 8, 8)


def test_trains_on_shapes_and_round_trips(tmp_path):
    x, y, splits = shapes_batch(n_classes=4, per_class=4)
    cfg = ModelConfig(backbone="convnet", stage="stage3", head="gap", embed_dim=32,
                      blocks=[BlockConfig("csa", "stage2", {"groups": 4, "num_bases": 8})])
    model, criterion = build(cfg, splits.num_train_classes)
    assert_falling(overfit(model, criterion, x, y, steps=12))
    block = model.blocks["stage2"][0]
    assert float(block.bn.weight.detach().abs().sum()) > 0                   # the residual branch was switched on
    model.eval()
    loaded = round_trip(model, cfg, tmp_path, splits.num_train_classes)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.explain(x).maps["csa_base"], loaded.explain(x).maps["csa_base"])
