"""PyTorch originals of our backbones, for parity tests and benchmarks only (needs torch).

The ResNets are torchvision's architecture written out (torchvision has no CPU build here), with
the same module names, so that a torchvision state dict loads into them strictly. EfficientNet-Lite
comes from the `efficientnet-lite-pytorch` package, the code its weight packages belong to.
"""
from typing import Dict, Sequence

import torch
from torch import nn

from softpatch_jax.features.backbones import resnet


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample, width_mult):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, width_mult):
        super().__init__()
        width = planes * width_mult
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet(nn.Module):
    """torchvision.models.resnet18/resnet50/wide_resnet50_2, same parameter names."""

    def __init__(self, variant: str, num_classes: int = 1000):
        super().__init__()
        kind, counts, width_mult = resnet.VARIANTS[variant]
        block = _Basic if kind == "basic" else _Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for li, (n, planes) in enumerate(zip(counts, (64, 128, 256, 512))):
            blocks = []
            for bi in range(n):
                stride = 2 if (li > 0 and bi == 0) else 1
                down = None
                if bi == 0 and (stride != 1 or inplanes != planes * block.expansion):
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                        nn.BatchNorm2d(planes * block.expansion))
                blocks.append(block(inplanes, planes, stride, down, width_mult))
                inplanes = planes * block.expansion
            setattr(self, f"layer{li + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def features(self, x, taps: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Tapped maps, stopping after the last tap (as the Flax model does)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out, last = {}, max(resnet.TAPS.index(t) for t in taps)
        for i, name in enumerate(resnet.TAPS[:last + 1]):
            x = getattr(self, name)(x)
            if name in taps:
                out[name] = x
        return out

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in resnet.TAPS:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Random BatchNorm statistics and affine terms, so that parity tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def efficientnet_lite(variant: str, weights_path: str) -> nn.Module:
    """The `efficientnet-lite-pytorch` model of `efficientnet_liteN` with its weights, eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    name = variant.replace("_", "-")
    return EfficientNet.from_pretrained(name, weights_path=weights_path).eval()


def efficientnet_tap_hooks(model: nn.Module, variant: str, taps: Sequence[str]) -> dict:
    """Registers forward hooks on the blocks of `taps`; the dict fills on each forward."""
    from softpatch_jax.features.backbones import efficientnet_lite as ours

    out = {}
    for t in taps:
        i = ours.tap_block_index(variant, t)
        model._blocks[i].register_forward_hook(
            lambda m, inp, o, t=t: out.__setitem__(t, o))
    return out
