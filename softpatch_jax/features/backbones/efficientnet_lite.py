"""EfficientNet-Lite0/1/2 in Flax, layer for layer equal to the lukemelas-style PyTorch model.

The PyTorch model (package `efficientnet-lite-pytorch`) pads like TensorFlow's 'SAME' (asymmetric:
the extra row/column goes at the bottom/right), uses ReLU6, no squeeze-excitation, BatchNorm with
eps 1e-3, and keeps the stem and head unscaled. Inputs are NHWC float32, ImageNet-normalised.

Padding: the PyTorch model computes its 'SAME' paddings once, for the variant's native resolution
(224/240/260), and applies them at any input size; we do the same by default, so that the two agree
at every size (`pad_size=-1` pads for the actual input instead, as TensorFlow does). At the native
resolution, and whenever the sizes along the network stay even, both rules coincide.

Feature taps: `stage1`..`stage7` (the output of each block group) or `blocks.N` (the output of the
N-th MBConv block, as PyTorch's `_blocks.N`). The forward pass stops after the last tap. A
`tap_hook` transforms each tapped map inline, so later stages see its output (FYD's feature STNs).
"""
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

# (repeats, kernel, stride, expand ratio, in filters, out filters) of Lite0; scaled for Lite1/2.
_BLOCK_GROUPS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# name: (width coefficient, depth coefficient, native resolution)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}

BN_EPS = 1e-3


def _round_filters(filters: int, width: float) -> int:
    if width == 1.0:
        return filters
    divisor = 8
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def block_specs(variant: str) -> Tuple[Tuple[int, int, int, int, int, int], ...]:
    """Per-block (group index, kernel, stride, expand, in, out) after width/depth scaling."""
    width, depth, _ = VARIANTS[variant]
    specs = []
    last = len(_BLOCK_GROUPS) - 1
    for g, (reps, k, s, e, cin, cout) in enumerate(_BLOCK_GROUPS):
        cin, cout = _round_filters(cin, width), _round_filters(cout, width)
        if g == 0:
            cin = 32  # stem is fixed
        if g not in (0, last):
            reps = int(math.ceil(depth * reps))  # the first and last groups keep their repeats
        for r in range(reps):
            specs.append((g, k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
    return tuple(specs)


def tap_block_index(variant: str, tap: str) -> int:
    """Index of the MBConv block whose output a tap name refers to."""
    specs = block_specs(variant)
    if tap.startswith("stage"):
        group = int(tap[len("stage"):]) - 1
        idx = [i for i, s in enumerate(specs) if s[0] == group]
        if not idx:
            raise ValueError(f"unknown tap {tap!r} for {variant}; use stage1..stage7 or blocks.N")
        return idx[-1]
    if tap.startswith("blocks."):
        i = int(tap[len("blocks."):])
        if not 0 <= i < len(specs):
            raise ValueError(f"unknown tap {tap!r} for {variant}: it has blocks.0..blocks.{len(specs)-1}")
        return i
    raise ValueError(f"unknown tap {tap!r} for {variant}; use stage1..stage7 or blocks.N")


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """TensorFlow 'SAME' padding for one spatial dimension: (before, after)."""
    out = -(-size // stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2


class DepthwiseConv(nn.Module):
    """Depthwise convolution as a sum of k*k shifted, per-channel-scaled slices.

    Same parameter as nn.Conv(feature_group_count=C) (kernel (k, k, 1, C)), same result; XLA's CPU
    grouped convolution is 10-40x slower than this elementwise form, which fuses into one loop.
    """
    kernel: int
    stride: int
    padding: Sequence[Tuple[int, int]]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        w = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel, self.kernel, 1, c))
        w = w.astype(self.dtype)
        xp = jnp.pad(x, ((0, 0), tuple(self.padding[0]), tuple(self.padding[1]), (0, 0)))
        k, s = self.kernel, self.stride
        h_out = (xp.shape[1] - k) // s + 1
        w_out = (xp.shape[2] - k) // s + 1
        out = None
        for dy in range(k):
            for dx in range(k):
                tap = jax.lax.slice(xp, (0, dy, dx, 0),
                                    (xp.shape[0], dy + (h_out - 1) * s + 1,
                                     dx + (w_out - 1) * s + 1, c), (1, s, s, 1)) * w[dy, dx, 0]
                out = tap if out is None else out + tap
        return out


class _ConvBN(nn.Module):
    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: bool = True
    pad_size: int = -1  # spatial size the padding is computed for; -1 = the input's
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        pads = [same_padding(self.pad_size if self.pad_size > 0 else x.shape[d], self.kernel,
                             self.stride) for d in (1, 2)]
        if self.groups > 1:
            x = DepthwiseConv(self.kernel, self.stride, pads, self.dtype, name="conv")(x)
        else:
            x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                        padding=pads, use_bias=False, dtype=self.dtype, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=self.dtype, name="bn")(x)
        return jnp.clip(x, 0.0, 6.0) if self.act else x


class MBConv(nn.Module):
    kernel: int
    stride: int
    expand: int
    in_filters: int
    out_filters: int
    pad_size: int = -1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs):
        x = inputs
        hidden = self.in_filters * self.expand
        if self.expand != 1:
            x = _ConvBN(hidden, dtype=self.dtype, name="expand")(x)
        x = _ConvBN(hidden, self.kernel, self.stride, groups=hidden, pad_size=self.pad_size,
                    dtype=self.dtype, name="depthwise")(x)
        x = _ConvBN(self.out_filters, act=False, dtype=self.dtype, name="project")(x)
        if self.stride == 1 and self.in_filters == self.out_filters:
            x = x + inputs
        return x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite. Returns {tap: (B, h, w, C) map}, or logits when `taps` is empty."""
    variant: str = "efficientnet_lite0"
    taps: Sequence[str] = ()
    num_classes: int = 1000
    pad_size: int = 0  # 0: the native resolution (as PyTorch); -1: the actual input size
    dtype: jnp.dtype = jnp.float32
    tap_hook: Optional[Callable] = None  # (tap, map) -> map, applied inline at each tap (FYD)

    @nn.compact
    def __call__(self, images) -> Dict[str, jnp.ndarray]:
        specs = block_specs(self.variant)
        wanted = {tap_block_index(self.variant, t): t for t in self.taps}
        last = max(wanted) if wanted else len(specs) - 1
        size = VARIANTS[self.variant][2] if self.pad_size == 0 else self.pad_size
        x = _ConvBN(32, 3, 2, pad_size=size, dtype=self.dtype, name="stem")(
            images.astype(self.dtype))
        size = -(-size // 2) if size > 0 else size
        out = {}
        for i, (_, k, s, e, cin, cout) in enumerate(specs[: last + 1]):
            x = MBConv(k, s, e, cin, cout, size, dtype=self.dtype, name=f"blocks_{i}")(x)
            size = -(-size // s) if size > 0 else size
            if i in wanted:
                if self.tap_hook is not None:
                    x = self.tap_hook(wanted[i], x)
                out[wanted[i]] = x.astype(jnp.float32)
        if self.taps:
            return out
        x = _ConvBN(1280, dtype=self.dtype, name="head")(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return {"logits": nn.Dense(self.num_classes, name="fc")(x)}
