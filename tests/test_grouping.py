"""DGML attentive grouping head: permutation invariance, map shapes/normalisation, groups, the
diversity term, the per-group margin loss with learnable β in the trainer's optimiser, training on
real shapes batches and the save/load round trip."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from core.models.heads.grouping import GroupingHead, diversity_loss
from core.registry import MAP_DESCRIPTIONS
from core.train import Trainer
from heads_testing import assert_falling, build, overfit, round_trip, shapes_batch


def test_invariant_to_spatial_permutation():
    torch.manual_seed(0)
    head = GroupingHead(32, 24, num_groups=3).eval()
    x = torch.randn(4, 32, 5, 6)
    perm = torch.randperm(30)
    x_perm = x.flatten(2)[:, :, perm].view_as(x)
    out, out_perm = head(x), head(x_perm)
    torch.testing.assert_close(out.embedding, out_perm.embedding, atol=1e-6, rtol=1e-5)
    attn, attn_perm = out.maps["group_attention"].flatten(2), out_perm.maps["group_attention"].flatten(2)
    torch.testing.assert_close(attn[:, :, perm], attn_perm)          # the maps move with the positions


def test_maps_groups_and_embedding():
    torch.manual_seed(0)
    b, c, h, w, k = 3, 64, 7, 7, 3
    head = GroupingHead(c, 512, num_groups=k, reduction=8)
    assert head.out_dim == 510 and head.key.out_channels == 8 and head.value.out_channels == 170  # 512 // 3 = 170
    out = head(torch.randn(b, c, h, w))
    maps = out.maps["group_attention"]
    assert maps.shape == (b, k, h, w) and (maps >= 0).all()
    torch.testing.assert_close(maps.sum((2, 3)), torch.ones(b, k))
    assert "group_attention" in MAP_DESCRIPTIONS
    assert head.groups == [slice(0, 170), slice(170, 340), slice(340, 510)]
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(b))
    for g in head.groups:                                           # per-group unit vectors, scaled by 1/√k
        torch.testing.assert_close(out.embedding[:, g].norm(dim=1), torch.full((b,), 1 / math.sqrt(k)))
    bound = 1 / math.sqrt(8)                                        # Conv2d default init: U(±1/√fan_in)
    assert head.queries.abs().max() <= bound and head.queries.std() > 0.3 * bound
    assert all(m.bias is None for m in (head.key, head.value))


def test_diversity_loss_values():
    same = F.normalize(torch.randn(5, 1, 8), dim=-1).expand(5, 3, 8)
    # three identical groups: 3 pairs of softplus(50·(1 − 0.5)) = 25, divided by k − 1 = 2
    torch.testing.assert_close(diversity_loss(same), torch.tensor(3 * F.softplus(torch.tensor(25.0)).item() / 2))
    orth = torch.eye(3).expand(5, 3, 3)
    assert float(diversity_loss(orth)) < 1e-9                        # cos 0: softplus(−25)
    head = GroupingHead(16, 12, num_groups=3, diversity_weight=0.5)
    out = head(torch.randn(6, 16, 4, 4))
    terms = head.loss(out, torch.tensor([0, 0, 1, 1, 2, 2]), lambda e, y: e.sum() * 0)
    torch.testing.assert_close(terms["diversity"], 0.5 * diversity_loss(out.extras["group_embeddings"]))


def test_per_group_margin_beta_in_optimiser(tmp_path):
    x, y, splits = shapes_batch(n_classes=3, per_class=4)
    cfg = RunConfig(data=DataConfig(max_per_class=4, val_classes=0),
                    model=ModelConfig(head="grouping", embed_dim=30, head_args={"per_group_margin": True}),
                    train=TrainConfig(loss="margin", miner="distance_weighted", device="cpu", batch_size=12))
    trainer = Trainer(cfg, tmp_path, splits=splits)
    head = trainer.model.head
    betas = [m.beta for m in head.margin_losses]
    assert len(betas) == 3 and all(b.shape == (splits.num_train_classes,) for b in betas)  # k × num_classes
    torch.testing.assert_close(torch.stack([b.detach() for b in betas]), torch.full((3, splits.num_train_classes), 1.2))
    in_optimiser = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(b) in in_optimiser for b in betas)
    head.on_train_start(trainer)
    terms = trainer.compute_losses(x, y)                            # labels are global, non-contiguous ids
    assert set(terms) == {"dml", "diversity"}
    sum(terms.values()).backward()
    assert any(float(b.grad.abs().sum()) > 0 for b in betas)
    assert set(head.class_index(y).tolist()) <= set(range(splits.num_train_classes))


def test_trains_on_shapes_and_round_trips(tmp_path):
    x, y, splits = shapes_batch(n_classes=4, per_class=4)
    cfg = ModelConfig(backbone="convnet", stage="stage3", head="grouping", embed_dim=48)
    model, criterion = build(cfg, splits.num_train_classes)
    assert_falling(overfit(model, criterion, x, y, steps=12))
    model.eval()
    loaded = round_trip(model, cfg, tmp_path, splits.num_train_classes)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.explain(x).maps["group_attention"], loaded.explain(x).maps["group_attention"])
