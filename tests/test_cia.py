"""CIA branch: pairwise shapes, the loss on S through pytorch-metric-learning, test-time embeddings
identical with and without the branch (and the branch never called), save/load, training steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import checkpoint as ckpt
from core.config import ModelConfig, RunConfig, TrainConfig
from core.evaluate import embed_dataset
from core.losses import build_criterion
from core.models.cross_attention import CrossImageAttention, build_cia
from core.models.embedder import build_model
from core.train import TrainingStep
from heads_testing import shapes_batch, trainer_for


def test_pairwise_shapes_symmetry_and_attention_sums():
    torch.manual_seed(0)
    cia = build_cia({"layers": 3, "heads": 4}, embed_dim=16, feature_channels=12)
    emb, features = F.normalize(torch.randn(5, 16), dim=1), torch.randn(5, 12, 3, 4)
    S, attention = cia.pairwise(emb, features)
    assert S.shape == (5, 5) and attention.shape == (5, 5, 3, 4, 3, 4)
    assert torch.allclose(S, S.T, atol=1e-6) and torch.allclose(S.diagonal(), torch.ones(5), atol=1e-5)
    assert torch.allclose(attention.sum((-2, -1)), torch.ones(5, 5, 3, 4), atol=1e-5)
    asym = build_cia({"symmetric": False, "heads": 4}, embed_dim=16, feature_channels=12)
    assert asym.pairwise(emb, features)[0].shape == (5, 5)


def test_conditioning_alternates_between_the_two_images():
    """e¹_{i|j} depends on i's tokens and j's embedding only; the second layer brings in j's tokens."""
    torch.manual_seed(0)
    emb, features = F.normalize(torch.randn(3, 8), dim=1), torch.randn(3, 6, 2, 2)
    one = CrossImageAttention(8, 6, layers=1, heads=2)
    cond, _ = one.conditional_embeddings(emb, features)
    moved = features.clone()
    moved[1] = torch.randn(6, 2, 2)                      # change image 1's tokens only
    cond_moved, _ = one.conditional_embeddings(emb, moved)
    assert torch.allclose(cond[0, 1], cond_moved[0, 1])  # e_{0|1}: tokens of 0, query e_1
    assert not torch.allclose(cond[1, 0], cond_moved[1, 0])
    two = CrossImageAttention(8, 6, layers=2, heads=2)
    a, _ = two.conditional_embeddings(emb, features)
    b, _ = two.conditional_embeddings(emb, moved)
    assert not torch.allclose(a[0, 1], b[0, 1])          # e²_{0|1} queries with e¹_{1|0}, built on 1's tokens


@pytest.mark.parametrize("loss, miner", [("multi_similarity", "multi_similarity"), ("margin", None),
                                         ("triplet", "triplet"), ("contrastive", None)])
def test_loss_on_S_equals_the_criterion_when_S_is_the_plain_cosine(loss, miner):
    torch.manual_seed(0)
    emb, labels = F.normalize(torch.randn(12, 16), dim=1), torch.arange(12) // 3
    criterion = build_criterion(TrainConfig(loss=loss, miner=miner), 4, 16)
    cia = CrossImageAttention(16, 8, heads=4)
    ours = cia.conditional_loss(emb @ emb.T, emb, labels, criterion)
    assert torch.allclose(ours, criterion(emb, labels), atol=1e-4)
    assert cia.conditional_criterion(criterion)[0] is not criterion.loss    # a copy: the trainer's loss is untouched
    assert criterion.loss.distance.__class__.__name__ in ("CosineSimilarity", "LpDistance")


def test_proxy_losses_and_bad_config_are_refused():
    criterion = build_criterion(TrainConfig(loss="proxy_anchor"), 4, 16)
    cia = CrossImageAttention(16, 8, heads=4)
    emb = F.normalize(torch.randn(4, 16), dim=1)
    with pytest.raises(ValueError, match="pair-based|proxy"):
        cia.conditional_loss(emb @ emb.T, emb, torch.tensor([0, 0, 1, 1]), criterion)
    with pytest.raises(ValueError, match="unknown model.cia keys: layer"):
        build_cia({"layer": 2}, 16, 8)
    with pytest.raises(ValueError, match="must divide"):
        build_cia({"heads": 5}, 16, 8)


def test_test_time_embeddings_are_identical_and_the_branch_is_never_called(monkeypatch):
    x, y, splits = shapes_batch(n_classes=2, per_class=3)
    torch.manual_seed(0)
    with_cia = build_model(ModelConfig(head="gap", embed_dim=32, cia={}), num_classes=2)
    plain = build_model(ModelConfig(head="gap", embed_dim=32), num_classes=2)
    state = {k: v for k, v in with_cia.state_dict().items() if not k.startswith("cia.")}
    assert len(state) < len(with_cia.state_dict())
    plain.load_state_dict(state)

    def refuse(*args, **kwargs):
        raise AssertionError("the CIA branch ran at test time")
    for name in ("forward", "pairwise", "loss", "conditional_embeddings"):
        monkeypatch.setattr(with_cia.cia, name, refuse)
    calls = []
    with_cia.cia.register_forward_pre_hook(lambda *a: calls.append(1))
    with_cia.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(with_cia(x), plain(x))
        a, b = with_cia.explain(x), plain.explain(x)
    assert torch.equal(a.embedding, b.embedding) and a.maps.keys() == b.maps.keys()
    test_images = torch.utils.data.Subset(splits.test, range(0, len(splits.test), 10))
    e_cia, _ = embed_dataset(with_cia, test_images, batch_size=64)
    e_plain, _ = embed_dataset(plain, test_images, batch_size=64)
    assert np.array_equal(e_cia, e_plain) and not calls


def test_save_load_round_trip_keeps_the_branch(tmp_path):
    cfg = RunConfig(model=ModelConfig(head="gap", embed_dim=32, cia={"layers": 1, "heads": 4}))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    cfg.save(tmp_path / ckpt.CONFIG)
    ckpt.save_weights(tmp_path, model, None, epoch=0)
    loaded, _ = ckpt.load_run(tmp_path)
    assert loaded.cia is not None and len(loaded.cia.layers) == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_training_steps_on_real_shapes_batches_lower_both_losses(tmp_path):
    x, y, splits = shapes_batch(n_classes=4, per_class=4)
    trainer = trainer_for(ModelConfig(head="gap", embed_dim=32, cia={"heads": 4}), splits, tmp_path,
                          optimizer="adam", weight_decay=0.0)
    kv = trainer.model.cia.layers[0].to_kv.weight
    history = {"dml": [], "cia": []}
    for _ in range(10):
        before = kv.detach().clone()
        terms = trainer.step((x, y))                     # the trainer's own step: head + CIA branch, one update
        assert not torch.equal(kv, before)               # the branch's weights were reached and updated
        for k in history:
            history[k].append(terms[k])
    for k, h in history.items():
        assert np.mean(h[-2:]) < 0.9 * np.mean(h[:2]), (k, h)


@pytest.mark.parametrize("mlp_ratio", [2.0, 0.0])
def test_each_layer_adds_its_update_to_the_query(mlp_ratio):
    """The residual: with the attention output and the MLP silenced, a layer returns its queries; with
    them on, the output is query + attention update (+ MLP update of that)."""
    torch.manual_seed(0)
    cia = CrossImageAttention(8, 6, layers=1, heads=2, mlp_ratio=mlp_ratio)
    layer = cia.layers[0]
    queries, tokens = torch.randn(3, 4, 8), torch.randn(3, 5, 6)
    x, _ = layer(queries, tokens)
    with torch.no_grad():
        for p in layer.to_out.parameters():
            p.zero_()
        if layer.mlp is not None:
            for p in layer.mlp[-1].parameters():
                p.zero_()
    silent, _ = layer(queries, tokens)
    torch.testing.assert_close(silent, queries)
    assert not torch.allclose(x, queries)                      # and the update is not empty normally


def test_weight_lambda_scales_the_conditional_loss():
    x, y, _ = shapes_batch(n_classes=4, per_class=4)
    terms = {}
    for weight in (1.0, 0.25, 0.0):
        torch.manual_seed(0)
        model = build_model(ModelConfig(head="gap", embed_dim=16, cia={"heads": 4, "weight": weight}), num_classes=4)
        criterion = build_criterion(TrainConfig(loss="multi_similarity", miner=None), 4, 16)
        step = TrainingStep(model, criterion)                  # the trainer's loss composition
        terms[weight] = step(x, y)
    assert terms[1.0]["cia"].item() > 0
    torch.testing.assert_close(terms[0.25]["cia"], 0.25 * terms[1.0]["cia"])
    assert terms[0.0]["cia"].item() == 0.0
    torch.testing.assert_close(terms[0.25]["dml"], terms[1.0]["dml"])   # λ touches only the CIA term
