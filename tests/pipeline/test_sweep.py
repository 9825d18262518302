"""Sweeps: resume after a kill without recomputing, feature-cache keying, aggregate outputs."""
import os

import numpy as np
import pytest

from softpatch_jax import methods
from softpatch_jax.features.cache import FeatureCache, config_key
from softpatch_jax.features.types import BackboneSpec
from softpatch_jax.pipeline import evaluate as train
from softpatch_jax.pipeline import sweep

from conftest import REPO


def _config(root):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "noise_sweep", os.path.join(REPO, "configs", "sweeps", "noise.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.root, c.data.category = root, "widget"
    c.data.resize = c.data.image_size = 32
    c.data.batch_size = 8
    c.sweep.ratios, c.sweep.discriminators = "0,0.25", "none,lof"
    c.sweep.overlays = False
    c.denoise.lof_k = 3
    return c


def test_resume_skips_finished_points(mvtec_root, tmp_path, monkeypatch):
    calls = []
    real = train.evaluate_category

    def counting(*args, **kwargs):
        calls.append(args[1:])
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while the third point runs
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate_category", counting)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(_config(mvtec_root), str(tmp_path))
    done = sorted(p for p, _, files in os.walk(tmp_path / "points") if "result.json" in files)
    assert len(done) == 2  # the point in flight left nothing behind
    calls.clear()
    monkeypatch.setattr(train, "evaluate_category",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    rows = sweep.run_sweep(_config(mvtec_root), str(tmp_path))
    assert len(calls) == 2 and len(rows) == 4  # only the two unfinished points ran
    table = (tmp_path / "results.md").read_text()
    # A clean sweep in a fresh directory gives the same table.
    fresh = tmp_path / "fresh"
    sweep.run_sweep(_config(mvtec_root), str(fresh))
    assert (fresh / "results.md").read_text() == table
    assert "| **mean** |" in table and (tmp_path / "auroc_vs_noise.png").is_file()
    csv_rows = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 5 and csv_rows[0].startswith("category,mode,ratio,method")


def test_features_are_extracted_once(mvtec_root, tmp_path):
    from softpatch_jax.data import mvtec

    class Counting:
        def __init__(self):
            self.seen = 0

        def grid(self, size):
            return (4, 4)

        def embed(self, samples, *args, **kwargs):
            self.seen += len(samples)
            return np.stack([np.full((16, 8), hash(s.name) % 97, np.float32) for s in samples])

    inner = Counting()
    cache = FeatureCache(inner, str(tmp_path))
    cat = mvtec.load_category(mvtec_root, "widget")
    a = cache.embed(cat.train[:5], 32, 32)
    b = cache.embed(cat.train[:7], 32, 32)
    assert inner.seen == 7 and np.array_equal(a, b[:5])


def test_cache_key_changes_with_what_changes_features(mvtec_root):
    c = _config(mvtec_root)
    spec = methods.from_config(c).features
    base = config_key(BackboneSpec.from_config(c), c.data, spec, c.seed)
    assert config_key(BackboneSpec.from_config(c), c.data, spec, c.seed) == base
    for section, field, value in (("data", "image_size", 64),
                                  ("backbone", "layers", "stage2,stage4"),
                                  ("backbone", "name", "efficientnet_lite1"),
                                  ("backbone", "weights", "random")):
        d = c.copy_and_resolve_references()
        d[section][field] = value
        key = config_key(BackboneSpec.from_config(d), d.data, methods.from_config(d).features,
                         d.seed)
        assert key != base, field
    d = c.copy_and_resolve_references()
    d.denoise.discriminator, d.noise.ratio = "gaussian", 0.3  # these reuse the features
    assert config_key(BackboneSpec.from_config(d), d.data, methods.from_config(d).features,
                      d.seed) == base


def test_impossible_point_fails_before_any_work(mvtec_root, tmp_path):
    c = _config(mvtec_root)
    c.sweep.ratios = "0,2.0"  # 24 anomalies needed, 8 exist
    with pytest.raises(ValueError, match="noise.ratio=2.0 needs 24"):
        sweep.run_sweep(c, str(tmp_path))
    assert not (tmp_path / "points").exists()


@pytest.mark.slow
def test_two_shards_at_once_equal_one_run(mvtec_root, tmp_path, cache_dir):
    """--shard=0/2 and --shard=1/2 run concurrently into one folder: together they compute
    every point once, and the tables equal an unsharded sweep's."""
    import subprocess
    import sys

    c = _config(mvtec_root)
    c.runtime.cache_dir = cache_dir
    sweep.run_sweep(c, str(tmp_path / "one"))
    args = [sys.executable, "-m", "experiments.sweep", "--config=configs/sweeps/noise.py",
            f"--workdir={tmp_path / 'sharded'}", f"--config.data.root={mvtec_root}",
            "--config.data.category=widget", "--config.data.resize=32",
            "--config.data.image_size=32", "--config.data.batch_size=8",
            "--config.sweep.ratios=0,0.25", "--config.sweep.discriminators=none,lof",
            "--config.sweep.overlays=False", "--config.denoise.lof_k=3",
            f"--config.runtime.cache_dir={cache_dir}"]
    procs = [subprocess.Popen(args + [f"--shard={i}/2"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    sweep.aggregate(str(tmp_path / "sharded"), sweep.finished_points(str(tmp_path / "sharded")))
    one = [_timeless(r) for r in sweep.finished_points(str(tmp_path / "one"))]
    both = [_timeless(r) for r in sweep.finished_points(str(tmp_path / "sharded"))]
    assert both == one and len(one) == 4
    assert (tmp_path / "sharded" / "results.md").read_text() == \
        (tmp_path / "one" / "results.md").read_text()


def _timeless(result: dict) -> dict:
    """A result without what differs between runs of the same computation: seconds (stage
    seconds included) and compile counts."""
    return {k: v for k, v in result.items()
            if not k.startswith(("seconds", "stage_seconds", "compile"))}


def test_batched_points_equal_sequential_ones(mvtec_root, tmp_path, cache_dir):
    """sweep.batch_points=3: the points run at once and their coresets meet in batched calls
    (problems of different sizes padded), with results equal to the one-at-a-time sweep."""
    from softpatch_jax.pipeline import batching

    c = _config(mvtec_root)
    c.runtime.cache_dir = cache_dir
    c.sweep.discriminators = "none,lof,gaussian"
    c.sweep.ratios = "0,0.25"
    one = sweep.run_sweep(c, str(tmp_path / "one"))
    sizes = []
    real = batching.CoresetHub._maybe_run

    def spy(self):
        before = len(self.batches)
        real(self)
        sizes.extend(self.batches[before:])
    batched = c.copy_and_resolve_references()
    batched.sweep.batch_points = 3
    import unittest.mock

    with unittest.mock.patch.object(batching.CoresetHub, "_maybe_run", spy):
        rows = sweep.run_sweep(batched, str(tmp_path / "batched"))
    assert [_timeless(r) for r in rows] == [_timeless(r) for r in one] and len(rows) == 6
    assert max(sizes) == 3  # three coresets in one call


def test_hub_batches_problems_of_different_sizes_exactly():
    import threading

    import jax

    from softpatch_jax.ops import coreset
    from softpatch_jax.pipeline import batching

    rng = np.random.default_rng(0)
    problems = [(rng.normal(size=(n, 16)).astype(np.float32), m, jax.random.PRNGKey(i),
                 (rng.random(n) > 0.2).astype(np.float32))
                for i, (n, m) in enumerate([(900, 40), (1200, 70), (700, 25)])]
    hub = batching.CoresetHub()
    sampler = batching.BatchedCoreset(coreset.GreedyCoreset(16, 5), hub)
    out = [None] * len(problems)

    def run(i):
        try:
            x, m, key, w = problems[i]
            out[i] = sampler.select(x, m, key, w)
        finally:
            hub.leave()
    for _ in problems:
        hub.join()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert hub.batches == [3]
    for (x, m, key, w), picks in zip(problems, out):
        single = coreset.greedy_coreset(x, m, key, w, 5, pruning=False)
        np.testing.assert_array_equal(picks, single)
