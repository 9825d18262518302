"""1-NN search, anomaly maps and AUROC against brute force, SciPy and scikit-learn."""
import numpy as np
import pytest
import scipy.ndimage
from sklearn.metrics import roc_auc_score

from softpatch_jax.evaluation import anomaly_map, metrics
from softpatch_jax.features import patch as features
from softpatch_jax.ops import knn


def test_nearest_neighbour_matches_brute_force_chunked():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(334, 24)).astype(np.float32)
    bank = rng.normal(size=(97, 24)).astype(np.float32)
    d = ((q[:, None].astype(np.float64) - bank[None]) ** 2).sum(-1)
    for budget in (1024, 0.01):  # one chunk; chunks of 9 with a padded tail
        dist, idx = knn.nearest_neighbour(q, bank, budget)
        np.testing.assert_array_equal(idx, d.argmin(1))
        np.testing.assert_allclose(dist, d.min(1), rtol=1e-4, atol=1e-5)


def test_anomaly_map_matches_scipy_blur_of_bilinear_upsampling():
    rng = np.random.default_rng(1)
    grids = rng.random((3, 28, 28)).astype(np.float32)
    up = features.bilinear_matrix(28, 224)
    ref = np.stack([scipy.ndimage.gaussian_filter(up @ g @ up.T, sigma=4) for g in grids])
    np.testing.assert_allclose(anomaly_map.anomaly_maps(grids, 224, 4.0), ref, atol=1e-5)


def test_anomaly_map_matches_torch_upsampling():
    torch = pytest.importorskip("torch", reason="torch not installed")
    grids = np.random.default_rng(2).random((2, 28, 28)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.tensor(grids)[:, None], size=224, mode="bilinear",
                                         align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(anomaly_map.anomaly_maps(grids, 224, 0.0), up, atol=1e-5)


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(5):
        labels = rng.random(500) > 0.7
        scores = np.round(rng.random(500), 2)  # many ties
        assert metrics.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores),
                                                              abs=1e-12)
    masks = rng.random((4, 16, 16)) > 0.9
    maps = rng.random((4, 16, 16)) + masks
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_auroc_edge_cases():
    assert np.isnan(metrics.auroc([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="do not match"):
        metrics.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 5, 5)))


@pytest.mark.parametrize("size", [(160, 48), (48, 160), (224, 224)])
def test_rectangular_anomaly_maps_match_scipy_and_torch(size):
    """A (h, w) grid to an (H, W) canvas: SciPy's blur of an independent bilinear upsampling
    (each axis by PyTorch's rule, written out here), and torch's interpolate where present."""
    rng = np.random.default_rng(5)
    h, w = size[0] // 8, size[1] // 8
    grids = rng.random((2, h, w)).astype(np.float32)

    def bilinear(n_in, n_out):  # align_corners=False, as torch: src = (i + 0.5) n_in / n_out - 0.5
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            lo = min(int(np.floor(src)), n_in - 1)
            hi, t = min(lo + 1, n_in - 1), src - lo
            m[i, lo] += 1 - t
            m[i, hi] += t
        return m

    up = np.stack([bilinear(h, size[0]) @ g @ bilinear(w, size[1]).T for g in grids])
    ref = np.stack([scipy.ndimage.gaussian_filter(u, sigma=4) for u in up])
    got = anomaly_map.anomaly_maps(grids, size, 4.0)
    assert got.shape == (2, *size)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(anomaly_map.anomaly_maps(grids, size, 0.0), up, atol=1e-5)
    if size[0] == size[1]:  # N and (N, N) are one size
        np.testing.assert_array_equal(anomaly_map.anomaly_maps(grids, size[0], 4.0), got)
    torch = pytest.importorskip("torch", reason="torch not installed")
    t = torch.nn.functional.interpolate(torch.tensor(grids)[:, None], size=size, mode="bilinear",
                                        align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(up, t, atol=1e-5)
