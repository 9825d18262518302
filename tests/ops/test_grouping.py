"""Discriminator groupings (ops/grouping.py) against brute-force NumPy and scikit-learn references
on the same candidate sets, chunking under the budget, and a misaligned set where position
grouping fails and neighbourhood grouping does not."""
import ast
import inspect

import numpy as np
import pytest
from sklearn.neighbors import LocalOutlierFactor

from softpatch_jax.ops import discriminators, grouping

GRID = (4, 5)
RADIUS = {"position": 0, "neighbourhood": 1, "global": None}  # None: any position


def _features(b=7, grid=GRID, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, grid[0] * grid[1], d)) * 2.0
    x[:2, 3] += rng.normal(size=(2, d)) * 4.0  # a few outliers
    return x.astype(np.float32)


def _candidates(b, grid, radius):
    """(N, N) bool, N = B * P: patch j is a candidate of patch i (another image, within the
    Chebyshev radius; radius None: anywhere)."""
    p = grid[0] * grid[1]
    image, pos = np.divmod(np.arange(b * p), p)
    row, col = np.divmod(pos, grid[1])
    cheb = np.maximum(abs(row[:, None] - row[None]), abs(col[:, None] - col[None]))
    near = np.ones_like(cheb, bool) if radius is None else cheb <= radius
    return (image[:, None] != image[None]) & near


def _distances(x):
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))


def _sklearn_lof(x, grid, radius, k):
    """scikit-learn's LOF on the full distance matrix with every non-candidate pair far away
    (the diagonal 0: scikit-learn drops each point from its own neighbours by finding it)."""
    cand = _candidates(x.shape[0], grid, radius)
    dist = np.where(cand, _distances(x), 1e9)
    np.fill_diagonal(dist, 0.0)
    lof = LocalOutlierFactor(n_neighbors=k, metric="precomputed").fit(dist)
    return -lof.negative_outlier_factor_.reshape(x.shape[:2]), lof.kneighbors()[1]


def _nearest_reference(x, grid, radius):
    cand = _candidates(x.shape[0], grid, radius)
    return 1.0 + np.where(cand, _distances(x), np.inf).min(1).reshape(x.shape[:2])


def _gaussian_reference(x, grid, radius):
    """1 + Mahalanobis distance to the Gaussian of all images' patches of the window."""
    b, p, d = x.shape
    pos = np.arange(p)
    row, col = np.divmod(pos, grid[1])
    out = np.zeros((b, p))
    for q in pos:
        window = np.maximum(abs(row - row[q]), abs(col - col[q])) <= radius
        samples = x[:, window].reshape(-1, d).astype(np.float64)
        cov = np.cov(samples.T) + 0.01 * np.eye(d)
        delta = x[:, q].astype(np.float64) - samples.mean(0)
        out[:, q] = 1 + np.sqrt(np.einsum("bi,ij,bj->b", delta, np.linalg.inv(cov), delta))
    return out


@pytest.mark.parametrize("name", ["position", "neighbourhood", "global"])
@pytest.mark.parametrize("k", [1, 3])
def test_lof_equals_sklearn_on_the_same_neighbour_sets(name, k):
    x = _features()
    ours = grouping.grouped_scores(x, "lof", name, k=k, radius=RADIUS[name] or 0, grid=GRID)
    ref, ref_neighbours = _sklearn_lof(x, GRID, RADIUS[name], k)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    if name != "position":  # the neighbour sets themselves
        find = grouping.window_neighbours if name == "neighbourhood" else None
        dist, idx = (find(x, GRID, RADIUS[name], k) if find else grouping.global_neighbours(x, k))
        np.testing.assert_array_equal(np.sort(idx.reshape(-1, k), 1), np.sort(ref_neighbours, 1))
        cand = _distances(x)[np.arange(idx.size) // k, idx.reshape(-1)].reshape(dist.shape)
        np.testing.assert_allclose(dist, cand, rtol=1e-5)


@pytest.mark.parametrize("name", ["position", "neighbourhood", "global"])
def test_nearest_equals_brute_force(name):
    x = _features()
    ours = grouping.grouped_scores(x, "nearest", name, radius=RADIUS[name] or 0, grid=GRID)
    np.testing.assert_allclose(ours, _nearest_reference(x, GRID, RADIUS[name]), rtol=1e-5)


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_gaussian_equals_numpy(radius):
    x = _features()
    name = "position" if radius == 0 else "neighbourhood"
    ours = grouping.grouped_scores(x, "gaussian", name, radius=radius, grid=GRID)
    np.testing.assert_allclose(ours, _gaussian_reference(x, GRID, radius), rtol=1e-4)


@pytest.mark.parametrize("disc", ["nearest", "gaussian", "lof"])
def test_radius_zero_is_position_grouping_bit_for_bit(disc):
    x = _features()
    position = grouping.grouped_scores(x, disc, "position", k=3, grid=GRID)
    window = grouping.grouped_scores(x, disc, "neighbourhood", k=3, radius=0, grid=GRID)
    np.testing.assert_array_equal(window, position)


@pytest.mark.parametrize("name,disc", [("neighbourhood", "lof"), ("neighbourhood", "nearest"),
                                       ("neighbourhood", "gaussian"), ("global", "lof")])
def test_tiny_budget_equals_one_chunk(name, disc):
    x = _features()
    k = 1 if disc == "nearest" else 3
    whole = grouping.grouped_scores(x, disc, name, k=k, radius=1, grid=GRID, budget_mb=1024)
    tiny = grouping.grouped_scores(x, disc, name, k=k, radius=1, grid=GRID, budget_mb=0.01)
    np.testing.assert_allclose(tiny, whole, rtol=1e-6)  # XLA rounds chunk sizes differently


def test_chunks_stay_within_the_budget():
    """Transistor size (234 images, 28 x 28, 128-d), radius 2: each chunk's working set under
    budget / THREADS and near the cache size; a tiny budget gives single positions / rows."""
    b, p, w, d = 234, 784, 25, 128
    share = 1024 / discriminators.THREADS * 2**20
    t, s = grouping._selection_shape(w * b)
    per_position = grouping._window_bytes(b, w, d, t, s)
    step = grouping.window_steps(b, p, w, d, budget_mb=1024)
    assert step * per_position <= share
    cached = discriminators.CACHE_MB * 2**20 // per_position
    assert step <= max(discriminators.MIN_CHUNK, cached)
    assert grouping.window_steps(b, p, w, d, budget_mb=1) == 1
    n = b * p
    t, s = grouping._selection_shape(n)
    rows = grouping.global_steps(n, d, budget_mb=1024)
    assert rows * grouping._global_bytes(d, t, s) <= share
    assert grouping.global_steps(n, d, budget_mb=1) == 1
    assert t * s >= n


def test_window_table():
    table, valid = grouping.window_table((3, 4), 1)
    assert table.shape == (12, 9)
    assert sorted(table[0][valid[0]]) == [0, 1, 4, 5]          # a corner: 2 x 2
    assert sorted(table[5][valid[5]]) == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert grouping.fewest_candidates(5, (3, 4), "neighbourhood", 1) == 4 * 4
    assert grouping.fewest_candidates(5, (3, 4), "global", 1) == 4 * 12
    assert grouping.fewest_candidates(5, (3, 4), "position", 1) == 4


@pytest.mark.parametrize("call,message", [
    (lambda x: grouping.grouped_scores(x, "gaussian", "global", grid=GRID),
     "denoise.grouping=global does not support denoise.discriminator=gaussian"),
    (lambda x: grouping.grouped_scores(x, "lof", "rows", grid=GRID),
     "denoise.grouping='rows' is unknown"),
    (lambda x: grouping.grouped_scores(x, "lof", "neighbourhood", radius=-1, grid=GRID),
     "denoise.group_radius=-1 must be an integer >= 0"),
    (lambda x: grouping.grouped_scores(x[:2], "lof", "neighbourhood", k=6, radius=0, grid=GRID),
     r"needs 6 candidate patches of other images, but some patches have 1"),
    (lambda x: grouping.grouped_scores(x, "lof", "neighbourhood", grid=(3, 3)),
     "needs the patch grid of the 20 positions"),
])
def test_bad_settings_are_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call(_features())
    assert "\n" not in str(err.value)


def misaligned(b=12, grid=(8, 8), d=8, shift=1, seed=0):
    """B images of one part on a plain background: a 3 x 3 object of distinct cells, shifted in
    each image by a random offset of up to `shift` patches (image 0 unshifted), plus small noise;
    image 0's object centre replaced by a new cell (the one true outlier). -> (B, P, d), the
    outlier's (image, position)."""
    rng = np.random.default_rng(seed)
    h, w = grid
    x = np.tile(rng.normal(size=d) * 3, (b, h, w, 1))
    part = rng.normal(size=(3, 3, d)) * 3
    offsets = rng.integers(-shift, shift + 1, size=(b, 2))
    offsets[0] = 0
    for i, (dy, dx) in enumerate(offsets):
        x[i, 3 + dy:6 + dy, 3 + dx:6 + dx] = part
    x += rng.normal(size=x.shape) * 0.05
    x[0, 4, 4] = rng.normal(size=d) * 3
    return x.reshape(b, h * w, d).astype(np.float32), (0, 4 * w + 4)


@pytest.mark.parametrize("disc", ["nearest", "gaussian", "lof"])
def test_misaligned_parts_fool_position_grouping_but_not_neighbourhood(disc):
    """Position grouping sees every shifted object cell as an outlier and ranks many normal
    patches above the defect; a window of radius 2 (two offsets of up to 1 apart) finds each
    cell in the other images and ranks the defect first, far ahead."""
    x, outlier = misaligned()
    normal = np.ones(x.shape[:2], bool)
    normal[outlier] = False
    position = grouping.grouped_scores(x, disc, "position", k=3, grid=(8, 8))
    assert (position[normal] > position[outlier]).sum() >= 10
    window = grouping.grouped_scores(x, disc, "neighbourhood", k=3, radius=2, grid=(8, 8))
    assert window[outlier] > window[normal].max() + 0.5 * (window[normal].max() - 1.0)


def _aligned_share_reference(x, grid, radius):
    """Brute force: each patch's nearest candidate (another image, within the window; ties to
    the lower column of the window kNN, i.e. the earlier offset, then the lower image) -> the
    share of patches whose nearest lies at their own position."""
    b, p, _ = x.shape
    cand = _candidates(b, grid, radius)
    dist = np.where(cand, _distances(x), np.inf)
    image, pos = np.divmod(np.arange(b * p), p)
    row, col = np.divmod(pos, grid[1])
    hits = 0
    for i in range(b * p):
        best = np.flatnonzero(dist[i] == dist[i].min())
        # The window kNN's column order: offset (row-major), then image.
        order = sorted(best, key=lambda j: ((row[j] - row[i]) * (2 * radius + 1)
                                            + (col[j] - col[i]), image[j]))
        hits += pos[order[0]] == pos[i]
    return hits / (b * p)


def shifted_scenes(b=10, grid=(8, 8), d=8, shift=1, seed=0):
    """B views of one structured scene (every cell its own feature, as a part and its board),
    each cropped at a random offset of up to `shift` patches, plus small noise -> (B, P, d)."""
    rng = np.random.default_rng(seed)
    h, w = grid
    scene = rng.normal(size=(h + 2 * shift, w + 2 * shift, d)) * 3
    offsets = rng.integers(0, 2 * shift + 1, size=(b, 2))
    x = np.stack([scene[dy:dy + h, dx:dx + w] for dy, dx in offsets])
    x += rng.normal(size=x.shape) * 0.05
    return x.reshape(b, h * w, d).astype(np.float32)


@pytest.mark.parametrize("shift", [0, 1])
def test_aligned_share_equals_brute_force_and_decides_auto(shift):
    """Aligned views meet their counterparts at their own position (share near 1: `position`);
    views shifted by up to a patch mostly meet them one position over (`neighbourhood`). A
    plain background is a case the share cannot see: there any position serves as well."""
    x = shifted_scenes(shift=shift, seed=3)
    share = grouping.aligned_share(x, (8, 8), 2)
    assert share == pytest.approx(_aligned_share_reference(x, (8, 8), 2), abs=1e-12)
    choice, got = grouping.resolve("auto", x, (8, 8), 2)
    assert got == share
    if shift == 0:
        assert share > 0.99 and choice == "position"
    else:
        assert share < grouping.ALIGNED_SHARE and choice == "neighbourhood"
    assert grouping.resolve("global", x, (8, 8), 2) == ("global", None)
    with pytest.raises(ValueError, match="decided per fit"):
        grouping.grouped_scores(x, "lof", "auto", k=3, radius=2, grid=(8, 8))


def test_grouping_holds_no_discriminator_name():
    """Registries are the only dispatch: ops/grouping.py runs a discriminator by what it declared
    at registration, so no registered discriminator's name appears in it as a string literal
    (a `name == "lof"` test, a table of names)."""
    tree = ast.parse(inspect.getsource(grouping))
    literals = {node.value for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not literals & set(discriminators.names())


def test_supported_discriminators_follow_their_declarations():
    for name in discriminators.names():
        disc = discriminators.get(name)
        neighbour, window = disc.from_neighbours is not None, disc.window is not None
        assert (name in grouping.supporting("global")) == neighbour
        assert (name in grouping.supporting("neighbourhood")) == (neighbour or window)
        assert grouping.supporting("auto") == grouping.supporting("neighbourhood")
        assert name in grouping.supporting("position")
    assert {"nearest", "lof"} <= set(grouping.supporting("global"))
    assert "gaussian" not in grouping.supporting("global")
