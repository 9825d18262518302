"""SoftPatch fit/predict on synthetic patch features."""
import jax
import numpy as np
import pytest

from softpatch_jax.methods import patchcore, softpatch
from softpatch_jax.methods.base import Features
from softpatch_jax.ops import knn
from softpatch_jax.ops.coreset import GreedyCoreset

from conftest import load_config


def _features(b=30, p=9, d=48, noisy=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(p, d)) * 3
    feats = centres[None] + rng.normal(size=(b, p, d)) * 0.3
    feats[:noisy, 4] += rng.normal(size=(noisy, d)) * 3.0  # defects at position 4, each its own
    return feats.astype(np.float32)


def _softpatch(discriminator="lof", projection_dim=128, **kw):
    return softpatch.SoftPatch(discriminator=discriminator, projection_dim=projection_dim,
                               layers=("stage3",),
                               sampler=GreedyCoreset(projection_dim=projection_dim), **kw)


def _fit(feats, key, discriminator, **kw):
    return _softpatch(discriminator, **kw).fit_details(Features(feats, (3, 3)), key, False)


def _predict(test, bank, soft_weight):
    return patchcore.patch_scores(test, bank, knn.BruteForce(), soft_weight)


def test_denoise_threshold_is_the_linear_quantile():
    torch = pytest.importorskip("torch", reason="torch not installed")
    scores = np.random.default_rng(0).random((20, 7)).astype(np.float32)
    sampling, soft = softpatch.denoise(scores, 0.15)
    cut = torch.quantile(torch.tensor(scores.reshape(-1)), 0.85).item()
    np.testing.assert_array_equal(sampling, (scores <= cut).astype(np.float32))
    assert abs(sampling.mean() - 0.85) < 0.01
    np.testing.assert_array_equal(soft, scores)


@pytest.mark.parametrize("method", ["nearest", "gaussian", "lof"])
def test_noisy_patches_are_excluded_and_weighted(method):
    fit = _fit(_features(), jax.random.PRNGKey(0), method, lof_k=5, denoise_ratio=0.05,
               coreset_ratio=0.2, projection_dim=16)
    assert fit.patch_scores.shape == (30, 9)
    assert (fit.sampling_weights[:3, 4] == 0).all()  # the defective patches are denoised
    chosen = np.unravel_index(fit.coreset_indices, (30, 9))
    assert not any(i < 3 and j == 4 for i, j in zip(*chosen))
    assert fit.bank.features.shape == (int(0.2 * 270), 48)
    np.testing.assert_array_equal(fit.bank.weights,
                                  fit.patch_scores.reshape(-1)[fit.coreset_indices])


def test_patchcore_keeps_everything_and_predict_matches_brute_force():
    fit = _fit(_features(), jax.random.PRNGKey(0), "none", coreset_ratio=0.3)
    assert fit.patch_scores is None and (fit.bank.weights == 1).all()
    test = _features(b=4, seed=1)
    scores = _predict(test, fit.bank, soft_weight=False)
    d = ((test.reshape(-1, 1, 48).astype(np.float64) - fit.bank.features[None]) ** 2).sum(-1)
    np.testing.assert_allclose(scores.reshape(-1), d.min(1), rtol=1e-4)
    # PatchCore is SoftPatch without a discriminator: the same bank from the same key.
    pc = patchcore.PatchCore(layers=("stage3",), coreset_ratio=0.3)
    np.testing.assert_array_equal(pc.fit(Features(_features(), (3, 3)), jax.random.PRNGKey(0),
                                          progress=False).features, fit.bank.features)


def test_soft_weight_multiplies_the_nearest_entry():
    fit = _fit(_features(), jax.random.PRNGKey(0), "lof", lof_k=5, coreset_ratio=0.3,
               projection_dim=16)
    test = _features(b=4, seed=2)
    plain = _predict(test, fit.bank, soft_weight=False)
    soft = _predict(test, fit.bank, soft_weight=True)
    d = ((test.reshape(-1, 1, 48).astype(np.float64) - fit.bank.features[None]) ** 2).sum(-1)
    np.testing.assert_allclose(soft.reshape(-1), plain.reshape(-1) * fit.bank.weights[d.argmin(1)],
                               rtol=1e-5)


def test_same_key_same_bank():
    feats = _features()
    a = _fit(feats, jax.random.PRNGKey(7), "gaussian", coreset_ratio=0.2)
    b = _fit(feats, jax.random.PRNGKey(7), "gaussian", coreset_ratio=0.2)
    np.testing.assert_array_equal(a.coreset_indices, b.coreset_indices)
    c = _fit(feats, jax.random.PRNGKey(8), "gaussian", coreset_ratio=0.2)
    assert not np.array_equal(a.coreset_indices, c.coreset_indices)


def test_impossible_bank_sizes_are_errors():
    with pytest.raises(ValueError, match="eligible"):
        _fit(_features(), jax.random.PRNGKey(0), "lof", lof_k=5, denoise_ratio=0.5,
             coreset_ratio=0.6)


@pytest.mark.parametrize("grouping", ["neighbourhood", "global"])
def test_other_groupings_denoise_the_defects(grouping):
    """Defects at position 4 of 3 images (30 images, 3 x 3 grid): under neighbourhood (radius 1)
    and global grouping too they score highest and are excluded; the scores are noise_scores'."""
    feats = _features()
    fit = _fit(feats, jax.random.PRNGKey(0), "lof", lof_k=5, denoise_ratio=0.05,
               coreset_ratio=0.2,
               projection_dim=16, grouping=grouping, group_radius=1)
    assert (fit.sampling_weights[:3, 4] == 0).all()
    key_disc, _ = jax.random.split(jax.random.PRNGKey(0))
    expected = softpatch.noise_scores(feats, key_disc, "lof", 5, 16, grouping=grouping, radius=1,
                                      grid=(3, 3))
    np.testing.assert_array_equal(fit.patch_scores, expected)


def test_grouping_fields_from_config_are_checked():
    c = load_config("default.py")
    assert (c.denoise.grouping, c.denoise.group_radius) == ("", 2)  # '': each method's own
    assert softpatch.SoftPatch.from_config(c).grouping == "position"
    c.model.method = "softpatch_plus"
    assert softpatch.SoftPatchPlus.from_config(c).grouping == "auto"
    assert softpatch.SoftPatchPlus(layers=("stage3",)).grouping == "auto"
    c.denoise.grouping = "position"
    assert softpatch.SoftPatchPlus.from_config(c).grouping == "position"
    c.model.method = "softpatch"
    c.denoise.grouping, c.denoise.group_radius = "neighbourhood", 3
    method = softpatch.SoftPatch.from_config(c)
    assert (method.grouping, method.group_radius) == ("neighbourhood", 3)
    c.denoise.grouping, c.denoise.discriminator = "global", "gaussian"
    with pytest.raises(ValueError, match="denoise.grouping=global does not support "
                                         "denoise.discriminator=gaussian"):
        softpatch.SoftPatch.from_config(c)
    c.model.method = "softpatch_plus"  # default fusion lof,gaussian
    with pytest.raises(ValueError, match="does not support softpatch_plus.fusion=gaussian"):
        softpatch.SoftPatchPlus.from_config(c)
    c.denoise.grouping = "diagonal"
    with pytest.raises(ValueError, match="denoise.grouping='diagonal' is unknown"):
        softpatch.SoftPatch.from_config(c)


@pytest.mark.parametrize("shift, picked", [(0, "position"), (1, "neighbourhood")])
def test_auto_grouping_fits_exactly_as_the_grouping_it_picks(shift, picked):
    """grouping=auto measures alignment on a projection of its own, so the fit is bit for bit
    the fit under the grouping it picks (SoftPatch and SoftPatch+), and says which."""
    rng = np.random.default_rng(4)
    scene = rng.normal(size=(10, 10, 24)) * 3
    offsets = rng.integers(0, 2 * shift + 1, size=(16, 2))
    feats = np.stack([scene[dy:dy + 8, dx:dx + 8] for dy, dx in offsets])
    feats = (feats + rng.normal(size=feats.shape) * 0.05).reshape(16, 64, 24).astype(np.float32)
    key = jax.random.PRNGKey(2)
    common = dict(lof_k=3, denoise_ratio=0.1, coreset_ratio=0.2, projection_dim=16,
                  group_radius=2)
    auto = _softpatch("lof", **common, grouping="auto").fit_details(Features(feats, (8, 8)), key,
                                                                      False)
    same = _softpatch("lof", **common, grouping=picked).fit_details(Features(feats, (8, 8)), key,
                                                                      False)
    assert (auto.grouping, same.grouping, same.aligned_share) == (picked, picked, None)
    assert (auto.aligned_share >= 0.5) == (picked == "position")
    np.testing.assert_array_equal(auto.patch_scores, same.patch_scores)
    np.testing.assert_array_equal(auto.coreset_indices, same.coreset_indices)
    plus = dict(lof_k=3, coreset_ratio=0.2, projection_dim=16, layers=("stage3",),
                sampler=GreedyCoreset(projection_dim=16))
    a_cls, a_seg = softpatch.SoftPatchPlus(grouping="auto", **plus).fit_details(
        Features(feats, (8, 8)), key, False)
    s_cls, s_seg = softpatch.SoftPatchPlus(grouping=picked, **plus).fit_details(
        Features(feats, (8, 8)), key, False)
    assert a_cls.grouping == a_seg.grouping == picked
    for a, s in ((a_cls, s_cls), (a_seg, s_seg)):
        np.testing.assert_array_equal(a.patch_scores, s.patch_scores)
        np.testing.assert_array_equal(a.bank.weights, s.bank.weights)
        np.testing.assert_array_equal(a.coreset_indices, s.coreset_indices)
