"""PatchCore-random (`bank.sampler=random`, issue 29): a uniform random subsample of the
eligible patches, the coreset's size, seeded; for every memory-bank method."""
import jax
import numpy as np
import pytest

from softpatch_jax import methods
from softpatch_jax.methods.base import Features
from softpatch_jax.ops.coreset import RandomSubsample

from conftest import contaminated_pile, load_config


def _config(method, fields=None):
    c = load_config("default.py")
    c.update_from_flattened_dict({"model.method": method, "bank.coreset_ratio": 0.2,
                                  "bank.projection_dim": 8, "denoise.lof_k": 3,
                                  **(fields or {})})
    c.data.image_size = 12
    c.runtime.memory_budget_mb = 64
    return c


def test_random_subsample_is_seeded_distinct_and_eligible_only():
    s = RandomSubsample()
    rows = np.zeros((50, 3), np.float32)
    weights = np.ones(50, np.float32)
    weights[::3] = 0.0
    a = s.select(s.project(rows, None), 20, jax.random.PRNGKey(1), weights)
    b = s.select(rows, 20, jax.random.PRNGKey(1), weights)
    c = s.select(rows, 20, jax.random.PRNGKey(2), weights)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.sort(a), np.sort(c))
    assert len(set(a.tolist())) == 20 and (weights[a] > 0).all()
    with pytest.raises(ValueError, match="random subsample of 40 rows asked of 33 eligible"):
        s.select(rows, 40, jax.random.PRNGKey(1), weights)


@pytest.mark.parametrize("method", ["patchcore", "softpatch", "softpatch_plus"])
def test_every_bank_method_takes_a_random_bank_of_the_coresets_size(method):
    x, _, _ = contaminated_pile(10, 0.2, seed=0)
    feats = Features(x, (6, 6))
    greedy = methods.from_config(_config(method)).fit(feats, jax.random.PRNGKey(0),
                                                      progress=False)
    m = methods.from_config(_config(method, {"bank.sampler": "random"}))
    first = m.fit(feats, jax.random.PRNGKey(0), progress=False)
    again = m.fit(feats, jax.random.PRNGKey(0), progress=False)
    other = m.fit(feats, jax.random.PRNGKey(1), progress=False)
    arrays, greedy_arrays = first.to_arrays(), greedy.to_arrays()
    for name, value in arrays.items():
        assert value.shape == greedy_arrays[name].shape  # the same bank sizes
        np.testing.assert_array_equal(value, again.to_arrays()[name])  # seeded
    key = [k for k in arrays if k.endswith("features")][0]
    assert not np.array_equal(arrays[key], other.to_arrays()[key])
    assert not np.array_equal(arrays[key], greedy_arrays[key])
    # Every entry is the training patch its source and position say.
    src = [k for k in arrays if k.endswith("sources")][0]
    pos = src.replace("sources", "positions")
    np.testing.assert_array_equal(arrays[key], x[arrays[src], arrays[pos]])


def test_denoised_patches_are_never_drawn():
    x, _, _ = contaminated_pile(10, 0.3, seed=1)
    m = methods.from_config(_config("softpatch", {"bank.sampler": "random",
                                                  "denoise.ratio": 0.3}))
    fitted, noise = m.fit_with_noise(Features(x, (6, 6)), jax.random.PRNGKey(0), progress=False)
    assert noise.removed.any()
    assert not noise.removed[fitted.sources, fitted.positions].any()


def test_a_sweep_entry_names_it_and_an_unknown_sampler_is_refused():
    c = _config("softpatch")
    assert methods.sweep_overrides("patchcore@sampler=random", c) == {
        "model.method": "patchcore", "bank.sampler": "random"}
    with pytest.raises(ValueError, match="bank.sampler='kmeans' must be one of greedy, random"):
        methods.from_config(_config("patchcore", {"bank.sampler": "kmeans"}))


def test_a_batched_sweep_batches_greedy_coresets_only():
    from softpatch_jax.ops.coreset import GreedyCoreset
    from softpatch_jax.pipeline import batching

    hub = batching.CoresetHub()
    assert isinstance(batching.batched(GreedyCoreset(), hub), batching.BatchedCoreset)
    random = RandomSubsample()
    assert batching.batched(random, hub) is random  # nothing to wait for at the hub
