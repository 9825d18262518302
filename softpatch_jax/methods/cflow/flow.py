"""CFLOW-AD's decoder (Gudovskiy et al., WACV 2022) as Flax modules: a conditional normalising
flow over one tapped stage's features, conditioned on a 2-D sinusoidal encoding of the position.

Each of `blocks` coupling blocks is FrEIA's `AllInOneBlock` as the official code configures it
at FrEIA commit cc5cf5e, the one the official README pins (affine coupling with a soft clamp,
SOFTPLUS global affine, a random rotation from SO(D); later FrEIA clamps clamp * tanh(a / clamp),
a different block): for
x (N, D) split into x1 (N, D - D//2) and x2 (N, D//2),

    a  = 0.1 * subnet([x1, c])                 subnet: Dense(2k) -> ReLU -> Dense(2 * D//2),
    s  = clamp * tanh(a[:, :D//2])                     k = D - D//2 + cond_dim
    x2 = x2 * exp(s) + a[:, D//2:]
    y  = ([x1, x2] * g + offset) @ R.T         g = 0.2 * log(1 + exp(0.5 * scale)), init 1
    log|det| = sum(s) + sum(log g)

and the log-likelihood per dimension of z = flow(x) is (D * -log(sqrt(2 pi)) - |z|^2 / 2 +
log|det|) / D, the official code's `get_logp(C, z, log_jac_det) / C`.
"""
import math
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def positional_encoding(dim: int, h: int, w: int) -> np.ndarray:
    """The official `positionalencoding2d(dim, h, w)`, position-major: -> (h * w, dim) float32;
    the first dim/2 channels encode the column (sin, cos interleaved), the rest the row."""
    if dim % 4:
        raise ValueError(f"cflow.condition_dim={dim} must be a multiple of 4 (sin and cos of "
                         "rows and columns)")
    half = dim // 2
    freq = np.exp(np.arange(0.0, half, 2) * -(math.log(1e4) / half))        # (half/2,)
    cols, rows = np.arange(w)[:, None] * freq, np.arange(h)[:, None] * freq  # (w|h, half/2)
    out = np.zeros((h, w, dim), np.float64)
    out[:, :, 0:half:2] = np.sin(cols)[None]
    out[:, :, 1:half:2] = np.cos(cols)[None]
    out[:, :, half::2] = np.sin(rows)[:, None]
    out[:, :, half + 1::2] = np.cos(rows)[:, None]
    return out.reshape(h * w, dim).astype(np.float32)


def _torch_uniform(fan_in: int):
    """torch.nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype,
                                                                    -bound, bound)


def special_orthogonal(key: jax.Array, dim: int) -> jnp.ndarray:
    """A Haar-random rotation (D, D) from SO(D), as scipy's special_ortho_group draws one."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (dim, dim), jnp.float32))
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    flip = jnp.where(jnp.linalg.det(q) < 0, -1.0, 1.0)
    return q.at[:, 0].multiply(flip)


def _softplus_scale(raw: jnp.ndarray) -> jnp.ndarray:
    """FrEIA's SOFTPLUS global scale: 0.1 * softplus with beta 0.5."""
    return 0.2 * jax.nn.softplus(0.5 * raw)


class Subnet(nn.Module):
    """The official `subnet_fc`: Dense(2 * inputs) -> ReLU -> Dense(outputs)."""
    outputs: int

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        k = h.shape[-1]
        h = nn.Dense(2 * k, kernel_init=_torch_uniform(k), bias_init=_torch_uniform(k))(h)
        return nn.Dense(self.outputs, kernel_init=_torch_uniform(2 * k),
                        bias_init=_torch_uniform(2 * k))(nn.relu(h))


class CouplingBlock(nn.Module):
    """One AllInOneBlock (module docstring); `__call__` forward, `inverse` its inverse."""
    dim: int
    clamp: float = 1.9

    def setup(self):
        self.d2 = self.dim // 2
        self.d1 = self.dim - self.d2
        self.subnet = Subnet(2 * self.d2)
        init = 2.0 * math.log(math.exp(0.5 * 10.0 * 1.0) - 1.0)  # scale 1 at the start
        self.scale = self.param("global_scale", nn.initializers.constant(init), (self.dim,))
        self.offset = self.param("global_offset", nn.initializers.zeros, (self.dim,))
        # Fixed, not trained: its own collection, so the optimiser never sees it.
        self.rotation = self.variable("rotation", "matrix", lambda: special_orthogonal(
            self.make_rng("params"), self.dim))

    def _coupling(self, x1, cond):
        a = 0.1 * self.subnet(jnp.concatenate([x1, cond], axis=-1))
        return self.clamp * jnp.tanh(a[:, :self.d2]), a[:, self.d2:]

    def __call__(self, x: jnp.ndarray, cond: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """(N, D), (N, C) -> (y (N, D), log|det dy/dx| (N,))."""
        x1, x2 = x[:, :self.d1], x[:, self.d1:]
        s, t = self._coupling(x1, cond)
        g = _softplus_scale(self.scale)
        y = jnp.concatenate([x1, x2 * jnp.exp(s) + t], axis=-1) * g + self.offset
        y = jnp.matmul(y, self.rotation.value.T, precision=jax.lax.Precision.HIGHEST)
        return y, jnp.sum(s, axis=-1) + jnp.sum(jnp.log(g))

    def inverse(self, y: jnp.ndarray, cond: jnp.ndarray) -> jnp.ndarray:
        v = jnp.matmul(y, self.rotation.value, precision=jax.lax.Precision.HIGHEST)
        v = (v - self.offset) / _softplus_scale(self.scale)
        x1 = v[:, :self.d1]
        s, t = self._coupling(x1, cond)
        return jnp.concatenate([x1, (v[:, self.d1:] - t) * jnp.exp(-s)], axis=-1)


class ConditionalFlow(nn.Module):
    """`blocks` coupling blocks in sequence (the official `freia_cflow_head`)."""
    dim: int
    blocks: int = 8
    clamp: float = 1.9

    def setup(self):
        self.layers = [CouplingBlock(self.dim, self.clamp) for _ in range(self.blocks)]

    def __call__(self, x: jnp.ndarray, cond: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """(N, D) features, (N, C) conditions -> (z (N, D), log|det dz/dx| (N,))."""
        logdet = jnp.zeros(x.shape[:1], x.dtype)
        for layer in self.layers:
            x, j = layer(x, cond)
            logdet = logdet + j
        return x, logdet

    def inverse(self, z: jnp.ndarray, cond: jnp.ndarray) -> jnp.ndarray:
        for layer in reversed(self.layers):
            z = layer.inverse(z, cond)
        return z


def log_prob_per_dim(z: jnp.ndarray, logdet: jnp.ndarray) -> jnp.ndarray:
    """(N, D), (N,) -> (N,) log-likelihood of the features per dimension (standard normal
    base)."""
    d = z.shape[-1]
    return (-d * LOG_SQRT_2PI - 0.5 * jnp.sum(z * z, axis=-1) + logdet) / d


def nll_loss(log_prob: jnp.ndarray) -> jnp.ndarray:
    """The official training loss per fibre: -log sigmoid(log-likelihood per dimension)."""
    return -jax.nn.log_sigmoid(log_prob)


def init(flow: ConditionalFlow, key: jax.Array, cond_dim: int):
    """-> the flow's variables {'params', 'rotation'}."""
    return flow.init(key, jnp.zeros((1, flow.dim)), jnp.zeros((1, cond_dim)))
