"""ResNet-18, ResNet-50 and Wide-ResNet-50-2 in Flax, layer for layer equal to torchvision's.

Explicit paddings as torchvision (7x7 stem padded 3, 3x3 convs padded 1, max pool padded 1 with
-inf), BatchNorm in inference mode with eps 1e-5, the stride in the 3x3 conv of a bottleneck
(torchvision v1.5). Inputs are NHWC float32, ImageNet-normalised. Feature taps: `layer1`..`layer4`;
the forward pass stops after the last tap. Module names mirror torchvision's state-dict keys
(`layer1.0.conv1` -> `layer1_0/conv1`, `downsample.0/1` -> `downsample_0/1`).
"""
from typing import Callable, Dict, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

# name: (block kind, blocks per layer, bottleneck width multiplier)
VARIANTS = {
    "resnet18": ("basic", (2, 2, 2, 2), 1),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 2),
}
TAPS = ("layer1", "layer2", "layer3", "layer4")
BN_EPS = 1e-5


def _conv(features, kernel, stride, name, dtype):
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), strides=stride, padding=[(pad, pad), (pad, pad)],
                   use_bias=False, dtype=dtype, name=name)


def _bn(name, dtype):
    return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=dtype, name=name)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        out = nn.relu(_bn("bn1", self.dtype)(_conv(self.planes, 3, self.stride, "conv1",
                                                   self.dtype)(x)))
        out = _bn("bn2", self.dtype)(_conv(self.planes, 3, 1, "conv2", self.dtype)(out))
        if self.downsample:
            x = _bn("downsample_1", self.dtype)(_conv(self.planes, 1, self.stride, "downsample_0",
                                                      self.dtype)(x))
        return nn.relu(out + x)


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    width_mult: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = self.planes * self.width_mult
        out = nn.relu(_bn("bn1", self.dtype)(_conv(width, 1, 1, "conv1", self.dtype)(x)))
        out = nn.relu(_bn("bn2", self.dtype)(_conv(width, 3, self.stride, "conv2",
                                                   self.dtype)(out)))
        out = _bn("bn3", self.dtype)(_conv(self.planes * 4, 1, 1, "conv3", self.dtype)(out))
        if self.downsample:
            x = _bn("downsample_1", self.dtype)(_conv(self.planes * 4, 1, self.stride,
                                                      "downsample_0", self.dtype)(x))
        return nn.relu(out + x)


def check_tap(variant: str, tap: str) -> int:
    if tap not in TAPS:
        raise ValueError(f"unknown tap {tap!r} for {variant}; use {', '.join(TAPS)}")
    return TAPS.index(tap)


class ResNet(nn.Module):
    """Returns {tap: (B, h, w, C) map} in float32, or {'logits': ...} when `taps` is empty."""
    variant: str = "wide_resnet50_2"
    taps: Sequence[str] = ()
    num_classes: int = 1000
    dtype: jnp.dtype = jnp.float32
    tap_hook: Optional[Callable] = None  # (tap, map) -> map, applied inline at each tap (FYD)

    @nn.compact
    def __call__(self, images) -> Dict[str, jnp.ndarray]:
        kind, counts, width_mult = VARIANTS[self.variant]
        last = max((check_tap(self.variant, t) for t in self.taps), default=3)
        x = _conv(64, 7, 2, "conv1", self.dtype)(images.astype(self.dtype))
        x = nn.relu(_bn("bn1", self.dtype)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        expansion = 1 if kind == "basic" else 4
        inplanes, out = 64, {}
        for li, (n, planes) in enumerate(zip(counts, (64, 128, 256, 512))):
            if li > last:
                break
            for bi in range(n):
                stride = 2 if (li > 0 and bi == 0) else 1
                down = bi == 0 and (stride != 1 or inplanes != planes * expansion)
                if kind == "basic":
                    x = BasicBlock(planes, stride, down, self.dtype, name=f"layer{li + 1}_{bi}")(x)
                else:
                    x = Bottleneck(planes, stride, down, width_mult, self.dtype,
                                   name=f"layer{li + 1}_{bi}")(x)
                inplanes = planes * expansion
            if TAPS[li] in self.taps:
                if self.tap_hook is not None:
                    x = self.tap_hook(TAPS[li], x)
                out[TAPS[li]] = x.astype(jnp.float32)
        if self.taps:
            return out
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return {"logits": nn.Dense(self.num_classes, name="fc")(x)}
