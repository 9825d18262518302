"""SoftPatch+, PatchCore options and PaDiM against hand-made cases and NumPy references."""
import jax
import numpy as np
import pytest

from softpatch_jax import methods
from softpatch_jax.features import padim as padim_features
from softpatch_jax.methods import patchcore, softpatch
from softpatch_jax.methods.base import Features
from softpatch_jax.ops import gaussian as padim
from softpatch_jax.ops import knn

from conftest import load_config


def test_rank_fusion_on_hand_made_scores():
    a = np.array([[1.0, 5.0], [3.0, 2.0]])       # ranks 1 4 3 2
    b = np.array([[10.0, 20.0], [40.0, 30.0]])   # ranks 1 2 4 3
    np.testing.assert_allclose(softpatch.fuse_ranks([a, b], "mean"),
                               [[0.25, 0.75], [0.875, 0.625]])
    np.testing.assert_allclose(softpatch.fuse_ranks([a, b], "max"), [[0.25, 1.0], [1.0, 0.75]])
    ties = softpatch.fuse_ranks([np.array([1.0, 1.0, 2.0, 3.0])])
    np.testing.assert_allclose(ties, [0.375, 0.375, 0.75, 1.0])  # tied ranks averaged
    with pytest.raises(ValueError, match="softpatch_plus.fusion_rule=.median."):
        softpatch.fuse_ranks([a], "median")


def _features(b=24, p=9, d=32, noisy=4, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(p, d))[None] * 3 + rng.normal(size=(b, p, d)) * 0.3
    feats[:noisy, 3] += rng.normal(size=(noisy, d)) * 3
    return feats.astype(np.float32)


def test_two_bank_split():
    plus = methods.from_config(_config("softpatch_plus"))
    cls, seg = plus.fit_details(Features(_features(), (3, 3)), jax.random.PRNGKey(0), False)
    excluded_cls = cls.sampling_weights == 0
    excluded_seg = seg.sampling_weights == 0
    assert excluded_cls.sum() < excluded_seg.sum()
    assert np.all(excluded_seg[excluded_cls])  # seg excludes at least what cls excludes
    assert abs(excluded_seg.mean() - 0.5) < 0.02 and abs(excluded_cls.mean() - 0.15) < 0.02
    assert (excluded_cls[:4, 3]).all()  # the defects are out of both banks
    for f in (cls, seg):
        assert f.sampling_weights.reshape(-1)[f.coreset_indices].min() == 1
    with pytest.raises(ValueError, match="seg_ratio"):
        methods.from_config(_config("softpatch_plus", {"softpatch_plus.cls_ratio": 0.5,
                                                       "softpatch_plus.seg_ratio": 0.15}))


def test_k_nearest_matches_brute_force():
    rng = np.random.default_rng(1)
    q, bank = rng.normal(size=(50, 6)), rng.normal(size=(30, 6))
    d = ((q[:, None] - bank[None]) ** 2).sum(-1)
    dist, idx = knn.k_nearest(q, bank, 4, budget_mb=0.001)
    np.testing.assert_array_equal(idx, np.argsort(d, axis=1)[:, :4])
    np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :4], rtol=1e-4)
    scores = patchcore.patch_scores(q.reshape(5, 10, 6).astype(np.float32),
                                    patchcore.MemoryBank(bank.astype(np.float32), np.ones(30)),
                                    knn.BruteForce(),
                               soft_weight=False, num_nn=4)
    np.testing.assert_allclose(scores.reshape(-1), np.sort(d, axis=1)[:, :4].mean(1), rtol=1e-4)


def test_patchcore_reweighting_matches_numpy():
    rng = np.random.default_rng(2)
    test = rng.normal(size=(3, 7, 5)).astype(np.float32)
    bank = patchcore.MemoryBank(rng.normal(size=(25, 5)).astype(np.float32), np.ones(25))
    patch = patchcore.patch_scores(test, bank, knn.BruteForce(), soft_weight=False)
    ours = patchcore.reweighted_image_scores(test, patch, bank, neighbours=9)
    ref = []
    for t in range(3):
        p = int(np.argmax(patch[t]))
        f = test[t, p].astype(np.float64)
        m_star = int(np.argmin(((bank.features - f) ** 2).sum(1)))
        support = np.argsort(((bank.features - bank.features[m_star]) ** 2).sum(1))[:9]
        dist = np.sqrt(((bank.features[support] - f) ** 2).sum(1))
        w = 1 - np.exp(dist[0]) / np.exp(dist).sum()
        ref.append(w * np.sqrt(patch[t, p]))  # the Euclidean distance, as the paper
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    assert np.all(ours < np.sqrt(patch.max(axis=1)))


def test_padim_matches_numpy():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(20, 6, 4)).astype(np.float32)
    test = rng.normal(size=(5, 6, 4)).astype(np.float32)
    model = padim.fit(train, reg=0.01, budget_mb=0.001)  # one position a chunk
    ours = padim.score(test, model, budget_mb=0.001)
    for p in range(6):
        x = train[:, p].astype(np.float64)
        cov = np.cov(x.T) + 0.01 * np.eye(4)
        delta = test[:, p] - x.mean(0)
        ref = np.sqrt(np.einsum("ti,ij,tj->t", delta, np.linalg.inv(cov), delta))
        np.testing.assert_allclose(ours[:, p], ref, rtol=1e-4)


def test_padim_features_select_seeded_channels():
    a = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    b = -np.arange(2 * 2 * 2 * 5, dtype=np.float32).reshape(2, 2, 2, 5)
    ch = padim_features.select_channels(jax.random.PRNGKey(0), 8, 4)
    assert len(set(ch.tolist())) == 4 and np.all(np.diff(ch) > 0)
    np.testing.assert_array_equal(ch, padim_features.select_channels(jax.random.PRNGKey(0), 8, 4))
    out = np.asarray(padim_features.padim_features([a, b], ch))
    up = b.repeat(2, axis=1).repeat(2, axis=2)  # nearest upsampling by 2
    ref = np.concatenate([a, up], -1)[..., ch].reshape(2, 16, 4)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="padim.dim"):
        padim_features.select_channels(jax.random.PRNGKey(0), 8, 9)


def _config(method, fields=None):
    c = load_config("default.py")
    c.update_from_flattened_dict({"model.method": method, "denoise.lof_k": 4,
                                  "bank.coreset_ratio": 0.3, "bank.projection_dim": 16,
                                  "model.blur_sigma": 1.0, **(fields or {})})
    c.data.image_size = 12
    c.runtime.memory_budget_mb = 64
    return c


@pytest.mark.parametrize("method", ["softpatch", "patchcore", "softpatch_plus", "padim"])
def test_every_method_fits_and_scores(method):
    m = methods.from_config(_config(method))
    fitted = m.fit(Features(_features(p=9), (3, 3)), jax.random.PRNGKey(0), progress=False)
    scores = m.score(fitted, Features(_features(b=3, p=9, noisy=1, seed=5), (3, 3)))
    assert scores.image.shape == (3,) and scores.grids.shape == (3, 3, 3)
    assert np.isfinite(scores.image).all() and scores.maps().shape == (3, 12, 12)
    if method == "patchcore":
        np.testing.assert_allclose(scores.image, scores.grids.reshape(3, -1).max(1))
    arrays = fitted.to_arrays()
    if method == "softpatch_plus":
        assert set(arrays) == {f"{bank}_{part}" for bank in ("cls", "seg")
                               for part in ("features", "weights", "sources", "positions")}
        assert len(arrays["cls_features"]) == len(arrays["seg_features"])
    # The checkpoint's arrays give back the same state.
    again = m.score(m.fitted_from_arrays(arrays),
                    Features(_features(b=3, p=9, noisy=1, seed=5), (3, 3)))
    np.testing.assert_array_equal(again.image, scores.image)


def test_every_method_is_registered_and_unknown_names_list_the_choices():
    assert set(methods.names()) >= {"softpatch", "softpatch_plus", "patchcore", "padim", "fyd",
                                    "inreach", "spade", "cflow"}
    with pytest.raises(ValueError, match="model.method='knn' is unknown; choose one of "):
        methods.from_config(_config("knn"))
    with pytest.raises(ValueError, match="denoise.discriminator='median' is unknown"):
        methods.from_config(_config("softpatch", {"denoise.discriminator": "median"}))
    with pytest.raises(ValueError, match="softpatch_plus.fusion='median' is unknown"):
        methods.from_config(_config("softpatch_plus", {"softpatch_plus.fusion": "lof,median"}))


def test_lof_needs_more_images_than_neighbours():
    m = methods.from_config(_config("softpatch", {"denoise.lof_k": 6}))
    m.check(7)
    with pytest.raises(ValueError, match="denoise.lof_k=6 needs more than 6 training images"):
        m.check(6)


def test_padim_channels_default_per_backbone():
    assert methods.from_config(_config("padim", {"padim.dim": 0})).features.padim_dim == 100
    c = _config("padim", {"padim.dim": 0, "backbone.name": "wide_resnet50_2"})
    assert methods.from_config(c).features.padim_dim == 550
    assert methods.from_config(_config("padim", {"padim.dim": 32})).features.padim_dim == 32
