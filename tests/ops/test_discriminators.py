"""Discriminators against scikit-learn's LOF and NumPy brute-force references."""
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.neighbors import LocalOutlierFactor

from softpatch_jax.ops import discriminators


def _groups(p=6, b=40, d=32, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(p, b, d)) * 2.0 + 5.0
    g[:, :4] += rng.normal(size=(p, 4, d)) * 3.0  # a few outliers per position
    return g.astype(np.float32)


@pytest.mark.parametrize("k", [5, 6, 10])
def test_lof_matches_sklearn(k):
    g = _groups()
    ours = discriminators.group_scores(jnp.asarray(g), "lof", k=k)
    ref = np.stack([-LocalOutlierFactor(n_neighbors=k).fit(x).negative_outlier_factor_ for x in g])
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    assert (ours[:, :4].mean() > ours[:, 4:].mean())


def test_gaussian_matches_numpy_mahalanobis():
    g = _groups(d=16)
    ours = discriminators.group_scores(jnp.asarray(g), "gaussian")
    ref = []
    for x in g.astype(np.float64):
        cov = np.cov(x.T) + 0.01 * np.eye(x.shape[1])
        delta = x - x.mean(0)
        ref.append(1 + np.sqrt(np.einsum("bi,ij,bj->b", delta, np.linalg.inv(cov), delta)))
    np.testing.assert_allclose(ours, np.stack(ref), rtol=1e-4)


def test_nearest_matches_brute_force():
    g = _groups()
    ours = discriminators.group_scores(jnp.asarray(g), "nearest")
    ref = []
    for x in g.astype(np.float64):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        ref.append(1 + d.min(1))
    np.testing.assert_allclose(ours, np.stack(ref), rtol=1e-4)


@pytest.mark.parametrize("method", discriminators.names())
def test_chunked_equals_unchunked(method):
    g = jnp.asarray(_groups(p=13))
    whole = discriminators.group_scores(g, method, budget_mb=1024)
    tiny = discriminators.group_scores(g, method, budget_mb=0.2)  # chunks of 4-6, padded tail
    np.testing.assert_allclose(tiny, whole, rtol=1e-6)


def test_k_not_smaller_than_group_is_an_error():
    with pytest.raises(ValueError, match=r"lof discriminator \(k=40\) needs groups of at least 41"):
        discriminators.group_scores(jnp.asarray(_groups(b=40)), "lof", k=40)


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="unknown discriminator"):
        discriminators.group_scores(jnp.asarray(_groups()), "median")


def test_a_registered_discriminator_runs_through_the_chunked_loop():
    def spread(x):  # distance to the group mean
        return jnp.sqrt(jnp.sum((x - x.mean(0)) ** 2, axis=1))

    discriminators.register("test_spread", lambda k: spread)
    g = _groups(p=7)
    ours = discriminators.group_scores(jnp.asarray(g), "test_spread", budget_mb=0.01)
    ref = np.sqrt(((g - g.mean(1, keepdims=True)) ** 2).sum(-1))
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    assert "test_spread" in discriminators.names()


def test_a_neighbour_form_declares_both_its_count_and_its_scorer():
    with pytest.raises(ValueError, match="needs both neighbours and from_neighbours"):
        discriminators.register("test_half", lambda k: None, neighbours=lambda k: k)
    assert "test_half" not in discriminators.names()
