"""The tiled k-nearest LOF (`lof_chunk_scores`) against the plain reference
(`lof_scores_reference`: all distances, `lax.top_k`) and scikit-learn."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.neighbors import LocalOutlierFactor

from softpatch_jax.ops import discriminators

_reference = jax.jit(jax.vmap(discriminators.lof_scores_reference, in_axes=(0, None)),
                     static_argnums=1)
_fast = jax.jit(discriminators.lof_chunk_scores, static_argnums=1)
_knn = jax.jit(discriminators._k_nearest, static_argnums=(1, 2, 3))


def _gaussian(g, b, d, seed):
    return np.random.default_rng(seed).normal(size=(g, b, d)).astype(np.float32)


def _with_ties(g, b, d, seed):
    """Small integer coordinates (many exactly equal distances) and duplicated rows."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(g, b, d)).astype(np.float32)
    x[:, 1::5] = x[:, 0:1]  # every fifth row a copy of row 0: distance 0, ties
    return x


def _top_k_reference(d, k):
    """The k nearest as the reference selects them: lax.top_k(-d), diagonal excluded."""
    d = d[:, :, :d.shape[1]]
    d = jnp.where(jnp.eye(d.shape[1], dtype=bool), jnp.inf, d)
    neg, idx = jax.lax.top_k(-d, k)
    return -neg, idx


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("make", [_gaussian, _with_ties])
@pytest.mark.parametrize("extra", [1, 35])  # B = k + 1 (the least) or k + 35 (36, 38: tiles
def test_fast_lof_equals_reference(make, k, extra):  # without padding; 41 prime: padded tiles)
    b = k + extra
    x = jnp.asarray(make(6, b, 5 if make is _with_ties else 12, seed=b * 10 + k))
    ours = np.asarray(_fast(x, k))
    ref = np.asarray(_reference(x, k))
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    assert np.isfinite(ours).all()


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("b", [7, 41])
def test_neighbours_and_tie_order_equal_top_k(k, b):
    """Same neighbours in the same order as lax.top_k: by distance, equal distances by lower
    index, on data with many exact float32 ties (integer coordinates, duplicate rows)."""
    x = jnp.asarray(_with_ties(4, b, 3, seed=k + b))
    t, s = discriminators._lof_tiles(b)
    d = jax.jit(discriminators._group_distances, static_argnums=(1, 2))(x, t, s)
    knn, idx = _knn(d, k, t, s)
    ref_knn, ref_idx = _top_k_reference(d, k)
    np.testing.assert_array_equal(np.asarray(knn), np.asarray(ref_knn))
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
    dd = np.asarray(d)[:, :, :b]
    assert (np.diff(np.sort(dd, axis=-1), axis=-1) == 0).any()  # the data does have ties


def test_fast_lof_equals_reference_at_transistor_shape():
    """One chunk of the benchmark's shape (234 images, 128-d): bit for bit on this machine; the
    tolerance is the contract."""
    x = jnp.asarray(_gaussian(8, 234, 128, seed=0))
    ours, ref = np.asarray(_fast(x, 6)), np.asarray(_reference(x, 6))
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


@pytest.mark.parametrize("k", [3, 6])
def test_fast_lof_matches_sklearn_on_separated_data(k):
    """Well-separated points (no near-ties between the k-th and (k+1)-th neighbour)."""
    rng = np.random.default_rng(k)
    g = (rng.normal(size=(5, 60, 8)) * 2.0 + 5.0)
    g[:, :5] += rng.normal(size=(5, 5, 8)) * 4.0  # a few outliers per group
    g = g.astype(np.float32)
    ours = np.asarray(_fast(jnp.asarray(g), k))
    ref = np.stack([-LocalOutlierFactor(n_neighbors=k).fit(x).negative_outlier_factor_
                    for x in g.astype(np.float64)])
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_single_group_scorer_is_the_chunk_scorer():
    x = jnp.asarray(_gaussian(1, 30, 6, seed=3))
    one = jax.jit(functools.partial(discriminators.lof_scores, k=4))(x[0])
    np.testing.assert_allclose(np.asarray(one), np.asarray(_fast(x, 4))[0], rtol=1e-6)


def test_group_scores_under_a_tiny_budget_equals_one_chunk():
    g = jnp.asarray(_gaussian(13, 40, 16, seed=5))
    whole = np.asarray(_fast(g, 6))
    tiny = discriminators.group_scores(g, "lof", 6, budget_mb=0.05)  # 1 group per chunk
    np.testing.assert_allclose(tiny, whole, rtol=1e-5)
    mid = discriminators.group_scores(g, "lof", 6, budget_mb=0.3)  # uneven chunks, overlapping tail
    np.testing.assert_allclose(mid, whole, rtol=1e-5)
    host = discriminators.group_scores(np.asarray(g), "lof", 6, budget_mb=0.3)  # NumPy: padded tail
    np.testing.assert_allclose(host, whole, rtol=1e-5)


def test_chunks_are_balanced_and_within_the_budget():
    per_group = discriminators.get("lof").bytes_per_group(234, 128)
    cache = discriminators.CACHE_MB
    step = discriminators._steps(784, per_group, budget_mb=1024, cache_mb=cache)
    assert discriminators.MIN_CHUNK <= step and step * per_group <= cache * 2**20 * 1.1
    chunks = -(-784 // step)
    assert chunks * step - 784 < chunks  # the padded last chunk wastes less than one per chunk
    assert discriminators._steps(784, per_group, budget_mb=0.5, cache_mb=cache) == 1  # budget
    assert discriminators._steps(10, 10, budget_mb=1024, cache_mb=None) == 10
