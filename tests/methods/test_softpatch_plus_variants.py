"""SoftPatch+ variants (rank normalisation, fusion rule, soft-weight source, shared projection)
against hand-computed ranks and the pieces they are made of; sweep entries naming variants."""
import os

import jax
import numpy as np
import pytest
from scipy.stats import rankdata

from softpatch_jax import methods
from softpatch_jax.methods import softpatch
from softpatch_jax.methods.base import Features
from softpatch_jax.methods.patchcore import build_bank
from softpatch_jax.ops.coreset import GreedyCoreset
from softpatch_jax.pipeline import sweep

from conftest import load_config

# (B, P) = (3, 2) with ties: hand-computed ranks.
A = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 5.0]])
B = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
A_GLOBAL = np.array([[5.0, 1.5], [3.5, 3.5], [1.5, 6.0]]) / 6  # sorted 1 1 2 2 3 5
B_GLOBAL = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]) / 6
A_POSITION = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]]) / 3  # each column's 3 ranks
B_POSITION = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]) / 3


@pytest.mark.parametrize("norm,ra,rb", [("global", A_GLOBAL, B_GLOBAL),
                                        ("position", A_POSITION, B_POSITION)])
def test_fusion_rules_on_hand_computed_ranks(norm, ra, rb):
    np.testing.assert_allclose(softpatch.rank_normalise(A, norm), ra, rtol=1e-12)
    np.testing.assert_allclose(softpatch.fuse_ranks([A, B], "mean", norm), (ra + rb) / 2,
                               rtol=1e-12)
    np.testing.assert_allclose(softpatch.fuse_ranks([A, B], "max", norm), np.maximum(ra, rb),
                               rtol=1e-12)
    np.testing.assert_allclose(softpatch.fuse_ranks([A, B], "weighted", norm, (3.0, 1.0)),
                               (3 * ra + rb) / 4, rtol=1e-12)
    # A weight of 0 drops a discriminator: its ranks alone.
    np.testing.assert_allclose(softpatch.fuse_ranks([A, B], "weighted", norm, (0.0, 2.0)), rb,
                               rtol=1e-12)


def test_fusion_equals_rankdata_by_hand_on_tied_random_scores():
    rng = np.random.default_rng(0)
    scores = [rng.integers(0, 5, size=(7, 4)).astype(float) for _ in range(3)]  # many ties
    flat = [rankdata(s.reshape(-1)).reshape(7, 4) / 28 for s in scores]
    column = [np.stack([rankdata(s[:, j]) for j in range(4)], axis=1) / 7 for s in scores]
    w = np.array([0.5, 0.2, 0.3])
    for norm, ranks in (("global", flat), ("position", column)):
        np.testing.assert_allclose(softpatch.fuse_ranks(scores, "mean", norm),
                                   sum(ranks) / 3, rtol=1e-12)
        np.testing.assert_allclose(softpatch.fuse_ranks(scores, "max", norm),
                                   np.max(ranks, axis=0), rtol=1e-12)
        np.testing.assert_allclose(softpatch.fuse_ranks(scores, "weighted", norm, w),
                                   sum(wi * r for wi, r in zip(w, ranks)) / w.sum(), rtol=1e-12)


def _features(b=30, p=9, d=48, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(p, d))[None] * 3 + rng.normal(size=(b, p, d)) * 0.3
    feats[:3, 4] += rng.normal(size=(3, d)) * 3.0
    return feats.astype(np.float32)


def _plus(**kw):
    kw = {"fusion": ("lof", "gaussian"), "grouping": "position", **kw}  # as `_raw` computes
    return softpatch.SoftPatchPlus(lof_k=5, projection_dim=16, layers=("stage3",),
                                   coreset_ratio=0.2, sampler=GreedyCoreset(projection_dim=16),
                                   **kw)


KEY = jax.random.PRNGKey(1)


def _raw(method, feats, names):
    """Each discriminator's raw scores as the fit computes them (key i of key_disc)."""
    key_disc, _ = jax.random.split(KEY)
    return [softpatch.noise_scores(feats, jax.random.fold_in(key_disc, i), d, 5, 16,
                                   method.budget_mb, grid=(3, 3))
            for i, d in enumerate(names)]


@pytest.mark.parametrize("variant", [dict(rank_norm="position"), dict(fusion_rule="max"),
                                     dict(fusion_rule="weighted", fusion_weights=(0.8, 0.2))])
def test_fused_scores_are_the_fusion_of_the_raw_scores(variant):
    feats = _features()
    method = _plus(**variant)
    cls, seg = method.fit_details(Features(feats, (3, 3)), KEY, False)
    raw = _raw(method, feats, method.fusion)
    expected = softpatch.fuse_ranks(raw, variant.get("fusion_rule", "mean"),
                                    variant.get("rank_norm", "global"),
                                    variant.get("fusion_weights"))
    np.testing.assert_array_equal(cls.patch_scores, expected)
    np.testing.assert_array_equal(seg.patch_scores, expected)
    assert cls.patch_scores.shape == cls.sampling_weights.shape == (30, 9)
    assert (cls.sampling_weights[:3, 4] == 0).all()  # the defects are removed


@pytest.mark.parametrize("source", softpatch.SOFT_SOURCES + ("lof",))
def test_soft_weights_come_from_the_chosen_source(source):
    feats = _features()
    fusion = ("gaussian", "nearest")  # without LOF: soft_source=lof computes it
    method = _plus(fusion=fusion, soft_source=source)
    cls, seg = method.fit_details(Features(feats, (3, 3)), KEY, False)
    raw = _raw(method, feats, fusion + ("lof",))  # LOF's key: the one after the fused ones
    soft = {"first": np.maximum(raw[0], 0), "fused": softpatch.fuse_ranks(raw[:2]),
            "lof": raw[2], "none": np.ones((30, 9))}[source]
    for fit in (cls, seg):
        np.testing.assert_array_equal(fit.bank.weights,
                                      soft.reshape(-1)[fit.coreset_indices].astype(np.float32))


def test_soft_source_lof_reuses_fused_lof():
    feats = _features()
    cls, _ = _plus(fusion=("gaussian", "lof"), soft_source="lof").fit_details(
        Features(feats, (3, 3)), KEY, False)
    lof = _raw(_plus(), feats, ("gaussian", "lof"))[1]
    np.testing.assert_array_equal(cls.bank.weights, lof.reshape(-1)[cls.coreset_indices])


def test_separate_projections_keep_the_classification_bank():
    feats = _features()
    shared = _plus().fit_details(Features(feats, (3, 3)), KEY, False)
    own = _plus(shared_projection=False).fit_details(Features(feats, (3, 3)), KEY, False)
    np.testing.assert_array_equal(own[0].coreset_indices, shared[0].coreset_indices)
    # The segmentation bank: its own projection and starts, from fold_in(key_bank, 1).
    _, key_bank = jax.random.split(KEY)
    method = _plus()
    soft = np.maximum(_raw(method, feats, ("lof",))[0], 0).astype(np.float32)
    _, idx = build_bank(feats, own[1].sampling_weights, soft, 0.2,
                        jax.random.fold_in(key_bank, 1), method.sampler)
    np.testing.assert_array_equal(own[1].coreset_indices, idx)
    assert not np.array_equal(own[1].coreset_indices, shared[1].coreset_indices)


def _config(**fields):
    """The default config running SoftPatch+ with these softpatch_plus fields."""
    c = load_config("default.py")
    c.model.method = "softpatch_plus"
    c.softpatch_plus.update(fields)
    return c


def test_variant_fields_from_config():
    defaults = methods.from_config(_config())
    assert (defaults.rank_norm, defaults.fusion_rule, defaults.fusion_weights,
            defaults.soft_source, defaults.shared_projection) == ("global", "mean", None,
                                                                   "first", True)
    m = methods.from_config(_config(rank_norm="position", fusion_rule="weighted",
                                    fusion_weights="0.7, 0.3", soft_source="fused",
                                    shared_projection=False))
    assert (m.rank_norm, m.fusion_weights, m.soft_source, m.shared_projection) == \
        ("position", (0.7, 0.3), "fused", False)


@pytest.mark.parametrize("model,message", [
    (dict(rank_norm="image"), "softpatch_plus.rank_norm='image' is unknown"),
    (dict(fusion_rule="median"), "softpatch_plus.fusion_rule='median' is unknown"),
    (dict(soft_source="median"), "softpatch_plus.soft_source='median' is unknown"),
    (dict(fusion_rule="weighted"), r"softpatch_plus.fusion_weights='' must be 2 non-negative numbers"),
    (dict(fusion_rule="weighted", fusion_weights="1,2,3"), "must be 2 non-negative numbers"),
    (dict(fusion_rule="weighted", fusion_weights="1,x"), "must be 2 non-negative numbers"),
    (dict(fusion_rule="weighted", fusion_weights="0,0"), "not all 0"),
    (dict(fusion_rule="weighted", fusion_weights="-1,2"), "must be 2 non-negative numbers"),
    (dict(fusion_weights="1,2"), "read only by softpatch_plus.fusion_rule=weighted"),
])
def test_bad_variant_fields_are_one_line_errors(model, message):
    with pytest.raises(ValueError, match=message) as err:
        methods.from_config(_config(**model))
    assert "\n" not in str(err.value)


def test_sweep_entries_name_variants(monkeypatch):
    """Variants name a field by section.field, or by a name one section holds (0.2's model.*
    names too, as stored sweep entries use them)."""
    c = load_config("default.py")
    assert methods.sweep_overrides("lof@layers=stage3", c)["backbone.layers"] == "stage3"  # 0.2's
    assert methods.sweep_overrides("lof@padim.layers=stage3", c)["padim.layers"] == "stage3"
    assert methods.sweep_overrides("lof") == {"model.method": "softpatch",
                                              "denoise.discriminator": "lof"}
    assert methods.sweep_overrides("lof@grouping=neighbourhood@group_radius=3", c) == {
        "model.method": "softpatch", "denoise.discriminator": "lof",
        "denoise.grouping": "neighbourhood", "denoise.group_radius": 3}
    assert methods.sweep_overrides(
        "softpatch_plus@rank_norm=position@fusion=lof+nearest@cls_threshold=0.2"
        "@softpatch_plus.shared_projection=false", c) == {
        "model.method": "softpatch_plus", "softpatch_plus.rank_norm": "position",
        "softpatch_plus.fusion": "lof,nearest", "softpatch_plus.cls_ratio": 0.2,
        "softpatch_plus.shared_projection": False}
    assert methods.sweep_overrides("lof@threshold=0.2", c) == methods.sweep_overrides(
        "lof@denoise.ratio=0.2", c) == methods.sweep_overrides("lof@ratio=0.2", c)
    for entry, message in [("lof@colour=red", "colour is not a config field"),
                           ("lof@data.root=x", "data.root is not a config field that can be set"),
                           ("lof@group_radius=two", "denoise.group_radius='two' must be an int"),
                           ("lof@soft_weight=maybe", "must be true or false"),
                           ("lof@threshold=", "denoise.ratio='' must be a number"),
                           ("lof@grouping", "must be field=value"),
                           ("lof@method=padim", "method is not a config field that can be set"),
                           ("median@grouping=global", "neither a method")]:
        with pytest.raises(ValueError, match=message):
            methods.sweep_overrides(entry, c)
    monkeypatch.setattr(methods, "VARIANT_SECTIONS", methods.VARIANT_SECTIONS + ("data",))
    with pytest.raises(ValueError, match="batch_size is a field of fyd.batch_size and "
                                         "data.batch_size; name one"):
        methods.sweep_overrides("lof@batch_size=4", c)


def test_sweep_points_of_variants_share_one_base():
    """A point's folder is named by its entry; points whose configs differ only in model fields
    that sweep entries set (a variant's, or the stored point's own entry's) share a base."""
    entry = "lof@grouping=neighbourhood"
    path = sweep.point_path("DIR", "widget", "overlap", 0.1, entry)
    assert path == os.path.join("DIR", "points", "widget", "overlap",
                                "ratio0.1_lof@grouping=neighbourhood", "result.json")
    c = load_config("default.py")
    config = {"model.method": "softpatch", "denoise.discriminator": "lof",
              "denoise.grouping": "position", "denoise.lof_k": 6}
    plain = {"config": config, "version": "1"}
    variant = {"config": {**config, "denoise.grouping": "neighbourhood"}, "version": "1",
               "method": entry}
    varied = sweep._entry_fields(c, [variant["method"], "lof"])
    assert varied == {"model.method", "denoise.discriminator", "denoise.grouping"}
    assert sweep._base(plain, varied) == sweep._base(variant, varied)
    assert sweep._base(plain) != sweep._base(variant)
    other = {"config": {**config, "denoise.lof_k": 5}, "version": "1", "method": "lof"}
    assert sweep._base(plain, varied) != sweep._base(other, varied)  # lof_k is no entry's field
    assert sweep._entry_fields(c, ["toy_unregistered@x=1"]) == set()


@pytest.mark.slow
def test_a_sweep_runs_variants_side_by_side(mvtec_root, tmp_path, cache_dir):
    """Two variants of LOF in one sweep, then a sweep of plain LOF into the same folder: no
    refusal, each point in its own folder, its config holding its variant's fields."""
    c = load_config("sweeps/noise.py")
    c.data.root, c.data.category = mvtec_root, "widget"
    c.data.resize = c.data.image_size = 32
    c.data.batch_size = 8
    c.sweep.ratios, c.sweep.overlays = "0.25", False
    c.sweep.discriminators = "lof@grouping=neighbourhood@group_radius=1,lof@grouping=global"
    c.denoise.lof_k, c.runtime.cache_dir = 3, cache_dir
    rows = sweep.run_sweep(c, str(tmp_path))
    assert sorted(r["method"] for r in rows) == ["lof@grouping=global",
                                                 "lof@grouping=neighbourhood@group_radius=1"]
    c.sweep.discriminators = "lof"
    rows = sweep.run_sweep(c, str(tmp_path))
    assert len(rows) == 3
    stored = sweep._read(sweep.point_path(str(tmp_path), "widget", "no_overlap", 0.25,
                                          "lof@grouping=neighbourhood@group_radius=1"))
    assert (stored["config"]["denoise.grouping"], stored["config"]["denoise.group_radius"]) == \
        ("neighbourhood", 1)
    c.denoise.lof_k = 4  # a field no entry sets: the finished points refuse
    with pytest.raises(ValueError, match="denoise.lof_k: 3 -> 4"):
        sweep.run_sweep(c, str(tmp_path))
