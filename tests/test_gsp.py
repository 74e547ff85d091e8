"""GSP head: the partial-transport solver (marginals, μ = 1 -> average pooling, analytic backward vs
finite differences and vs autograd through the iterations), the maps, the prototype warm-up, ZSR,
training on real shapes batches and the save/load round trip."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from core.config import ModelConfig
from core.models.heads.gsp import GSPHead, ZeroShotRegression, greedy_k_center, greedy_k_center_tf, lipschitz_normalize
from core.models.optimal_transport import partial_transport
from core.registry import MAP_DESCRIPTIONS
from heads_testing import assert_falling, overfit, round_trip, shapes_batch, trainer_for


def _costs(b=3, m=5, h=4, w=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(b, m, h, w, generator=g, dtype=dtype)   # L2-normalised Euclidean costs lie in [0, 2]


def test_plan_marginals():
    cost = _costs()
    n = cost.shape[-2] * cost.shape[-1]
    for mu in (0.1, 0.3, 0.7):
        plan = partial_transport(cost, mu=mu, gamma=5.0, iters=100)
        assert plan.shape == (3, 6, 4, 3)
        assert (plan >= 0).all()
        torch.testing.assert_close(plan.sum(1), torch.full_like(plan[:, 0], 1 / n), atol=1e-6, rtol=0)  # columns: 1/n (T = 100)
        torch.testing.assert_close(plan[:, 1:].sum((1, 2, 3)), torch.full((3,), mu, dtype=plan.dtype))  # Σπ = μ


def test_mu_one_is_average_pooling():
    torch.manual_seed(0)
    head = GSPHead(16, 8, num_classes=None, num_prototypes=6, transport_ratio=1.0, memory_size=0).eval()
    x = torch.randn(4, 16, 5, 5)
    out = head(x)
    expected = F.normalize(head.proj(x).mean((2, 3)), dim=-1)
    torch.testing.assert_close(out.embedding, expected)
    torch.testing.assert_close(out.maps["keep"], torch.ones(4, 1, 5, 5))
    plan = partial_transport(_costs(), mu=1.0)
    assert float(plan[:, 0].abs().max()) == 0.0                     # nothing left as residual


def test_gradcheck_analytic_backward():
    cost = _costs(b=2, m=3, h=2, w=3).requires_grad_()
    for mu in (0.3, 1.0):
        assert torch.autograd.gradcheck(lambda c: partial_transport(c, mu=mu, gamma=5.0, iters=200), (cost,),
                                        eps=1e-6, atol=1e-6)


def test_analytic_matches_unrolled_autograd():
    cost = _costs(b=2, m=8, h=4, w=4, seed=1).requires_grad_()
    weight = torch.randn(2, 9, 4, 4, dtype=torch.float64)
    grads = [torch.autograd.grad((partial_transport(cost, 0.3, 5.0, 100, grad=g) * weight).sum(), cost)[0]
             for g in ("analytic", "unroll")]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-9, rtol=1e-6)


def test_solver_float32_under_autocast():
    torch.manual_seed(0)
    head = GSPHead(16, 8, num_prototypes=6, memory_size=0)
    x = torch.randn(2, 16, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    assert out.maps["prototypes"].dtype == torch.float32 and out.extras["attributes"].dtype == torch.float32
    torch.testing.assert_close(out.extras["attributes"].sum(1), torch.ones(2))


def test_maps_shapes_and_normalisation():
    torch.manual_seed(0)
    b, c, h, w, m, mu = 3, 16, 5, 4, 7, 0.3
    head = GSPHead(c, 8, num_prototypes=m, transport_ratio=mu, memory_size=0).eval()
    out = head(torch.randn(b, c, h, w))
    keep, protos, attrs = out.maps["keep"], out.maps["prototypes"], out.extras["attributes"]
    assert keep.shape == (b, 1, h, w) and protos.shape == (b, m, h, w) and attrs.shape == (b, m)
    torch.testing.assert_close(keep.mean((1, 2, 3)), torch.ones(b))            # α sums to 1: mean(α·n) = 1
    assert (keep >= -1e-6).all() and (keep <= 1 / mu + 1e-5).all()
    torch.testing.assert_close(attrs.sum(1), torch.ones(b))
    torch.testing.assert_close(protos.sum((2, 3)), h * w * mu * attrs)          # map k sums to n·μ·a_k
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(b))
    assert {"keep", "prototypes"} <= set(MAP_DESCRIPTIONS)


def test_memory_warm_up_then_k_center():
    torch.manual_seed(0)
    head = GSPHead(16, 8, num_prototypes=4, memory_size=12).train()
    x = torch.randn(5, 16, 3, 3)
    out = head(x)                                                   # 5 of 12 stored: still GAP
    assert int(head.ready) == 0 and float(out.extras["attributes"].abs().sum()) == 0
    torch.testing.assert_close(out.embedding, F.normalize(head.proj(x).mean((2, 3)), dim=-1))
    head(x); head(x)                                                # 15 ≥ 12: prototypes from the memory
    assert int(head.ready) == 1
    memory = head.memory
    assert all(bool((memory == p).all(1).any()) for p in head.prototypes.detach())
    torch.testing.assert_close(head.prototypes.detach(), greedy_k_center_tf(memory, 4))
    out = head.eval()(x)
    torch.testing.assert_close(out.extras["attributes"].sum(1), torch.ones(5))


def test_zsr_splits_and_gradients():
    torch.manual_seed(0)
    labels = torch.tensor([10, 10, 42, 42, 7, 7, 10, 42])           # global ids, not contiguous
    attrs = torch.rand(8, 6).softmax(1).requires_grad_()
    for split in ("interleave", "halves"):
        zsr = ZeroShotRegression(num_classes=3, dim=5, split=split)
        loss = zsr(attrs, labels)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert zsr.class_embeddings.grad.abs().sum() > 0 and attrs.grad.abs().sum() > 0
        attrs.grad = None
    assert sorted(zsr.class_index.labels.tolist()) == [7, 10, 42]


def test_intra_batch_variant():
    torch.manual_seed(0)
    head = GSPHead(16, 8, num_classes=3, num_prototypes=6, memory_size=0, variant="intra_batch")
    assert head.gamma == 0.1 and head.proj.bias is not None
    out = head(torch.randn(4, 16, 4, 4))
    loss = sum(head.loss(out, torch.tensor([0, 0, 1, 1]), lambda e, y: e.sum() * 0).values())
    loss.backward()
    assert head.prototypes.grad is not None


def test_trains_on_shapes_and_round_trips(tmp_path):
    x, y, splits = shapes_batch(n_classes=4, per_class=4)
    cfg = ModelConfig(backbone="convnet", stage="stage3", head="gsp", embed_dim=32,
                      head_args={"num_prototypes": 8, "memory_size": 16, "iterations": 50})
    trainer = trainer_for(cfg, splits, tmp_path / "run")
    model = trainer.model
    history = overfit(trainer, x, y, steps=12)            # batch 16: the memory fills at step 1
    assert int(model.head.ready) == 1                               # the OT pooling was active
    assert_falling(history[1:])                                     # the steps with transport pooling
    model.eval()
    loaded = round_trip(model, cfg, tmp_path, splits.num_train_classes)
    torch.testing.assert_close(loaded.head.prototypes, model.head.prototypes)
    assert int(loaded.head.ready) == 1 and torch.equal(loaded.head.memory, model.head.memory)   # warm-up state kept
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.explain(x).maps["keep"], loaded.explain(x).maps["keep"])


def test_k_center_as_the_tf_layer_and_the_pytorch_port():
    # TF: the first k memory rows are the initial cover; k picks from the rest, farthest first
    memory = torch.tensor([[0.0, 0.0], [0.0, 0.1], [5.0, 0.0], [0.0, 5.0], [1.0, 1.0], [4.0, 4.0]])
    torch.testing.assert_close(greedy_k_center_tf(memory, 2), torch.tensor([[4.0, 4.0], [5.0, 0.0]]))
    # PT (`init_protos`): starts from the first row, which it keeps
    torch.testing.assert_close(greedy_k_center(memory, 2), torch.tensor([[0.0, 0.0], [4.0, 4.0]]))


def test_tf_normalisation_divides_only_vectors_longer_than_one():
    x = torch.tensor([[0.3, 0.4], [3.0, 4.0]])
    torch.testing.assert_close(lipschitz_normalize(x), torch.tensor([[0.3, 0.4], [0.6, 0.8]]))
    torch.manual_seed(0)
    head = GSPHead(8, 6, num_prototypes=3, proto_init="random")
    assert head.normalization == "lipschitz"
    z = 0.05 * torch.randn(2, 6, 3, 3)                             # short per-position embeddings
    protos = lipschitz_normalize(head.prototypes.detach())
    feats = z.flatten(2).transpose(1, 2)
    cost = torch.cdist(feats, protos[None].expand(2, -1, -1)).transpose(1, 2).reshape(2, 3, 3, 3)
    from core.models.optimal_transport import partial_transport
    torch.testing.assert_close(head.transport(z), partial_transport(cost, head.mu, head.gamma, head.iterations),
                               atol=1e-5, rtol=1e-4)
    assert GSPHead(8, 6, normalization="l2").normalization == "l2"


def test_zsr_cross_entropy_is_bounded_as_the_official_code():
    torch.manual_seed(0)
    zsr = ZeroShotRegression(4, 6)
    zsr.class_index.fit(torch.arange(4))
    attributes, labels = torch.rand(8, 5).softmax(1), torch.arange(8) // 2
    with torch.no_grad():
        zsr.class_embeddings.mul_(20.0)                            # true-class probabilities ≪ 1e-16
    loss = zsr(attributes, labels)
    unbounded = ZeroShotRegression(4, 6, bounded=False)
    unbounded.class_index.fit(torch.arange(4))
    with torch.no_grad():
        unbounded.class_embeddings.copy_(zsr.class_embeddings)
    assert loss.item() <= -math.log(1e-16) + 1e-4 < unbounded(attributes, labels).item()
    with torch.no_grad():
        zsr.class_embeddings.div_(20.0)                            # ordinary regime: −log(p + 1e-16) = CE
        unbounded.class_embeddings.copy_(zsr.class_embeddings)
    torch.testing.assert_close(zsr(attributes, labels), unbounded(attributes, labels))


def test_augment_adds_the_max_pool_term_or_pools_with_gem():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(3, 8, 4, 4))
    plain = GSPHead(8, 6, num_prototypes=3, proto_init="random")
    w = plain.proj.weight[:, :, 0, 0]
    keep = plain(x).maps["keep"]
    avg = (keep * plain.proj(x)).mean((2, 3))
    torch.testing.assert_close(F.normalize(avg, dim=-1), plain(x).embedding)
    aug = GSPHead(8, 6, num_prototypes=3, proto_init="random", augment="max")
    aug.load_state_dict(plain.state_dict())
    torch.testing.assert_close(aug(x).embedding, F.normalize(avg + x.amax((2, 3)) @ w.T, dim=-1))
    gem = GSPHead(8, 6, num_prototypes=3, proto_init="random", augment="gem", transport_ratio=1.0)
    gem.load_state_dict({**plain.state_dict(), "gem_p": torch.tensor(3.0)})
    expected = x.clamp_min(1e-6).pow(3).mean((2, 3)).pow(1 / 3) @ w.T      # μ = 1: keep = 1 everywhere
    torch.testing.assert_close(gem(x).embedding, F.normalize(expected, dim=-1))
    gem(x).embedding.sum().backward()
    assert gem.gem_p.grad is not None and float(gem.gem_p.grad.abs()) > 0   # p is learnt


def test_eval_entropy_weight_sharpens_the_plan_only_outside_training():
    """`eval_entropy_weight` (an extension): in eval mode the head transports as a head trained at that γ would,
    in train mode as its own γ; a sharper plan concentrates the keep map; with_transport sets both."""
    torch.manual_seed(0)
    x = torch.randn(4, 16, 6, 6)
    build = lambda **kw: GSPHead(16, 8, num_prototypes=5, transport_ratio=0.2, memory_size=0, **kw)
    torch.manual_seed(1)
    head = build(entropy_weight=5.0, eval_entropy_weight=20.0)
    torch.manual_seed(1)
    smooth = build(entropy_weight=5.0)
    sharp = copy.deepcopy(smooth)
    sharp.gamma = sharp.eval_gamma = 20.0
    with torch.no_grad():
        torch.testing.assert_close(head.eval()(x).maps["keep"], sharp.eval()(x).maps["keep"])
        torch.testing.assert_close(head.train()(x).maps["keep"], smooth.train()(x).maps["keep"])
        spread = lambda keep: keep.flatten(1).std(1).mean()                  # uniform keep = 1 everywhere
        assert spread(head.eval()(x).maps["keep"]) > 1.5 * spread(smooth.eval()(x).maps["keep"])
        knob = head.with_transport(gamma=5.0).eval()
        torch.testing.assert_close(knob(x).maps["keep"], smooth.eval()(x).maps["keep"])
