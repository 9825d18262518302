"""The weighted greedy coreset against a plain NumPy loop of the same algorithm."""
import jax
import numpy as np
import pytest

from softpatch_jax.ops import coreset


def _numpy_coreset(x, m, starts, w):
    def dist(a, c):
        return np.sqrt(np.maximum(-2 * (a @ c.T) + (a * a).sum(1)[:, None] + (c * c).sum(1)[None],
                                  0))
    md = dist(x, x[starts]).mean(1) * w
    out = []
    for _ in range(m):
        s = int(np.argmax(md))
        out.append(s)
        md = np.minimum(md, dist(x, x[s:s + 1])[:, 0] * w)
    return np.array(out)


@pytest.mark.parametrize("weighted", [False, True])
def test_indices_identical_to_numpy_loop(weighted):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 16)).astype(np.float32)
    w = (rng.random(1500) > 0.2).astype(np.float32) if weighted else np.ones(1500, np.float32)
    key = jax.random.PRNGKey(3)
    ours = coreset.greedy_coreset(x, 150, key, w if weighted else None, block=64)
    ref = _numpy_coreset(x, 150, coreset.start_indices(key, 1500), w)
    np.testing.assert_array_equal(ours, ref)
    assert len(set(ours.tolist())) == 150
    assert w[ours].min() == 1.0  # excluded patches are never chosen


def test_starts_are_distinct_and_seeded():
    a = coreset.start_indices(jax.random.PRNGKey(0), 50, 10)
    b = coreset.start_indices(jax.random.PRNGKey(0), 50, 10)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 10
    assert len(coreset.start_indices(jax.random.PRNGKey(0), 4, 10)) == 4


def test_bad_size_is_an_error():
    with pytest.raises(ValueError, match="coreset size"):
        coreset.greedy_coreset(np.zeros((5, 2), np.float32), 6, jax.random.PRNGKey(0))
