"""One compile per shape: the compile counter, the persistent compilation cache (in this process and
across processes), and a fit whose second category, and whose second run, compile nothing."""
import json
import os
import secrets
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from softpatch_jax.data import synthetic
from softpatch_jax.pipeline import compilation, evaluate, validation
from softpatch_jax.upgrade import upgrade

from conftest import REPO, load_config


def _fresh_function():
    """A jitted function whose program no cache has seen (its constant is random)."""
    c = float(secrets.randbits(24))
    return jax.jit(lambda x: jnp.sin(x) * c + 1.0)


def _array(n):
    return jax.device_put(np.ones(n, np.float32))  # no compile (jnp.asarray compiles one)


@pytest.fixture
def restore_cache():
    """Tests here switch the process's cache; put back what the session had."""
    before = compilation._cache_dir
    yield
    runtime = ({"cache_dir": os.path.dirname(before)} if before
               else {"compilation_cache": False})
    compilation.enable_persistent_cache(ConfigDict({"compilation_cache": True, **runtime}))


def test_counter_counts_one_compile_per_shape():
    f, a, b = _fresh_function(), _array(3), _array(5)
    with compilation.CompileCounter() as first:
        f(a).block_until_ready()
    with compilation.CompileCounter() as again:
        f(a).block_until_ready()
    with compilation.CompileCounter() as other:
        f(b).block_until_ready()
    assert (first.compiles, again.compiles, other.compiles) == (1, 0, 1)
    assert first.names == ["jit(<lambda>)"] and first.seconds > 0 and again.seconds == 0


def test_counters_nest_and_see_every_thread():
    f, g = _fresh_function(), _fresh_function()
    with compilation.CompileCounter() as outer:
        with compilation.CompileCounter() as inner:
            f(_array(2)).block_until_ready()
        worker = threading.Thread(target=lambda: g(_array(2)).block_until_ready())
        worker.start()
        worker.join()
    assert (inner.compiles, outer.compiles) == (1, 2)
    with compilation.CompileCounter() as after:
        pass
    f(_array(4)).block_until_ready()  # no counter active: counted by none
    assert after.compiles == 0 and outer.compiles == 2


def test_cache_switches_directories_and_turns_off(tmp_path, restore_cache):
    a, b = tmp_path / "a", tmp_path / "b"
    on = ConfigDict({"cache_dir": str(a), "compilation_cache": True})
    assert compilation.enable_persistent_cache(on) == str(a / "xla")
    assert compilation.enable_persistent_cache(on) == str(a / "xla")
    _fresh_function()(_array(3)).block_until_ready()
    assert len(os.listdir(a / "xla")) == 1  # even a tiny, quick program is kept
    compilation.enable_persistent_cache(ConfigDict({"cache_dir": str(b),
                                                    "compilation_cache": True}))
    _fresh_function()(_array(3)).block_until_ready()
    assert len(os.listdir(a / "xla")) == 1 and len(os.listdir(b / "xla")) == 1
    off = ConfigDict({"cache_dir": str(b), "compilation_cache": False})
    assert compilation.enable_persistent_cache(off) is None
    _fresh_function()(_array(3)).block_until_ready()
    assert len(os.listdir(b / "xla")) == 1


def test_a_directory_set_outside_is_kept(tmp_path, restore_cache):
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
    try:
        got = compilation.enable_persistent_cache(ConfigDict({"cache_dir": str(tmp_path),
                                                              "compilation_cache": True}))
        assert got == str(tmp_path / "users") == jax.config.jax_compilation_cache_dir
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_stored_configs_without_the_field_cache_and_a_bad_value_is_one_line(tmp_path):
    assert compilation.cache_dir(ConfigDict({"cache_dir": ""})).endswith(
        os.path.join("softpatch_jax", "xla"))
    r = load_config("default.py").runtime
    assert r.compilation_cache is True
    stored = json.loads(open(os.path.join(REPO, "tests", "fixtures", "config_0.2.json")).read())
    del stored["runtime"]["compilation_cache"]  # a config stored before the field: upgraded
    validation.check_runtime(upgrade(stored).runtime)
    with pytest.raises(ValueError, match=r"^runtime\.compilation_cache='yes' must be True or"):
        validation.check_runtime(ConfigDict({"memory_budget_mb": 64, "compilation_cache": "yes"}))


PROCESS = """
import sys
import jax, jax.numpy as jnp, numpy as np
from ml_collections import ConfigDict
from softpatch_jax.pipeline import compilation
compilation.enable_persistent_cache(ConfigDict({"cache_dir": sys.argv[1],
                                                "compilation_cache": True}))
x = jax.device_put(np.ones((4, 3), np.float32))
with compilation.CompileCounter() as c:
    jax.jit(lambda v: jnp.tanh(v) @ v.T + 2.0)(x).block_until_ready()
print(c.compiles, c.cache_hits)
"""


def test_a_second_process_loads_the_program_instead_of_compiling(tmp_path):
    def run():
        out = subprocess.run([sys.executable, "-c", PROCESS, str(tmp_path)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return tuple(int(v) for v in out.stdout.split())

    assert run() == (1, 0)
    compiles, hits = run()
    assert compiles == 0 and hits >= 1


def _two_categories(root):
    """Two categories of identical sizes (other pixels)."""
    for seed, name in enumerate(("alpha", "beta")):
        synthetic.make_mvtec_category(str(root), name, n_train=8, n_good=3, n_defect=3, size=32,
                                      seed=seed)
    return str(root)


SMALL = dict(resize=32, image_size=32, batch_size=8)


# What a category of the first's sizes may still compile: calibration's sketch bounds
# (ops/leave_out.SketchBounds, called from evaluation/pruned.py as it tightens) run on the training
# patches whose cheaper bound leaves the answer open, a count that depends on the pixels; its
# chunks are bucketed to powers of two (map_chunks(bucket=True)), so a category compiles one
# `_best_candidate` (and the two `stage` programs of jnp.asarray on its inputs) only for a bucket
# the first category did not use.
DATA_DEPENDENT = {"jit(_best_candidate)", "jit(stage)"}


def test_a_second_category_of_the_same_sizes_compiles_nothing(tmp_path, cache_dir, monkeypatch):
    """Every program of the second category was compiled (or loaded) for the first: the shapes
    are the same, and nothing else (category names, seeds, pixels) enters a program, except the
    row-count buckets of calibration's sketch bounds (DATA_DEPENDENT)."""
    counters = []

    class Recorded(compilation.CompileCounter):
        def __enter__(self):
            counters.append(self)
            return super().__enter__()

    monkeypatch.setattr(compilation, "CompileCounter", Recorded)
    c = load_config("mvtec.py")
    c.data.update(dict(root=_two_categories(tmp_path / "data"), category="alpha,beta", **SMALL))
    c.noise.ratio = 0.2
    c.runtime.cache_dir = cache_dir
    results = evaluate.train_and_evaluate(c, str(tmp_path / "run"))
    _, beta = counters
    assert results["beta"]["compiles"] == beta.compiles  # alpha: whatever earlier tests left
    assert set(beta.names) <= DATA_DEPENDENT, beta.names
    assert beta.names.count("jit(stage)") <= 2 * beta.names.count("jit(_best_candidate)")
    stored = json.loads((tmp_path / "run" / "categories" / "beta" / "result.json").read_text())
    assert stored["compiles"] == beta.compiles and stored["compile_cache_hits"] == beta.cache_hits
    assert stored["seconds_compile"] == round(beta.seconds, 2)


@pytest.mark.slow  # two runs through the command line
def test_a_second_run_compiles_nothing(tmp_path):
    """A fresh process fitting the same config loads every program from runtime.cache_dir/xla."""
    root = _two_categories(tmp_path / "data")

    def fit(workdir):
        args = ["--config=configs/mvtec.py", f"--config.data.root={root}",
                "--config.data.category=alpha,beta", "--config.noise.ratio=0.2",
                f"--config.runtime.cache_dir={tmp_path / 'cache'}", f"--workdir={workdir}"]
        args += [f"--config.data.{k}={v}" for k, v in SMALL.items()]
        out = subprocess.run([sys.executable, "-m", "softpatch_jax.main"] + args, cwd=REPO,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return {c: json.loads((workdir / "categories" / c / "result.json").read_text())
                for c in ("alpha", "beta")}

    first = fit(tmp_path / "run1")
    assert first["alpha"]["compiles"] > 0
    second = fit(tmp_path / "run2")
    assert [second[c]["compiles"] for c in ("alpha", "beta")] == [0, 0]
    assert second["alpha"]["compile_cache_hits"] >= first["alpha"]["compiles"]
    assert second["alpha"]["image_auroc"] == first["alpha"]["image_auroc"]
