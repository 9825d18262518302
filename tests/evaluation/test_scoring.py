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
