"""DGML attentive grouping head: permutation invariance, map shapes/normalisation, groups, the
diversity term, the per-group margin loss with learnable β in the trainer's optimiser, training on
real shapes batches and the save/load round trip."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from core.losses import distance_weighted_probs, distance_weighted_triplets, margin_triplet_loss
from core.models.heads.grouping import GroupingHead, diversity_loss
from core.registry import MAP_DESCRIPTIONS
from core.train import Trainer
from heads_testing import assert_falling, overfit, round_trip, shapes_batch, trainer_for


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
    head = GroupingHead(16, 12, num_groups=3, diversity_weight=0.5, per_group_margin=False)
    out = head(torch.randn(6, 16, 4, 4))
    terms = head.loss(out, torch.tensor([0, 0, 1, 1, 2, 2]), lambda e, y: e.sum() * 0)
    torch.testing.assert_close(terms["diversity"], 0.5 * diversity_loss(out.extras["group_embeddings"]))


def test_per_group_margin_is_dgmls_with_beta_in_its_own_group(tmp_path):
    x, y, splits = shapes_batch(n_classes=3, per_class=4)
    cfg = RunConfig(data=DataConfig(max_per_class=4, val_classes=0),
                    model=ModelConfig(head="grouping", embed_dim=30),     # per-group margin is the default
                    train=TrainConfig(device="cpu", batch_size=12, lr=1e-3))
    trainer = Trainer(cfg, tmp_path, splits=splits)
    head = trainer.model.head
    assert head.per_group_margin and head.margin_beta.shape == (3, splits.num_train_classes)   # k × classes
    torch.testing.assert_close(head.margin_beta.detach(), torch.full((3, splits.num_train_classes), 1.2))
    beta_group = [g for g in trainer.optimizer.param_groups if any(p is head.margin_beta for p in g["params"])]
    assert len(beta_group) == 1 and beta_group[0]["lr"] == 5e-3 and beta_group[0]["weight_decay"] == 0.0
    query_group = [g for g in trainer.optimizer.param_groups if any(p is head.queries for p in g["params"])][0]
    assert query_group["weight_decay"] == 0.001 and query_group["lr"] == 1e-3
    head.on_train_start(trainer.context)
    terms = trainer.compute_losses(x, y)                            # labels are global, non-contiguous ids
    assert set(terms) == {"dml", "diversity"}
    sum(terms.values()).backward()
    grad = head.margin_beta.grad
    assert (grad.abs().sum(1) > 0).all()                             # every group's β learns
    assert set(head.class_index(y).tolist()) <= set(range(splits.num_train_classes))


def test_group_margin_loss_is_the_mean_of_per_group_losses_with_that_groups_beta():
    torch.manual_seed(0)
    head = GroupingHead(16, 12, num_classes=2, num_groups=3)
    head.class_index.fit([5, 9])
    z = F.normalize(torch.randn(6, 3, 4), dim=-1)
    y = torch.tensor([5, 5, 5, 9, 9, 9])
    with torch.no_grad():
        head.margin_beta.copy_(torch.tensor([[0.1, 0.2], [1.2, 1.3], [1.9, 2.0]]))
    torch.manual_seed(1)
    got = head.group_margin_loss(z, y)
    torch.manual_seed(1)
    want = []
    for g in range(3):
        t = distance_weighted_triplets(z[:, g], head.class_index(y))
        want.append(margin_triplet_loss(z[:, g], t, head.margin_beta[g, head.class_index(y)[t[0]]]))
    torch.testing.assert_close(got, torch.stack(want).mean())
    assert len({round(w.item(), 5) for w in want}) == 3             # β of the group, not of group 0


def test_margin_normalisation_counts_triplets_not_terms():
    # one triplet with both hinges active: d_ap = 1.0, d_an = 0.5 with β 1.0, α 0.2 -> 0.2 + 0.7
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5], [10.0, 0.0]])
    t = (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 3]))   # second triplet: only d_ap active
    loss = margin_triplet_loss(x, t, torch.tensor(1.0), 0.2)
    # official: (0.2 + 0.7 + 0.2) / 2 triplets with an active term (active terms would give / 3)
    torch.testing.assert_close(loss, torch.tensor(1.1 / 2), atol=1e-6, rtol=1e-6)
    assert float(margin_triplet_loss(x, (t[0][1:], t[1][1:], t[2][1:]), torch.tensor(2.0), 0.2)) == 0.0


def test_distance_weighted_sampler_never_draws_the_anchors_class():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(12, 8), dim=-1)
    y = torch.arange(12) // 3
    probs = distance_weighted_probs(x, y)
    torch.testing.assert_close(probs.sum(1), torch.ones(12))
    assert (probs[y[:, None] == y[None, :]] == 0).all()
    a, p, n = distance_weighted_triplets(x, y)
    assert (y[a] == y[p]).all() and (a != p).all() and (y[a] != y[n]).all()


def test_trains_on_shapes_and_round_trips(tmp_path):
    x, y, splits = shapes_batch(n_classes=4, per_class=4)
    cfg = ModelConfig(backbone="convnet", stage="stage3", head="grouping", embed_dim=48)
    trainer = trainer_for(cfg, splits, tmp_path / "run")
    model = trainer.model
    assert_falling(overfit(trainer, x, y, steps=12))
    model.eval()
    loaded = round_trip(model, cfg, tmp_path, splits.num_train_classes)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.explain(x).maps["group_attention"], loaded.explain(x).maps["group_attention"])
