"""FYD: the bilinear sampler (against PyTorch's grid_sample and by hand), the warp families, the
losses against NumPy brute force, BatchNorm handling, training that aligns generated objects, and
checkpoint resume."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from PIL import Image

from softpatch_jax import methods
from softpatch_jax.methods.fyd import model as fyd
from softpatch_jax.methods.fyd import stn
from softpatch_jax.methods.fyd import train as fyd_train
from softpatch_jax.ops import warp as sampler
from softpatch_jax.pipeline import evaluate
from softpatch_jax.data.samples import Sample

from conftest import load_config


def _images(seed=0, b=2, h=7, w=9, c=3):
    return jax.random.normal(jax.random.PRNGKey(seed), (b, h, w, c))


@pytest.mark.parametrize("padding", sampler.PADDINGS)
def test_identity_warp_returns_the_input(padding):
    x = _images()
    np.testing.assert_allclose(sampler.warp(x, sampler.identity(2), padding), x, atol=1e-5)


def test_translation_moves_content_by_whole_pixels():
    x = _images(h=8, w=10)
    d = 3  # right by 3 pixels, down by 2: theta's translation is -2 d / size
    theta = jnp.array([[[1.0, 0.0, -2 * d / 10], [0.0, 1.0, -2 * 2 / 8]]] * 2)
    out = np.asarray(sampler.warp(x, theta, "zeros"))
    np.testing.assert_allclose(out[:, 2:, d:], np.asarray(x)[:, :-2, :-d], atol=1e-5)
    np.testing.assert_allclose(out[:, :2], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[:, :, :d], 0.0, atol=1e-6)


@pytest.mark.parametrize("padding", sampler.PADDINGS)
def test_sampler_matches_torch_grid_sample(padding):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.asarray(_images(1, b=3, h=11, w=13))
    theta = np.asarray(sampler.identity(3) + 0.3 * jax.random.normal(jax.random.PRNGKey(2),
                                                                    (3, 2, 3)))
    ours = np.asarray(sampler.warp(jnp.asarray(x), jnp.asarray(theta), padding))
    grid = F.affine_grid(torch.tensor(theta), (3, 3, 11, 13), align_corners=False)
    ref = F.grid_sample(torch.tensor(x).permute(0, 3, 1, 2), grid, mode="bilinear",
                        padding_mode=padding, align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_sampler_gradients():
    with jax.enable_x64(True):  # finite differences need float64
        x = _images(3, b=2, h=6, w=5, c=2).astype(jnp.float64)
        theta = (sampler.identity(2) + 0.1 * jax.random.normal(jax.random.PRNGKey(4), (2, 2, 3))
                 ).astype(jnp.float64)
        check_grads(lambda im, t: sampler.warp(im, t, "zeros"), (x, theta), order=1,
                    modes=["fwd", "rev"], eps=1e-5, atol=1e-4, rtol=1e-4)
        check_grads(lambda t: sampler.warp(x, t, "border"), (theta,), order=1,
                    modes=["fwd", "rev"], eps=1e-5, atol=1e-4, rtol=1e-4)


def test_compose_and_invert():
    a = sampler.identity(2) + 0.2 * jax.random.normal(jax.random.PRNGKey(5), (2, 2, 3))
    b = sampler.identity(2) + 0.2 * jax.random.normal(jax.random.PRNGKey(6), (2, 2, 3))
    np.testing.assert_allclose(sampler.compose(a, sampler.invert(a)), sampler.identity(2),
                               atol=1e-5)
    p = jnp.array([0.3, -0.2, 1.0])  # compose(a, b)(p) == a(b(p))
    bp = jnp.einsum("bij,j->bi", b, p)
    want = jnp.einsum("bij,bj->bi", a, jnp.concatenate([bp, jnp.ones((2, 1))], 1))
    np.testing.assert_allclose(jnp.einsum("bij,j->bi", sampler.compose(a, b), p), want,
                               atol=1e-5)


@pytest.mark.parametrize("family", list(stn.FAMILIES))
def test_warp_families_start_at_identity_and_stay_bounded(family):
    n = stn.FAMILIES[family]
    np.testing.assert_allclose(stn.params_to_theta(jnp.zeros((1, n)), family),
                               sampler.identity(1), atol=1e-7)
    theta = np.asarray(stn.params_to_theta(100 * jax.random.normal(jax.random.PRNGKey(0),
                                                                   (64, n)), family,
                                           max_scale=1.25, max_rotation=30,
                                           max_translation=0.2, max_shear=0.2))
    assert np.abs(theta[:, :, 2]).max() <= 0.4 + 1e-6  # 0.2 of the size = 0.4 normalised
    lin = theta[:, :, :2]
    if family != "affine":  # scaled rotations: scale and angle inside the bounds
        scale = np.sqrt(np.abs(np.linalg.det(lin)))
        assert scale.min() >= 0.8 - 1e-5 and scale.max() <= 1.25 + 1e-5
        angle = np.degrees(np.arctan2(lin[:, 1, 0], lin[:, 0, 0]))
        assert np.abs(angle).max() <= 30 + 1e-4
        np.testing.assert_allclose(lin[:, 0, 0], lin[:, 1, 1], atol=1e-6)
    else:
        assert np.abs(lin - np.eye(2)).max() <= 0.2 + 1e-6


def test_pixel_loss_is_the_masked_pairwise_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 3, 2)).astype(np.float32)
    m = rng.uniform(size=(5, 4, 3, 1)).astype(np.float32)
    num = den = 0.0
    for i in range(5):
        for j in range(5):
            if i != j:
                w = m[i] * m[j]
                num += (w * (x[i] - x[j]) ** 2).sum()
                den += w.sum() * x.shape[-1]
    np.testing.assert_allclose(fyd.pixel_loss(jnp.asarray(x), jnp.asarray(m)), num / den,
                               rtol=1e-5)


def test_negative_cosine_over_pairs_masks_and_stop_gradient():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(4, 6, 5)).astype(np.float32)
    z = rng.normal(size=(4, 6, 5)).astype(np.float32)
    pn = p / np.linalg.norm(p, axis=-1, keepdims=True)
    zn = z / np.linalg.norm(z, axis=-1, keepdims=True)
    want = -np.mean([(pn[i] * zn[j]).sum(-1).mean() for i in range(4) for j in range(4) if i != j])
    np.testing.assert_allclose(fyd.pairwise_negative_cosine(jnp.asarray(p), jnp.asarray(z)),
                               want, rtol=1e-5)
    gz = jax.grad(lambda zz: fyd.pairwise_negative_cosine(jnp.asarray(p), zz))(jnp.asarray(z))
    assert np.all(np.asarray(gz) == 0.0)  # no gradient through the target branch
    m = rng.uniform(size=(4, 6)).astype(np.float32)  # validity weights m_i m_j per location
    num = sum((m[i] * m[j] * (pn[i] * zn[j]).sum(-1)).sum() for i in range(4) for j in range(4)
              if i != j)
    den = sum((m[i] * m[j]).sum() for i in range(4) for j in range(4) if i != j)
    np.testing.assert_allclose(
        fyd.pairwise_negative_cosine(jnp.asarray(p), jnp.asarray(z), jnp.asarray(m)),
        -num / den, rtol=1e-5)


def test_centring_penalty_ignores_relative_warps():
    eye = sampler.identity(2)
    shift = jnp.array([[[0.0, 0.0, 0.1], [0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(fyd.centring_penalty(eye + jnp.concatenate([shift, -shift])), 0.0,
                               atol=1e-7)  # opposite warps: no common drift
    np.testing.assert_allclose(fyd.centring_penalty(eye + jnp.concatenate([shift, shift])), 0.01,
                               rtol=1e-5)


def test_heads_batchnorm_train_and_inference():
    heads = fyd.Heads(8, 4)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 6)) * 4.0 + 2.0
    v = heads.init(jax.random.PRNGKey(1), x, train=False)
    (_, _), upd = heads.apply(v, x, train=True, mutable=["batch_stats"])
    mean = upd["batch_stats"]["proj_bn1"]["mean"]
    h = np.asarray(x).reshape(-1, 6) @ np.asarray(v["params"]["proj1"]["kernel"]) + \
        np.asarray(v["params"]["proj1"]["bias"])
    np.testing.assert_allclose(mean, 0.1 * h.mean(0), rtol=1e-4, atol=1e-5)  # momentum 0.9
    z1, _ = heads.apply(v, x, train=False)
    z2, _ = heads.apply(v, x[:1], train=False)  # inference: no dependence on the batch
    np.testing.assert_allclose(z1[:1], z2, atol=1e-5)


def _objects(root, n, size=64, seed=0):
    """Bright L-shaped parts, each rotated by up to +-20 degrees and shifted by up to 10%."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    samples, angles = [], []
    for i in range(n):
        yy, xx = (np.mgrid[:size, :size] + 0.5) / size - 0.5
        a, t = np.radians(rng.uniform(-20, 20)), rng.uniform(-0.1, 0.1, 2)
        c, s = np.cos(a), np.sin(a)
        u = c * (xx - t[0]) + s * (yy - t[1])
        v = -s * (xx - t[0]) + c * (yy - t[1])
        part = ((np.abs(u) < 0.25) & (np.abs(v) < 0.08)) | ((np.abs(u + 0.17) < 0.08) &
                                                           (np.abs(v) < 0.25))
        img = np.stack([part * 0.9 + 0.05, part * 0.6 + 0.1, part * 0.3 + 0.2], -1)
        path = os.path.join(root, f"{i:03d}.png")
        Image.fromarray((img * 255).astype(np.uint8)).save(path)
        samples.append(Sample(path, 0, "good", f"{i:03d}.png"))
        angles.append(np.degrees(a))
    return samples, np.array(angles)


def _config(epochs, size=64):
    c = load_config("default.py")
    c.data.resize = c.data.image_size = size
    c.model.method, c.padim.layers, c.padim.dim = "fyd", "stage2", 16
    c.fyd.epochs, c.fyd.batch_size, c.fyd.learning_rate = epochs, 8, 3e-3
    return c


def _train(c, samples, extractor, directory):
    return fyd_train.train(fyd_train.Options.from_config(c.fyd), samples, extractor, directory,
                           jax.random.PRNGKey(0), c.data.resize, c.data.image_size, 8,
                           progress=False)


def test_training_aligns_shifted_and_rotated_objects(tmp_path, cache_dir):
    samples, angles = _objects(str(tmp_path / "objects"), 24)
    c = _config(30)
    c.runtime.cache_dir = cache_dir
    c.fyd.align_features, c.fyd.checkpoint_every = False, 30
    emb = evaluate.extractor_for(c, methods.from_config(c))
    variables = _train(c, samples, emb, str(tmp_path / "run"))
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert log[-1]["pixel"] < 0.5 * log[0]["pixel"], log
    images = jnp.asarray(fyd_train._load_images(samples, 64, 64, 8))
    model = fyd.build(fyd_train.Options.from_config(c.fyd), emb.module, emb.layers)
    _, warps, valid, aligned = fyd.align(model, variables["params"], emb.variables, images)
    before = float(fyd.pixel_loss(images, jnp.ones(images.shape[:3] + (1,))))
    after = float(fyd.pixel_loss(aligned, valid["image"]))
    # The figure: mean squared difference between aligned pairs, before -> after training.
    print(f"pixel spread {before:.3f} -> {after:.3f}")
    assert after < 0.4 * before  # measured 1.034 -> 0.207
    # The learnt warps undo the generating rotations (up to one common angle).
    theta = np.asarray(warps["image"])
    learnt = np.degrees(np.arctan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert np.corrcoef(learnt, angles)[0, 1] > 0.9, (learnt, angles)


def test_resume_continues_where_it_stopped(tmp_path, cache_dir):
    samples, _ = _objects(str(tmp_path / "objects"), 8, size=32)
    c = _config(3, 32)
    c.runtime.cache_dir = cache_dir
    emb = evaluate.extractor_for(c, methods.from_config(c))
    full = _train(c, samples, emb, str(tmp_path / "b"))
    # Interrupted after epoch 2: only the epoch-2 checkpoint exists; a rerun trains epoch 3 only.
    first = json.loads((tmp_path / "b" / "log.json").read_text())
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "3")
    resumed = _train(c, samples, emb, str(tmp_path / "b"))
    log = json.loads((tmp_path / "b" / "log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert log[:2] == first[:2]  # epochs 1-2 were not redone
    same = jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-5, atol=1e-6), full["params"],
                        resumed["params"])
    assert all(jax.tree.leaves(same))
    # A different config starts over instead of restoring the finished run.
    other = _config(3, 32)
    other.fyd.learning_rate = 1e-4
    fresh = _train(other, samples, emb, str(tmp_path / "b"))
    same = jax.tree.map(lambda a, b: np.allclose(a, b), fresh["params"], resumed["params"])
    assert not all(jax.tree.leaves(same))


def test_bad_fyd_config_is_one_line():
    c = _config(1)
    c.fyd.transform = "projective"
    with pytest.raises(ValueError, match="fyd.transform='projective' is unknown"):
        methods.from_config(c)
    c = _config(1)
    c.fyd.feature_transform = "projective"  # named as itself, not as fyd.transform
    with pytest.raises(ValueError, match="fyd.feature_transform='projective' is unknown"):
        methods.from_config(c)
    c = _config(1)
    c.fyd.batch_size = 1
    with pytest.raises(ValueError, match="fyd.batch_size=1 must be >= 2"):
        methods.from_config(c)


def test_unwarp_puts_aligned_scores_back_in_the_input_frame():
    grid = np.zeros((1, 8, 8), np.float32)
    grid[0, 2, 3] = 1.0  # a hot spot at aligned (row 2, col 3)
    warp = np.array([[[1.0, 0.0, 0.5], [0.0, 1.0, -0.25]]], np.float32)  # aligned u -> input u + t
    out = fyd.unwarp_grids(grid, warp)  # t = (+2, -1) pixels at 8 px
    assert np.unravel_index(np.argmax(out[0]), (8, 8)) == (1, 5)
    np.testing.assert_allclose(out[0, 1, 5], 1.0, atol=1e-6)
