"""Pairwise distances and random projections shared by the discriminators, coreset and kNN."""
import jax
import jax.numpy as jnp

from softpatch_jax.ops.chunking import chunk_size


def pairwise_sq_dists(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """(N, D), (M, D) -> (N, M) squared Euclidean distances, clamped at 0 (GEMM form)."""
    aa = jnp.sum(a * a, axis=-1)[:, None]
    bb = jnp.sum(b * b, axis=-1)[None, :]
    ab = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(aa + bb - 2.0 * ab, 0.0)


def self_distances(x: jnp.ndarray) -> jnp.ndarray:
    """(B, D) -> (B, B) Euclidean distances within one group.

    The group is centred first: distances do not change, and the GEMM form then loses far less
    precision to cancellation (the norms shrink to the group's spread).
    """
    x = x - jnp.mean(x, axis=0, keepdims=True)
    return jnp.sqrt(pairwise_sq_dists(x, x))


def random_projection(key: jax.Array, in_dim: int, out_dim: int) -> jnp.ndarray:
    """(in_dim, out_dim) bias-free random linear map, initialised as torch.nn.Linear's weight
    (uniform in +-1/sqrt(in_dim)), as the official code draws its projections."""
    bound = 1.0 / jnp.sqrt(in_dim)
    return jax.random.uniform(key, (in_dim, out_dim), jnp.float32, -bound, bound)


def project(features, matrix: jnp.ndarray, budget_mb: float = 1024) -> jnp.ndarray:
    """(..., D) features -> (..., d) projections, computed in row chunks under the budget."""
    flat = features.reshape(-1, features.shape[-1])
    step = chunk_size(4 * (flat.shape[1] + matrix.shape[1]), budget_mb / 2, minimum=1024)
    out = [jnp.matmul(jnp.asarray(flat[s:s + step]), matrix, precision=jax.lax.Precision.HIGHEST)
           for s in range(0, flat.shape[0], step)]
    return jnp.concatenate(out).reshape(features.shape[:-1] + (matrix.shape[1],))
