"""CSA block after its authors' code: identity at init, maps returned (never stored) with the official
normalisation, adaptive weights tied to the base maps, the output built from exactly those maps, ungated
side-branch deep supervision, gradients everywhere, save/load, thread-safe explanations, and `nonlocal`."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from core.config import BlockConfig, ModelConfig
from core.models.blocks.csa import CompressedSelfAttention2d, NonLocal2d, attention_at
from core.registry import MAP_DESCRIPTIONS
from heads_testing import assert_falling, build, loss_terms, overfit, round_trip, shapes_batch, trainer_for


def _block(channels=16, groups=2, num_bases=8, gamma=0.8, **kw):
    torch.manual_seed(0)
    block = CompressedSelfAttention2d(channels, groups=groups, num_bases=num_bases, **kw).eval()
    with torch.no_grad():                                             # a trained-looking, non-identity block
        block.gamma.fill_(gamma)
        for p in block.attention.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return block


def _reference(block, x):
    """The official formula written out per group with plain matmuls (their `SelfAttn2`, gamma=True)."""
    att, g, m = block.attention, block.attention.groups, block.attention.num_bases
    b, c, h, w = x.shape
    q = F.normalize(att.query(x).flatten(2), dim=1)                   # B×C/4×N
    v = att.value(x).flatten(2)                                       # B×C×N
    bases = F.normalize(att.bases, dim=1)
    ys = []
    for k in range(g):
        logits = att.scale * bases[k * m:(k + 1) * m] @ q             # B×M×N
        a, wts = logits.softmax(2), logits.softmax(1)
        vg = v[:, k * c // g:(k + 1) * c // g]
        ys.append(vg @ a.transpose(1, 2) @ wts)                       # B×(C/G)×N
    y = att.out(torch.cat(ys, 1).view(b, c, h, w))
    return x + block.gamma * y


def test_starts_as_identity():
    x = torch.randn(2, 16, 6, 6)
    for block in (CompressedSelfAttention2d(16, groups=2, num_bases=4), NonLocal2d(16)):
        assert torch.equal(block.train()(x), x) and torch.equal(block.eval()(x), x)
        assert torch.equal(block(x, return_maps=True)[0], x)


def test_output_matches_the_official_formula():
    block = _block()
    x = torch.randn(3, 16, 5, 7)
    with torch.no_grad():
        z = block(x)
        torch.testing.assert_close(z, _reference(block, x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(z, x, atol=1e-3)


@pytest.mark.parametrize("groups,num_bases", [(1, 4), (2, 8), (4, 3)])
def test_maps_shapes_and_normalisation(groups, num_bases):
    block = _block(groups=groups, num_bases=num_bases)
    b, h, w = 2, 6, 5
    x = torch.randn(b, 16, h, w)
    with torch.no_grad():
        y, maps = block(x, return_maps=True)
    assert y.shape == x.shape and set(maps) == {"csa_base", "csa_weights"}
    base, weights = maps["csa_base"], maps["csa_weights"]
    assert base.shape == weights.shape == (b, groups * num_bases, h, w)
    torch.testing.assert_close(base.sum((2, 3)), torch.ones(b, groups * num_bases))               # over positions
    torch.testing.assert_close(weights.view(b, groups, num_bases, h, w).sum(2), torch.ones(b, groups, h, w))
    assert {"csa_base", "csa_weights"} <= set(MAP_DESCRIPTIONS)


def test_weights_are_tied_to_the_base_maps():
    """A = softmax over positions and W = softmax over bases of the same logits L, so log A − log W =
    lse_m(L)[n] − lse_n(L)[m] is a sum of a position term and a base term: every 2×2 double difference is 0.
    Separate logits, or fixed (e.g. uniform 1/M) weights, break this."""
    block = _block(groups=2, num_bases=6)
    with torch.no_grad():
        _, maps = block(torch.randn(2, 16, 5, 5), return_maps=True)
    d = (maps["csa_base"].log() - maps["csa_weights"].log()).view(2, 2, 6, 25)    # B×G×M×N
    double = d - d[..., :1, :] - d[..., :, :1] + d[..., :1, :1]
    assert double.abs().max() < 1e-3
    assert maps["csa_weights"].std() > 0.05                          # the weights do depend on the position


def test_output_is_the_attention_of_each_position_through_the_returned_maps():
    """Z[:, n] = X[:, n] + γ·Conv_out(Σ_j Â[n, j] V[:, j]) with Â[n] = Σ_m W[m, n]·A[m] (`attention_at`): the maps
    the block returns are the ones it used, and each position mixes the bases with its own weights."""
    block = _block(groups=2, num_bases=8)
    x = torch.randn(1, 16, 4, 5)
    with torch.no_grad():
        z, maps = block(x, return_maps=True)
        v = block.attention.value(x).view(1, 2, 8, 20)                # B×G×(C/G)×N
        rows = []
        for n in range(20):
            att = attention_at(maps, n // 5, n % 5)                   # B×G×h×w
            torch.testing.assert_close(att.sum((2, 3)), torch.ones(1, 2))
            rows.append(torch.einsum("bgcj,bgj->bgc", v, att.flatten(2)).reshape(1, 16))
        y = torch.stack(rows, -1).view(1, 16, 4, 5)
        torch.testing.assert_close(z, x + block.gamma * block.attention.out(y), atol=1e-5, rtol=1e-5)
        spread = torch.stack([attention_at(maps, r, c) for r in range(4) for c in range(5)])
        assert (spread - spread.mean(0)).abs().max() > 1e-2           # different positions attend differently
        with pytest.raises(IndexError):
            attention_at(maps, 4, 0)
        torch.testing.assert_close(attention_at(maps, 30, 45, image_hw=(40, 50)), attention_at(maps, 3, 4))


def test_side_branch_is_ungated_and_every_parameter_trains():
    """Official deep supervision: a separate side-branch CSA without γ, so its gradient flows at init while the
    main path's attention waits for γ (0 at init). After one step every parameter gets a gradient."""
    x, y, splits = shapes_batch(n_classes=3, per_class=4)
    cfg = ModelConfig(backbone="convnet", stage="stage3", head="gap", embed_dim=16,
                      blocks=[BlockConfig("csa", "stage2", {"ds_dim": 8})])
    model, criterion = build(cfg, splits.num_train_classes)
    block = model.blocks["stage2"][0]
    assert block.attention.num_bases == 32 and block.attention.groups == 2 and block.attention.scale == 14.0
    initial = {n: t.detach().clone() for n, t in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(2):
        terms = loss_terms(model, criterion, x, y)
        assert set(terms) == {"dml", "csa_stage2_deep_supervision"}
        opt.zero_grad()
        sum(terms.values()).backward()
        if step == 0:                                                 # γ = 0: main attention has no gradient yet
            assert float(block.gamma.grad.abs()) > 0
            assert all(p.grad.abs().sum() == 0 for p in block.attention.parameters())
            assert all(p.grad.abs().sum() > 0 for p in [*block.side.parameters(), *block.side_embed.parameters()])
        opt.step()
    used = [(n, p) for n, p in model.named_parameters()                # stage4 lies past the feature stage
            if not n.startswith("backbone.stages.") or n.split(".")[2] in model.stage_order]
    missing = [n for n, p in used if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    for part in ("attention", "side"):                               # the base vectors are learned (and saved)
        key = f"blocks.stage2.0.{part}.bases"
        assert not torch.allclose(model.state_dict()[key], initial[key])
    assert block.loss(y, criterion) == {}                             # consumed: nothing stale for the next step
    model.eval()
    model(x)
    assert block.loss(y, criterion) == {}                             # eval forwards leave nothing behind


def test_side_only_block_and_checked_options():
    block = CompressedSelfAttention2d(16, main_path=False).train()
    x = torch.randn(4, 16, 5, 5)
    assert torch.equal(block(x), x) and block(x, return_maps=True)[1] == {}
    assert block._ds_embedding.shape == (4, 64)
    with pytest.raises(ValueError, match="deep_supervision"):
        CompressedSelfAttention2d(16, main_path=False, deep_supervision=False)
    with pytest.raises(ValueError, match="divisible"):
        CompressedSelfAttention2d(18)
    cfg = ModelConfig(backbone="convnet", head="gap", embed_dim=8, blocks=[BlockConfig("csa", "stage2", {"base": "assign"})])
    with pytest.raises(ValueError, match="num_bases"):              # old options are refused, naming the valid ones
        build(cfg, 4)


def test_trains_on_shapes_and_round_trips(tmp_path):
    x, y, splits = shapes_batch(n_classes=4, per_class=4)
    cfg = ModelConfig(backbone="convnet", stage="stage3", head="gap", embed_dim=32,
                      blocks=[BlockConfig("csa", "stage2", {"num_bases": 8})])
    trainer = trainer_for(cfg, splits, tmp_path / "run")
    model = trainer.model
    assert_falling(overfit(trainer, x, y, steps=12))
    assert float(model.blocks["stage2"][0].gamma.detach().abs()) > 0           # the residual branch was switched on
    model.eval()
    loaded = round_trip(model, cfg, tmp_path, splits.num_train_classes)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        a, b = model.explain(x).maps, loaded.explain(x).maps
        assert set(a) == {"csa_base", "csa_weights"} and a["csa_base"].shape == (16, 16, 8, 8)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_concurrent_explanations_get_their_own_maps():
    """Two threads explain different images at once on one model: each must get the maps of its own image.
    A barrier before the head makes both pass the block before either collects maps, so maps stored on the
    module during forward (and read afterwards) would hand one thread the other's."""
    x, _, _ = shapes_batch(n_classes=2, per_class=1)
    cfg = ModelConfig(backbone="convnet", stage="stage3", head="gap", embed_dim=8,
                      blocks=[BlockConfig("csa", "stage2", {"num_bases": 4})])
    model, _ = build(cfg, 2)
    model.eval()
    with torch.no_grad():
        model.blocks["stage2"][0].gamma.fill_(1.0)
    expected = [model.explain(x[i:i + 1]).maps for i in range(2)]
    assert not torch.allclose(expected[0]["csa_base"], expected[1]["csa_base"])
    barrier = threading.Barrier(2, timeout=20)

    def meet(*_):                                                     # returns None: the head's input is unchanged
        barrier.wait()

    hook = model.head.register_forward_pre_hook(meet)
    got, errors = [None, None], []

    def work(i):
        try:
            got[i] = model.explain(x[i:i + 1]).maps
        except Exception as err:                                      # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        hook.remove()
    assert not errors, errors
    for i in range(2):
        for name in ("csa_base", "csa_weights"):
            torch.testing.assert_close(got[i][name], expected[i][name])


def test_nonlocal_full_attention():
    torch.manual_seed(0)
    block = NonLocal2d(16).eval()
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn(2, 16, 4, 6)
    with torch.no_grad():
        z, maps = block(x, return_maps=True)
        q, k, v = block.query(x).flatten(2), block.key(x).flatten(2), block.value(x).flatten(2)
        attn = (q.transpose(1, 2) @ k).softmax(-1)                    # B×N×N, their `SelfAttn`
        torch.testing.assert_close(z, x + 0.5 * (v @ attn.transpose(1, 2)).view_as(x), atol=1e-5, rtol=1e-5)
    assert maps["nonlocal_received"].shape == (2, 1, 4, 6)
    torch.testing.assert_close(maps["nonlocal_received"].sum((2, 3)), torch.ones(2, 1))
