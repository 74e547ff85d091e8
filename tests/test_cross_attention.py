"""core.explain.cross_attention / patch_correspondence: documented shapes, maps summing to 1 over
positions, for a CIA run, a plain GAP run, a multi-learner DSL run and a generic k-group head."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelConfig
from core.explain import CROSS_SOURCES, cross_attention, feature_grid, patch_correspondence
from core.models.backbones import convnet
from core.models.embedder import Embedder, build_model
from core.models.heads.base import Head, HeadOutput

H = W = 8  # convnet: 64 px -> 8×8 features


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g)


def model(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(embed_dim=32, **kw), num_classes=4)


def assert_maps(result, k):
    for key in ("a_in_b", "b_in_a"):
        m = result[key]
        assert m.shape == (k, H, W) and (m >= 0).all(), key
        assert torch.allclose(m.sum((1, 2)), torch.ones(k), atol=1e-5), key
    assert len(result["groups"]) == k and result["group_similarity"].shape == (k,)
    assert result["description"].startswith(CROSS_SOURCES[result["source"]][:40])


def test_cia_run_uses_the_trained_cross_attention(images):
    m = model(head="gap", cia={"heads": 4})
    m.train()                                           # explain must not depend on (nor change) the mode
    r = cross_attention(m, *images)
    assert r["source"] == "cia" and m.training
    assert_maps(r, 1)
    assert -1 <= r["conditional_similarity"] <= 1
    heads = cross_attention(m, *images, per_head=True, layer=0)
    assert heads["a_in_b"].shape == (4, H, W)
    assert torch.allclose(heads["a_in_b"].sum((1, 2)), torch.ones(4), atol=1e-5)
    # the same numbers as the module's own pairwise attention: a_in_b = attention[B, A] (query from A)
    with torch.no_grad():
        m.eval()
        x = torch.stack(images)
        f = m.forward_features(x)
        _, att = m.cia.pairwise(m.forward_head(f).embedding, f)
    assert torch.allclose(r["a_in_b"][0], att[1, 0, -1].mean(0), atol=1e-6)
    assert torch.allclose(r["b_in_a"][0], att[0, 1, -1].mean(0), atol=1e-6)
    assert cross_attention(m, *images, source="similarity")["source"] == "similarity"


def test_gap_run_gets_the_generic_similarity_map(images):
    m = model(head="gap")
    r = cross_attention(m, *images)
    assert r["source"] == "similarity" and "1×1" in r["description"]
    assert_maps(r, 1)
    # for GAP the per-position embedding is the head's projection of that position's feature
    with torch.no_grad():
        m.eval()
        f = m.forward_features(torch.stack(images))
        emb = m.forward_head(f).embedding
        pos = F.normalize(m.head.proj(f[1].flatten(1).T), dim=1)            # N×D of image B
        expected = torch.softmax(pos @ emb[0] / 0.1, 0).reshape(H, W)
    assert torch.allclose(r["a_in_b"][0], expected, atol=1e-5)
    sharp = cross_attention(m, *images, temperature=0.01)["a_in_b"]
    assert sharp.max() >= r["a_in_b"].max()              # a lower temperature concentrates the map
    with pytest.raises(ValueError, match="no cross-image attention branch"):
        cross_attention(m, *images, source="cia")


def test_dsl_run_gives_one_map_per_learner(images):
    m = model(head="dsl", head_args={"learners": 3})
    r = cross_attention(m, *images)
    assert "position_embeddings" in r["description"]
    assert_maps(r, 3)
    assert r["groups"] == m.head.groups


class TwoGroupHead(Head):
    """A k-group head without position_embeddings: the generic path must use `groups` only."""

    def __init__(self, in_channels, embed_dim, num_classes=None):
        super().__init__(in_channels, embed_dim, num_classes)
        self.proj, self.out_dim = nn.Linear(2 * in_channels, embed_dim), embed_dim

    @property
    def groups(self):
        return [slice(0, self.out_dim // 2), slice(self.out_dim // 2, self.out_dim)]

    def forward(self, features):
        pooled = torch.cat([features.mean((2, 3)), features.amax((2, 3))], 1)
        e = self.proj(pooled)
        return HeadOutput(torch.cat([F.normalize(e[:, g], dim=1) for g in self.groups], 1) / 2 ** 0.5)


class NeedsContextHead(TwoGroupHead):
    def forward(self, features):
        if features.shape[-1] < 2:
            raise RuntimeError("needs at least 2 columns")
        return super().forward(features)


@pytest.mark.parametrize("head_cls, k", [(TwoGroupHead, 2), (NeedsContextHead, 1)])
def test_generic_heads(images, head_cls, k):
    torch.manual_seed(0)
    backbone = convnet()
    m = Embedder(backbone, head_cls(backbone.channels["stage4"], 16), "stage4")
    r = cross_attention(m, *images)
    assert_maps(r, k)
    if head_cls is NeedsContextHead:
        assert "raw features" in r["description"]


def test_patch_correspondence(images):
    m = model(head="gap", cia={"heads": 4})
    assert feature_grid(m, images[0]) == (H, W)
    for space in ("features", "embedding"):
        p = patch_correspondence(m, *images, 2, 5, space=space)
        assert p.shape == (H, W) and torch.allclose(p.sum(), torch.tensor(1.0), atol=1e-5)
    same = patch_correspondence(m, images[0], images[0], 3, 4, temperature=0.01)
    assert same.argmax() == 3 * W + 4                    # a patch lands on itself in the same image
    with pytest.raises(IndexError, match="outside"):
        patch_correspondence(m, *images, H, 0)


def test_runs_under_inference_mode_and_accepts_batched_images(images):
    m = model(head="gap")
    with torch.inference_mode():
        r = cross_attention(m, images[0][None], images[1][None])
    assert_maps(r, 1)
    with pytest.raises(ValueError, match="3×H×W"):
        cross_attention(m, torch.rand(64, 64), images[1])
