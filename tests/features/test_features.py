"""Patch features against direct loops over PyTorch's rules and against PyTorch's own ops."""
import jax.numpy as jnp
import numpy as np
import pytest

from softpatch_jax.features import patch as features


def _pool_loop(x, out):
    """Direct loop over PyTorch's adaptive-pool bin rule."""
    length = x.shape[-1]
    res = np.zeros(x.shape[:-1] + (out,))
    for i in range(out):
        start = int(np.floor(i * length / out))
        end = int(np.ceil((i + 1) * length / out))
        res[..., i] = x[..., start:end].mean(-1)
    return res


def _bilinear_loop(x, out):
    """PyTorch bilinear, align_corners=False, one axis, direct formula."""
    n = x.shape[0]
    res = np.zeros((out,) + x.shape[1:])
    for o in range(out):
        src = max((o + 0.5) * n / out - 0.5, 0.0)
        i0 = min(int(src), n - 1)
        i1 = min(i0 + 1, n - 1)
        lam = src - i0
        res[o] = (1 - lam) * x[i0] + lam * x[i1]
    return res


@pytest.mark.parametrize("length,out", [(360, 1024), (1008, 1024), (2048, 1024), (7, 3), (10, 4)])
def test_adaptive_pool_matrix_matches_bin_rule(length, out):
    x = np.random.default_rng(0).normal(size=(3, length))
    np.testing.assert_allclose(x @ features.adaptive_pool_matrix(length, out).T,
                               _pool_loop(x, out), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,out", [(14, 28), (7, 28), (28, 224), (5, 3)])
def test_bilinear_matrix_matches_formula(n, out):
    x = np.random.default_rng(1).normal(size=(n, 4))
    np.testing.assert_allclose(features.bilinear_matrix(n, out) @ x, _bilinear_loop(x, out),
                               rtol=1e-12, atol=1e-12)


def test_bilinear_matrix_matches_torch():
    torch = pytest.importorskip("torch", reason="torch not installed")
    x = np.random.default_rng(2).normal(size=(14, 14))
    ref = torch.nn.functional.interpolate(torch.tensor(x)[None, None], size=(28, 28),
                                          mode="bilinear", align_corners=False)[0, 0].numpy()
    m = features.bilinear_matrix(14, 28)
    np.testing.assert_allclose(m @ x @ m.T, ref, rtol=1e-10, atol=1e-12)


def _reference_patch_features(maps, embed_dim):
    """The official order in NumPy: unfold, resize the neighbourhood grid, pool, stack, pool."""
    h0, w0 = maps[0].shape[1:3]
    pooled = []
    for x in maps:
        b, h, w, c = x.shape
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        unf = np.zeros((b, h, w, c, 3, 3))
        for dy in range(3):
            for dx in range(3):
                unf[..., dy, dx] = xp[:, dy:dy + h, dx:dx + w, :]
        unf = unf.reshape(b, h, w, c * 9)
        if h != h0:
            unf = np.stack([_bilinear_loop(_bilinear_loop(u, h0).transpose(1, 0, 2), w0)
                            .transpose(1, 0, 2) for u in unf])
        pooled.append(_pool_loop(unf.reshape(b, h0 * w0, -1), embed_dim))
    return _pool_loop(np.concatenate(pooled, -1), embed_dim)


def test_patch_features_match_reference():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 8, 8, 5)).astype(np.float32)
    b = rng.normal(size=(2, 4, 4, 7)).astype(np.float32)
    ours = features.patch_features([jnp.asarray(a), jnp.asarray(b)], embed_dim=32)
    np.testing.assert_allclose(ours, _reference_patch_features([a, b], 32), rtol=1e-5, atol=1e-6)


def test_patch_features_match_torch_patchcore():
    torch = pytest.importorskip("torch", reason="torch not installed")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    a = rng.normal(size=(2, 28, 28, 40)).astype(np.float32)
    b = rng.normal(size=(2, 14, 14, 112)).astype(np.float32)
    ours = np.asarray(features.patch_features([jnp.asarray(a), jnp.asarray(b)], 1024))
    # PatchCore's PatchMaker.patchify + _embed + Preprocessing + Aggregator, verbatim in spirit.
    unfolded = []
    for x in (a, b):
        t = torch.tensor(x.transpose(0, 3, 1, 2))
        u = torch.nn.Unfold(3, padding=1, stride=1)(t)
        u = u.reshape(t.shape[0], t.shape[1], 3, 3, -1).permute(0, 4, 1, 2, 3)
        unfolded.append((u, t.shape[2:]))
    (f0, s0), (f1, s1) = unfolded
    f1 = f1.reshape(f1.shape[0], s1[0], s1[1], *f1.shape[2:]).permute(0, 3, 4, 5, 1, 2)
    base = f1.shape
    f1 = F.interpolate(f1.reshape(-1, *f1.shape[-2:]).unsqueeze(1), size=tuple(s0),
                       mode="bilinear", align_corners=False).squeeze(1)
    f1 = f1.reshape(*base[:-2], *s0).permute(0, 4, 5, 1, 2, 3).reshape(2, -1, *base[1:4])
    fs = [f.reshape(-1, *f.shape[-3:]) for f in (f0, f1)]
    pre = torch.stack([F.adaptive_avg_pool1d(f.reshape(len(f), 1, -1), 1024).squeeze(1)
                       for f in fs], 1)
    ref = F.adaptive_avg_pool1d(pre.reshape(len(pre), 1, -1), 1024).reshape(len(pre), -1)
    np.testing.assert_allclose(ours.reshape(-1, 1024), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_tiled_features_are_the_tiles_features_in_place():
    """data.tile: the features of a (64, 96) canvas cut into (32, 32) tiles equal each tile's own
    features (the backbone run on the tile alone), put back row-major on the stitched grid."""
    from softpatch_jax.features.extractor import Embedder

    whole = Embedder("efficientnet_lite0", ("stage3", "stage5"), "random", embed_dim=64)
    tiled = Embedder("efficientnet_lite0", ("stage3", "stage5"), "random", embed_dim=64,
                     tile=32)
    images = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
    gh, gw = whole.grid(32)
    assert tiled.grid((64, 96)) == (2 * gh, 3 * gw)
    got = tiled(images).reshape(2, 2 * gh, 3 * gw, -1)
    for r in range(2):
        for c in range(3):
            tile = images[:, 32 * r:32 * (r + 1), 32 * c:32 * (c + 1)]
            ref = whole(tile).reshape(2, gh, gw, -1)
            np.testing.assert_allclose(got[:, r * gh:(r + 1) * gh, c * gw:(c + 1) * gw], ref,
                                       rtol=1e-5, atol=1e-5)
