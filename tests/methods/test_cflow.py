"""CFLOW (methods/cflow): the positional encoding, the coupling blocks, the log-likelihood and
the scorer against NumPy references written from the official code's formulas on generated
inputs; the log-determinant against finite differences; inverses by round trips; the stage
layout read back from the features; the learning-rate schedule; training that lowers the loss,
is seeded, resumes and equals the plain step-by-step loop; and the run through sweep, fit,
checkpoint, predict, export and report."""
import glob
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from softpatch_jax import methods
from softpatch_jax.features import padim
from softpatch_jax.methods.base import Features
from softpatch_jax.methods.cflow import flow as cflow
from softpatch_jax.methods.cflow import method as cflow_method
from softpatch_jax.methods.cflow import train as cflow_train
from softpatch_jax.pipeline import evaluate, sweep
from softpatch_jax.report import write_report

from conftest import load_config, loader_and_predict_scores, tiny_sweep_config


# ---------------------------------------------------------------- NumPy references (float64)

def _encoding_numpy(dim, h, w):
    """The official positionalencoding2d, channel by channel -> (h * w, dim)."""
    out = np.zeros((dim, h, w))
    half = dim // 2
    for j, k in enumerate(range(0, half, 2)):
        freq = math.exp(k * -(math.log(1e4) / half))
        for y in range(h):
            for x in range(w):
                out[2 * j, y, x] = math.sin(x * freq)
                out[2 * j + 1, y, x] = math.cos(x * freq)
                out[half + 2 * j, y, x] = math.sin(y * freq)
                out[half + 2 * j + 1, y, x] = math.cos(y * freq)
    return out.reshape(dim, -1).T


def _block_numpy(p, rotation, x, c, clamp):
    """FrEIA's AllInOneBlock forward (SOFTPLUS global affine, soft permutation)."""
    d2 = x.shape[1] // 2
    d1 = x.shape[1] - d2
    x1, x2 = x[:, :d1], x[:, d1:]
    s0, s1 = p["subnet"]["Dense_0"], p["subnet"]["Dense_1"]
    h = np.maximum(np.concatenate([x1, c], 1) @ s0["kernel"] + s0["bias"], 0)
    a = 0.1 * (h @ s1["kernel"] + s1["bias"])
    s = clamp * np.tanh(a[:, :d2])
    y = np.concatenate([x1, x2 * np.exp(s) + a[:, d2:]], 1)
    g = 0.1 * 2.0 * np.log1p(np.exp(0.5 * p["global_scale"]))  # 0.1 * softplus(beta=0.5)
    return (y * g + p["global_offset"]) @ rotation.T, s.sum(1) + np.log(g).sum()


def _flow_numpy(variables, x, c, clamp=1.9):
    v = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    logdet = np.zeros(len(x))
    for i in range(len(v["params"])):
        x, j = _block_numpy(v["params"][f"layers_{i}"], v["rotation"][f"layers_{i}"]["matrix"],
                            x, c, clamp)
        logdet += j
    return x, logdet


def _log_prob_numpy(z, logdet):
    d = z.shape[1]
    return (d * -0.9189385332046727 - 0.5 * (z ** 2).sum(1) + logdet) / d


def _upsample_numpy(m, size):
    """torch F.interpolate(bilinear, align_corners=True) on (N, h, w), by its formula."""
    n, h, w = m.shape
    H, W = size
    out = np.zeros((n, H, W))
    for Y in range(H):
        sy = Y * (h - 1) / (H - 1) if H > 1 else 0.0
        y0 = int(math.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
        for X in range(W):
            sx = X * (w - 1) / (W - 1) if W > 1 else 0.0
            x0 = int(math.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
            out[:, Y, X] = ((1 - fy) * ((1 - fx) * m[:, y0, x0] + fx * m[:, y0, x1])
                            + fy * ((1 - fx) * m[:, y1, x0] + fx * m[:, y1, x1]))
    return out


def _net(dim=7, blocks=3, cond=8, seed=0):
    net = cflow.ConditionalFlow(dim, blocks, 1.9)
    return net, cflow.init(net, jax.random.PRNGKey(seed), cond)


def _inputs(n=6, dim=7, cond=8, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)).astype(np.float32) * 2,
            rng.normal(size=(n, cond)).astype(np.float32))


# ---------------------------------------------------------------------------- the pieces

@pytest.mark.parametrize("dim,h,w", [(8, 3, 5), (128, 7, 4)])
def test_positional_encoding_matches_the_official_formula(dim, h, w):
    np.testing.assert_allclose(cflow.positional_encoding(dim, h, w), _encoding_numpy(dim, h, w),
                               atol=1e-6)
    with pytest.raises(ValueError, match="cflow.condition_dim=6 must be a multiple of 4"):
        cflow.positional_encoding(6, h, w)


def test_rotations_are_seeded_special_orthogonal():
    for dim in (2, 5, 16):
        r = np.asarray(cflow.special_orthogonal(jax.random.PRNGKey(dim), dim), np.float64)
        np.testing.assert_allclose(r @ r.T, np.eye(dim), atol=1e-5)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_array_equal(r, cflow.special_orthogonal(jax.random.PRNGKey(dim), dim))


def test_flow_matches_numpy_and_its_initial_global_scale_is_one():
    net, v = _net()
    x, c = _inputs()
    z, logdet = net.apply(v, x, c)
    z_ref, logdet_ref = _flow_numpy(v, x.astype(np.float64), c.astype(np.float64))
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logdet, logdet_ref, rtol=1e-5, atol=1e-5)
    g = 0.2 * np.log1p(np.exp(0.5 * np.asarray(v["params"]["layers_0"]["global_scale"],
                                               np.float64)))
    np.testing.assert_allclose(g, 1.0, rtol=1e-6)
    np.testing.assert_allclose(cflow.log_prob_per_dim(z, logdet),
                               _log_prob_numpy(z_ref, logdet_ref), rtol=1e-5, atol=1e-5)


def test_log_determinant_against_finite_differences():
    net, v = _net()
    x, c = _inputs(n=4)
    # Parameters moved off their initial values, so that no block is near the identity.
    v = {**v, "params": jax.tree.map(
        lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(9), a.shape), v["params"])}
    _, logdet = net.apply(v, x, c)
    eps = 1e-5
    for i in range(len(x)):
        xi, ci = x[i:i + 1].astype(np.float64), c[i:i + 1].astype(np.float64)
        def forward(at):
            return _flow_numpy(v, at, ci)[0][0]
        jac = np.stack([(forward(xi + eps * e) - forward(xi - eps * e)) / (2 * eps)
                        for e in np.eye(x.shape[1])], axis=1)
        assert float(logdet[i]) == pytest.approx(np.linalg.slogdet(jac)[1], abs=2e-4)
        assert np.linalg.slogdet(jac)[0] > 0


def test_inverse_round_trips():
    net, v = _net(dim=6)
    x, c = _inputs(dim=6)
    z, _ = net.apply(v, x, c)
    back = net.apply(v, z, c, method=cflow.ConditionalFlow.inverse)
    np.testing.assert_allclose(back, x, atol=2e-5)
    z2 = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    again, _ = net.apply(v, net.apply(v, z2, c, method=cflow.ConditionalFlow.inverse), c)
    np.testing.assert_allclose(again, z2, atol=2e-5)


def test_stage_layout_reads_each_tap_back_from_the_features():
    """Maps of 3 resolutions (one a non-integer ratio), upsampled and concatenated as the
    extractor does with every channel: each stage's own map comes back exactly."""
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(2, 12, 10, 3)), rng.normal(size=(2, 5, 4, 2)),
            rng.normal(size=(2, 1, 1, 4))]
    feats = np.asarray(padim.padim_features([jnp.asarray(m) for m in maps], np.arange(9)))
    layout = cflow_train.stages([m.shape for m in maps])
    assert [(s.start, s.stop, s.grid) for s in layout] == [(0, 3, (12, 10)), (3, 5, (5, 4)),
                                                          (5, 9, (1, 1))]
    for m, s in zip(maps, layout):
        np.testing.assert_array_equal(cflow_train.stage_fibres(feats, s, (12, 10)),
                                      m.reshape(2, -1, m.shape[-1]).astype(np.float32))
    with pytest.raises(ValueError, match="finer than"):
        cflow_train.native_positions((13, 10), (12, 10))


def _options(**fields):
    c = load_config("default.py").cflow
    c.update({**dict(coupling_blocks=2, condition_dim=8, fiber_batch=16, meta_epochs=3,
                     sub_epochs=2, learning_rate=2e-3, warmup_epochs=1), **fields})
    return cflow_train.Options.from_config(c)


def test_learning_rate_schedule_is_the_official_one():
    f = _options(meta_epochs=25, sub_epochs=8, learning_rate=2e-4, warmup_epochs=2)
    eta_min = 2e-4 * 0.1 ** 3
    cosine = lambda e: eta_min + (2e-4 - eta_min) * (1 + math.cos(math.pi * e / 25)) / 2  # noqa
    first = cflow_train.learning_rates(f, 0, 0, 10)
    assert first[0] == pytest.approx(2e-5)
    last = cflow_train.learning_rates(f, 1, 7, 10)
    # warm-up: linear from lr/10 towards cosine(2), reached where meta-epoch 2 starts
    assert last[-1] == pytest.approx(2e-5 + (159 / 160) * (cosine(2) - 2e-5), rel=1e-6)
    assert np.all(np.diff(np.concatenate([cflow_train.learning_rates(f, e, s, 10)
                                          for e in range(2) for s in range(8)])) > 0)
    for e in (2, 10, 24):
        np.testing.assert_allclose(cflow_train.learning_rates(f, e, 3, 4), cosine(e), rtol=1e-6)


def test_options_are_checked_naming_the_field():
    with pytest.raises(ValueError, match="cflow.condition_dim=6"):
        _options(condition_dim=6)
    with pytest.raises(ValueError, match="cflow.fiber_batch=0 must be >= 1"):
        _options(fiber_batch=0)
    c = load_config("default.py")
    c.model.method, c.data.tile = "cflow", 64
    with pytest.raises(ValueError, match="data.tile=64 is not available with model.method=cflow"):
        methods.from_config(c)


def _fibres(seed=0, n=12):
    """Two stages of generated fibres: a position-dependent mean plus noise."""
    rng = np.random.default_rng(seed)
    a = np.sin(np.arange(16)[:, None] * np.arange(1, 6)[None])[None] * 3 + \
        rng.normal(size=(n, 16, 5)) * 0.5
    b = rng.normal(size=(n, 4, 3)) * 0.3 + 1.0
    return [a.astype(np.float32), b.astype(np.float32)], [cflow_train.Stage(0, 5, (4, 4)),
                                                         cflow_train.Stage(5, 8, (2, 2))]


def _smoothed_decreasing(losses, window=2):
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    return bool(np.all(np.diff(smooth) < 0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_lowers_the_loss_is_seeded_and_resumes(tmp_path, seed):
    fibres, layout = _fibres(seed)
    f = _options()
    key = jax.random.PRNGKey(seed)
    out = cflow_train.train(f, fibres, layout, str(tmp_path / "a"), key, progress=False)
    log = json.load(open(glob.glob(str(tmp_path / "a" / "cflow" / "*" / "log.json"))[0]))
    assert len(log) == f.meta_epochs * f.sub_epochs
    for stage in range(len(layout)):
        assert _smoothed_decreasing([e["loss"][stage] for e in log]), log
    # Seeded: a second run in another folder gives the same flows.
    again = cflow_train.train(f, fibres, layout, str(tmp_path / "b"), key, progress=False)
    jax.tree.map(np.testing.assert_array_equal, out, again)
    # Resumable: with the last checkpoint gone it resumes after meta-epoch 2, to the same end.
    folder = glob.glob(str(tmp_path / "b" / "cflow" / "*"))[0]
    shutil.rmtree(os.path.join(folder, "checkpoints", str(f.meta_epochs)))
    resumed = cflow_train.train(f, fibres, layout, str(tmp_path / "b"), key, progress=False)
    jax.tree.map(np.testing.assert_array_equal, out, resumed)
    assert len(json.load(open(os.path.join(folder, "log.json")))) == len(log)
    # Other fibres (a k-fold refit) train in their own folder, leaving this one as it was.
    cflow_train.train(f, [x[:-2] for x in fibres], layout, str(tmp_path / "b"), key,
                      progress=False)
    assert len(glob.glob(str(tmp_path / "b" / "cflow" / "*"))) == 2


def _train_plainly(f, fibres, layout, key):
    """The training loop written out step by step, unpadded and unjitted (the official loop's
    order: per sub-epoch, per stage, a shuffle cut into batches, the remainder dropped), on
    train()'s seeds -> per stage its variables."""
    nets = [cflow.ConditionalFlow(s.dim, f.coupling_blocks, f.clamp_alpha) for s in layout]
    init_keys = jax.random.split(jax.random.fold_in(key, 0xC710), len(layout))
    data_key = jax.random.fold_in(key, 0xDA7A)
    tx = optax.scale_by_adam()
    variables = [cflow.init(net, k, f.condition_dim) for net, k in zip(nets, init_keys)]
    params = [v["params"] for v in variables]
    opt = [tx.init(p) for p in params]
    for meta in range(f.meta_epochs):
        for sub in range(f.sub_epochs):
            epoch_key = jax.random.fold_in(data_key, meta * f.sub_epochs + sub)
            for i, (s, net, x) in enumerate(zip(layout, nets, fibres)):
                cond = np.tile(cflow.positional_encoding(f.condition_dim, *s.grid), (len(x), 1))
                x = x.reshape(-1, s.dim)
                n = min(f.fiber_batch, len(x))
                perm = np.asarray(jax.random.permutation(jax.random.fold_in(epoch_key, i),
                                                         len(x)))
                rates = cflow_train.learning_rates(f, meta, sub, len(x) // n)
                for t, lr in enumerate(rates):
                    idx = perm[t * n:(t + 1) * n]

                    def loss(p):
                        z, logdet = net.apply({"params": p, "rotation": variables[i]["rotation"]},
                                              x[idx], cond[idx])
                        return jnp.mean(cflow.nll_loss(cflow.log_prob_per_dim(z, logdet)))
                    updates, opt[i] = tx.update(jax.grad(loss)(params[i]), opt[i], params[i])
                    params[i] = jax.tree.map(lambda p, u: p - lr * u, params[i], updates)
    return [{"params": p, "rotation": v["rotation"]} for p, v in zip(params, variables)]


def test_training_is_the_plain_loop(tmp_path):
    """33 images: 528 and 132 fibres in batches of 64, the remainders dropped; two stages,
    each its own optimiser state."""
    fibres, layout = _fibres(3, n=33)
    f = _options(meta_epochs=2, sub_epochs=2, warmup_epochs=1, fiber_batch=64)
    key = jax.random.PRNGKey(3)
    got = cflow_train.train(f, fibres, layout, str(tmp_path), key, progress=False)
    want = _train_plainly(f, fibres, layout, key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, want)


def _config(fields=None):
    c = load_config("default.py")
    c.update_from_flattened_dict({"model.method": "cflow", "cflow.coupling_blocks": 2,
                                  "cflow.condition_dim": 8, "cflow.fiber_batch": 16,
                                  "cflow.meta_epochs": 2, "cflow.sub_epochs": 1,
                                  "model.blur_sigma": 1.0, **(fields or {})})
    c.runtime.memory_budget_mb = 1
    return c


def test_scores_match_numpy(tmp_path):
    fibres, layout = _fibres(0)
    # The features as the extractor lays them out: stage 2 nearest-upsampled to the 4 x 4 grid.
    up = np.repeat(np.repeat(fibres[1].reshape(-1, 2, 2, 3), 2, 1), 2, 2).reshape(-1, 16, 3)
    train = np.concatenate([fibres[0], up], axis=2)
    m = methods.from_config(_config())
    plan = cflow_method.Plan(tuple(layout), str(tmp_path))
    fitted = m.fit(Features(train, (4, 4)), jax.random.PRNGKey(0), plan, progress=False)
    test = train[:5] + np.random.default_rng(1).normal(size=train[:5].shape).astype(np.float32)
    scores = m.score(fitted, Features(test, (4, 4)))
    total, maxima = np.zeros((5, 4, 4)), []
    for i, s in enumerate(layout):
        cond = _encoding_numpy(8, *s.grid)
        lp_train = _log_prob_numpy(*_flow_numpy(fitted.flows[i], fibres[i].reshape(
            -1, s.dim).astype(np.float64), np.tile(cond, (len(train), 1)), 1.9))
        maxima.append(lp_train.max())
        x = cflow_train.stage_fibres(test, s, (4, 4)).reshape(-1, s.dim).astype(np.float64)
        lp = _log_prob_numpy(*_flow_numpy(fitted.flows[i], x, np.tile(cond, (5, 1)), 1.9))
        ratio = np.exp(np.minimum(lp - lp_train.max(), 0.0))  # capped at 1
        total += _upsample_numpy(ratio.reshape(5, *s.grid), (4, 4))
    np.testing.assert_allclose(fitted.log_prob_max, maxima, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.grids, 2 - total, rtol=1e-4, atol=1e-5)
    again = m.score(m.fitted_from_arrays(fitted.to_arrays()), Features(test, (4, 4)))
    np.testing.assert_array_equal(again.grids, scores.grids)
    # In chunks of 2 test images (the last one padded): the same log-likelihoods.
    net = cflow.ConditionalFlow(5, 2, 1.9)
    cond = jnp.asarray(cflow.positional_encoding(8, 4, 4))
    x = jnp.asarray(cflow_train.stage_fibres(test, layout[0], (4, 4)))
    np.testing.assert_allclose(
        cflow_method.stage_log_probs(net, fitted.flows[0], x, cond, rows=2),
        cflow_method.stage_log_probs(net, fitted.flows[0], x, cond, rows=5), rtol=1e-6)


def test_cflow_runs_through_sweep_fit_predict_export_and_report(mvtec_root, tmp_path,
                                                                cache_dir):
    c = tiny_sweep_config(mvtec_root, cache_dir)
    c.cflow.update(dict(coupling_blocks=2, condition_dim=8, fiber_batch=32, meta_epochs=2,
                        sub_epochs=1))
    c.threshold.source = "none"  # the fit below checks the k-fold refits; each compiles anew
    c.threshold.folds = 2
    c.update_from_flattened_dict({"model.prefilter_share": 0.25})
    c.sweep.ratios, c.sweep.modes = "0.25", "overlap"
    c.sweep.discriminators, c.sweep.overlays = "cflow,padim+cflow", False
    rows = {r["method"]: r for r in sweep.run_sweep(c, str(tmp_path / "sweep"))}
    assert set(rows) == {"cflow", "padim+cflow"}
    assert rows["padim+cflow"]["prefilter"] == "padim"
    assert rows["padim+cflow"]["prefilter_dropped"] == round(0.25 * 15)  # the noise share
    run = c.copy_and_resolve_references()
    with run.unlocked():
        run.noise.ratio, run.noise.mode, run.model.method = 0.25, "overlap", "cflow"
        run.threshold.source = "auto"
        del run["sweep"]
    workdir = str(tmp_path / "fit")
    result = evaluate.train_and_evaluate(run, workdir)["widget"]
    assert result["image_auroc"] == rows["cflow"]["image_auroc"]
    assert result["threshold_source"] == "kfold"  # no leave-own-image-out form: folds
    assert result["flow_stages"] == 3
    logs = glob.glob(os.path.join(workdir, "cflow", "widget", "cflow", "*", "log.json"))
    assert len(logs) == 3  # the fit and its two folds
    exported, predicted = loader_and_predict_scores(workdir, mvtec_root, "cflow")
    np.testing.assert_allclose(exported, predicted, rtol=1e-4)
    assert "cflow" in open(write_report(workdir)).read()
