"""The contract every registered head and block keeps, checked for each name in the registries (a new
method is covered by registering it): built with its defaults on the small `convnet` backbone it embeds a
real shapes batch, its maps (if any: GAP has none) are registered names of shape B×K×h×w, one training step through the
trainer's own loss composition (`core.train.TrainingStep`) reaches every parameter, save/load is
bit-identical, and `explain` plus the cross-image maps of `core.explain` run."""
from __future__ import annotations

import pytest
import torch

from core.config import BlockConfig, ModelConfig, TrainConfig
from core.explain import cross_attention
from core.losses import build_criterion
from core.models.embedder import build_model
from core.models.heads.base import pca_init_
from core.registry import BLOCKS, HEADS, MAP_DESCRIPTIONS
from core.train import TrainingStep
from heads_testing import round_trip, shapes_batch

CASES = [("head", name) for name in HEADS.names()] + [("block", name) for name in BLOCKS.names()]


def model_config(kind: str, name: str) -> ModelConfig:
    if kind == "head":
        return ModelConfig(backbone="convnet", head=name, embed_dim=32)
    return ModelConfig(backbone="convnet", head="gap", embed_dim=32, blocks=[BlockConfig(name, "stage2", {})])


@pytest.fixture(scope="module")
def batch():
    return shapes_batch(n_classes=4, per_class=4, size=32)


def training_step(model, x, y, num_classes):
    criterion = build_criterion(TrainConfig(loss="multi_similarity", miner=None), num_classes, model.head.out_dim)
    model.train()
    model.zero_grad(set_to_none=True)
    terms = TrainingStep(model, criterion)(x, y)
    sum(terms.values()).backward()
    return terms


@pytest.mark.parametrize("kind, name", CASES, ids=[f"{k}:{n}" for k, n in CASES])
def test_contract(kind, name, batch, tmp_path):
    x, y, splits = batch
    cfg = model_config(kind, name)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=splits.num_train_classes)

    explanation = model.explain(x)
    assert explanation.embedding.shape == (len(x), model.head.out_dim)
    torch.testing.assert_close(explanation.embedding.norm(dim=1), torch.ones(len(x)), atol=1e-4, rtol=0)
    for map_name, m in explanation.maps.items():
        assert map_name in MAP_DESCRIPTIONS, f"{name}: map {map_name!r} is not registered (core.registry.register_map)"
        assert m.dim() == 4 and m.shape[0] == len(x) and m.shape[1] >= 1 and min(m.shape[2:]) >= 1, (map_name, m.shape)
        assert torch.isfinite(m).all(), map_name

    # every parameter gets a gradient within a few optimiser steps: a zero-initialised gate (CSA's γ) opens
    # after the first, and a stateful warm-up (GSP's prototype memory) is run out before the last
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    reached: set[str] = set()
    for attempt in range(3):
        terms = training_step(model, x, y, splits.num_train_classes)
        assert terms and all(torch.isfinite(v) for v in terms.values()), terms
        reached |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        silent = [n for n, p in model.named_parameters() if p.requires_grad and n not in reached]
        if not silent:
            break
        optimiser.step()
        if attempt == 1:
            with torch.no_grad():
                for _ in range(10):
                    model.train()(x.repeat(8, 1, 1, 1))
    assert not silent, f"{name}: no gradient reaches {silent}"

    model.eval()
    loaded = round_trip(model, cfg, tmp_path, splits.num_train_classes)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        a, b = model.explain(x).maps, loaded.explain(x).maps
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    result = cross_attention(loaded, x[0], x[5])
    k = result["a_in_b"].shape[0]
    for key in ("a_in_b", "b_in_a"):
        assert result[key].dim() == 3 and result[key].shape[0] == k and torch.isfinite(result[key]).all()
        torch.testing.assert_close(result[key].sum((1, 2)), torch.ones(k), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", HEADS.names())
def test_input_projection_is_the_layer_the_head_embeds_with(name, batch):
    """`model.projection_init: pca` rewrites the layer a head names (`Head.input_projection`): it takes the
    backbone's channels, a linear one is fed exactly `Head.projection_input` (DSL: its attention-pooled features,
    whose mean the bias must centre), and the embedding is made with it (rewriting it changes the embedding)."""
    x, _, splits = batch
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="convnet", head=name, embed_dim=32), num_classes=splits.num_train_classes)
    layer = model.eval().head.input_projection()
    if layer is None:
        pytest.skip(f"{name} has no projection to start from the data")
    seen = []
    hook = layer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        features = model.forward_features(x)
        before = model(x)
    hook.remove()
    if isinstance(layer, torch.nn.Linear):  # the statistic whose mean the bias centres is what the layer is fed
        torch.testing.assert_close(model.head.projection_input(features), seen[0])
    with torch.no_grad():
        assert pca_init_(layer, model.head.projection_input(features).numpy()) > 0
        after = model(x)
    assert torch.isfinite(after).all() and not torch.allclose(before, after, atol=1e-3)
