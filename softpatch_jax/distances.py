"""Pairwise distances and random projections shared by the discriminators, coreset and kNN."""
import jax
import jax.numpy as jnp


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


def chunk_size(bytes_per_item: int, budget_mb: float, minimum: int = 1) -> int:
    """How many items of `bytes_per_item` fit in a memory budget of `budget_mb` MiB."""
    return max(minimum, int(budget_mb * 2**20) // max(1, bytes_per_item))
