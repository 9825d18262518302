"""Pairwise distances and random projections shared by the discriminators, coreset and kNN."""
import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.ops.chunking import chunk_size, host_blas


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


def sketch_basis(x: np.ndarray, k: int):
    """Rows (n, d) -> (mu (d,), P (d, k)): the mean and the top k principal directions
    (orthonormal, float64) of at most 16384 evenly spaced rows; the basis of `sketch_rows`."""
    sample = x[::max(1, len(x) // 16384)].astype(np.float64)
    mu = sample.mean(axis=0)
    k = min(k, x.shape[1])
    with host_blas():
        cov = np.cov(sample, rowvar=False).reshape(x.shape[1], -1)
        p = np.linalg.eigh(cov)[1][:, ::-1][:, :k]
    return mu, p


def sketch_rows(x: np.ndarray, mu: np.ndarray, p: np.ndarray, step: int = 16384):
    """Rows (n, d) float32 -> their float32 sketches z^ (n, k+1) of z = (P^T (x - mu),
    |(I - P P^T)(x - mu)|), computed in float64 (so |x - y| >= |z(x) - z(y)|, the bound the
    pruned coreset and the leave-out bounds use), e, the largest |z^ - z|, and the largest
    |x| (float64)."""
    k = p.shape[1]
    z = np.empty((len(x), k + 1), np.float32)
    err = norm = 0.0
    for s in range(0, len(x), step):  # float64, in chunks
        v = x[s:s + step].astype(np.float64)
        norm = max(norm, float(np.sqrt((v * v).sum(axis=1).max())))
        v -= mu
        y = v @ p
        resid = v - y @ p.T  # the residual itself: no cancellation in its norm
        exact = np.concatenate([y, np.sqrt((resid * resid).sum(axis=1))[:, None]], axis=1)
        z[s:s + step] = exact
        err = max(err, float(np.sqrt(((z[s:s + step] - exact) ** 2).sum(axis=1).max())))
    return z, err, norm
