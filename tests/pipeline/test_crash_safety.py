"""Processes die and run side by side: a fit killed at any moment (SIGKILL, SIGTERM, Ctrl-C)
leaves nothing that a later run reports, and the next run starts clean and gives the results of
an uninterrupted run; SIGTERM and Ctrl-C end a run promptly with one line; two fits on one
workdir never mix (the second refuses with one line naming the holder), a lock left by a killed
fit is taken over with a note, and sweep shards keep sharing a folder."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from softpatch_jax.data import synthetic
from softpatch_jax.io import lock
from softpatch_jax.pipeline import evaluate, predict, rundir, sweep

from conftest import REPO, load_config

pytestmark = pytest.mark.slow  # fits through the command line, in subprocesses

STOPPED = "finished results are kept, rerun to continue"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_data")
    for category in ("alpha", "beta"):  # two, so that a kill can fall between categories
        synthetic.make_mvtec_category(str(root), category, n_train=8, n_good=3, n_defect=2,
                                      size=32)
    return str(root)


def _args(data_root, workdir, cache_dir):
    return [sys.executable, "-m", "softpatch_jax.main", "--config=configs/mvtec.py",
            f"--config.data.root={data_root}", f"--workdir={workdir}",
            "--config.data.resize=32", "--config.data.image_size=32",
            "--config.data.batch_size=8", f"--config.runtime.cache_dir={cache_dir}"]


def _fit(data_root, workdir, cache_dir):
    return subprocess.run(_args(data_root, workdir, cache_dir), cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def _metrics(workdir):
    """{category: result without timings} of a workdir (what a later run reports)."""
    timing = ("stage_seconds", "compiles", "compile_cache_hits")
    return {c: {k: v for k, v in r.items() if k not in timing and not k.startswith("seconds")}
            for c, r in rundir.RunDir(str(workdir)).results().items()}


@pytest.fixture(scope="module")
def reference(data_root, cache_dir, tmp_path_factory):
    """The metrics of an uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference") / "w"
    done = _fit(data_root, workdir, cache_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    return _metrics(workdir)


def _start_and_signal(data_root, workdir, cache_dir, signum, delay):
    """Starts a fit, sends `signum` `delay` seconds after its staging folder appears (the
    compute has begun) -> (return code, stderr, seconds from the signal to the exit)."""
    proc = subprocess.Popen(_args(data_root, workdir, cache_dir), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (os.path.isdir(workdir)
               and any(n.startswith(".staging-") for n in os.listdir(workdir))):
        assert proc.poll() is None and time.time() < deadline, "the fit never started"
        time.sleep(0.01)
    time.sleep(delay)
    sent = time.time()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.time() - sent


def _assert_nothing_half_done_is_reported(workdir, reference):
    """Whatever survived a kill is complete and is what an uninterrupted run reports."""
    if not os.path.isdir(workdir):
        return
    run = rundir.RunDir(str(workdir))
    found = _metrics(workdir)
    for category, metrics in found.items():
        assert metrics == reference[category]
        assert os.path.isdir(os.path.join(run.category_dir(category), "checkpoint"))
    listed = os.path.join(workdir, "metrics.json")
    if os.path.exists(listed):
        with open(listed) as f:
            assert set(json.load(f)["categories"]) == set(found)
    if found:  # predict sees only complete models
        assert set(predict.fitted_models(str(workdir))) == set(found)


@pytest.mark.parametrize("signum, code, what", [(signal.SIGTERM, 143, "terminated"),
                                               (signal.SIGINT, 130, "interrupted")],
                         ids=["sigterm", "ctrl-c"])
def test_a_stopped_fit_exits_promptly_with_one_line(data_root, cache_dir, tmp_path, reference,
                                                    signum, code, what):
    workdir = tmp_path / "w"
    rc, err, seconds = _start_and_signal(data_root, workdir, cache_dir, signum, 1.0)
    assert rc == code, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"{what}; {STOPPED}"
    assert seconds < 10  # the grace for a native call is 3 s
    _assert_nothing_half_done_is_reported(workdir, reference)
    if os.path.isdir(workdir):  # no staging folder and no lock left behind
        assert not [n for n in os.listdir(workdir) if n.startswith((".staging-", ".lock"))]
    rerun = _fit(data_root, workdir, cache_dir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _metrics(workdir) == reference


def test_a_fit_killed_at_any_moment_leaves_nothing_reported_and_reruns_clean(
        data_root, cache_dir, tmp_path, reference):
    workdir = tmp_path / "w"
    for delay in (0.0, 0.7, 1.5, 2.5, 4.0):  # from the first compute to the last category
        rc, _, _ = _start_and_signal(data_root, workdir, cache_dir, signal.SIGKILL, delay)
        if rc == 0:  # finished before the kill: nothing left to kill
            break
        assert rc == -signal.SIGKILL
        _assert_nothing_half_done_is_reported(workdir, reference)
    rerun = _fit(data_root, workdir, cache_dir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Traceback" not in rerun.stderr
    assert _metrics(workdir) == reference
    assert not [n for n in os.listdir(workdir) if n.startswith((".staging-", ".lock"))]


def test_a_native_call_is_ended_after_the_grace(tmp_path):
    """SIGTERM while the main thread is inside one long XLA computation (Python cannot unwind
    until it returns): the watcher ends the process after the grace, with the one line."""
    script = textwrap.dedent("""
        import jax
        from jax import lax
        from softpatch_jax.pipeline import cli

        spin = jax.jit(lambda x, n: lax.fori_loop(0, n, lambda i, c: c * 1.0000001 + 1e-9, x))
        spin(1.0, 10).block_until_ready()

        def work():
            print("ready", flush=True)
            spin(1.0, 2_000_000_000).block_until_ready()  # minutes on a CPU
            print("finished", flush=True)

        cli.run_or_exit(work)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "finished" not in out
    assert err.strip() == f"terminated; {STOPPED}"
    assert 2.5 < time.time() - sent < 10


_SWALLOWED = textwrap.dedent("""
    import gc, signal, sys, time
    from softpatch_jax.pipeline import cli

    signum = getattr(signal, sys.argv[1])

    def stop_in_gc_callback(phase, info):  # as JAX's _xla_gc_callback: Python swallows its raise
        gc.callbacks.remove(stop_in_gc_callback)
        signal.raise_signal(signum)

    def work():
        if sys.argv[2] == "gc":
            gc.callbacks.append(stop_in_gc_callback)
            gc.collect()
            time.sleep(2)  # the stop is delivered again meanwhile
        else:
            try:
                signal.raise_signal(signum)
            except BaseException:  # a library that catches everything
                pass
        print("next line", flush=True)
        print("finished", flush=True)

    cli.run_or_exit(work)
""")


@pytest.mark.parametrize("signame, code, what", [("SIGTERM", 143, "terminated"),
                                                 ("SIGINT", 130, "interrupted")],
                         ids=["sigterm", "ctrl-c"])
def test_a_stop_raised_where_python_swallows_it_is_not_lost(signame, code, what):
    """A stop raised inside a gc callback (seen under load in JAX's) is delivered again at the
    moment after, quietly; one swallowed by the work itself ends the process once the work
    returns. Both exit with the signal's code and the one line, never with 0."""
    gc = subprocess.run([sys.executable, "-c", _SWALLOWED, signame, "gc"], cwd=REPO,
                        text=True, capture_output=True, timeout=120)
    assert gc.returncode == code, gc.stderr[-2000:]
    assert gc.stdout == ""  # stopped within the sleep after the collection
    assert gc.stderr.strip() == f"{what}; {STOPPED}"  # no "Exception ignored", no traceback
    caught = subprocess.run([sys.executable, "-c", _SWALLOWED, signame, "caught"], cwd=REPO,
                            text=True, capture_output=True, timeout=120)
    assert caught.returncode == code, caught.stderr[-2000:]
    assert caught.stdout == "next line\nfinished\n"
    assert caught.stderr.strip() == f"{what}; {STOPPED}"


def test_a_second_stop_does_not_cut_the_cleanups_short():
    """SIGTERM, then another stop while the first unwinds through a `finally` (a staging
    folder's removal): the cleanup runs to its end, then the one line and 143."""
    script = textwrap.dedent("""
        import signal, time
        from softpatch_jax.pipeline import cli

        def work():
            try:
                print("ready", flush=True)
                time.sleep(60)
            finally:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C pressed during the cleanup
                time.sleep(0.2)
                print("cleaned up", flush=True)

        cli.run_or_exit(work)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert out == "cleaned up\n"
    assert err.strip() == f"terminated; {STOPPED}"


_HOLDER = textwrap.dedent("""
    import sys
    from softpatch_jax.io.lock import workdir_lock

    with workdir_lock(sys.argv[1], sys.argv[2], shared=sys.argv[2] != "fit"):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin
""")


def _hold(workdir, kind):
    """A process holding `workdir`'s lock as a fit (exclusive) or a sweep (shared)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir), kind], cwd=REPO,
                            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc):
    proc.stdin.close()
    proc.wait(timeout=30)


def test_a_second_fit_on_a_busy_workdir_refuses_with_one_line(data_root, cache_dir, tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    holder = _hold(workdir, "fit")
    try:
        second = _fit(data_root, workdir, cache_dir)
    finally:
        _release(holder)
    assert second.returncode == 2
    assert "Traceback" not in second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and f"in use by a fit (pid {holder.pid}" in line
    assert "choose another --workdir" in line
    assert sorted(os.listdir(workdir)) == ["run.log"]  # nothing of the refused fit but its log


def test_a_lock_left_by_a_killed_fit_is_taken_over_with_a_note(data_root, cache_dir, tmp_path,
                                                               caplog):
    workdir = tmp_path / "w"
    workdir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (workdir / lock.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "kind": "fit"}))
    (workdir / f".staging-{dead.pid}").mkdir()  # and its staging folder
    c = load_config("mvtec.py")
    c.data.root, c.data.category = data_root, "alpha"
    c.data.resize = c.data.image_size = 32
    c.data.batch_size = 8
    c.model.method = "patchcore"
    c.audit.enabled, c.threshold.source = False, "none"
    c.runtime.cache_dir = cache_dir
    with caplog.at_level("WARNING"):
        evaluate.train_and_evaluate(c, str(workdir))
    assert f"left by pid {dead.pid}" in caplog.text and "no longer running" in caplog.text
    assert rundir.RunDir(str(workdir)).categories() == ["alpha"]
    assert not [n for n in os.listdir(workdir) if n.startswith((".staging-", ".lock"))]


def test_predict_and_fit_exclude_each_other_and_sweep_shards_share(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    sweeping = _hold(workdir, "sweep")
    try:
        with lock.workdir_lock(str(workdir), "sweep", shared=True):  # another shard
            pass
        with pytest.raises(lock.WorkdirBusy, match="in use by a sweep, prediction or export"):
            with lock.workdir_lock(str(workdir), "fit"):
                pass
    finally:
        _release(sweeping)
    fitting = _hold(workdir, "fit")
    try:
        with pytest.raises(lock.WorkdirBusy, match=f"in use by a fit \\(pid {fitting.pid}"):
            with lock.workdir_lock(str(workdir), "predict", shared=True):
                pass
    finally:
        _release(fitting)
    with lock.workdir_lock(str(workdir), "fit"):  # free again once both let go
        assert os.path.exists(workdir / lock.LOCK_FILE)
    assert not os.path.exists(workdir / lock.LOCK_FILE)


def test_sweep_shards_run_together_on_one_folder(data_root, cache_dir, tmp_path):
    c = load_config("sweeps/noise.py")
    c.data.root, c.data.category = data_root, "alpha"
    c.data.resize = c.data.image_size = 32
    c.data.batch_size = 8
    c.sweep.ratios, c.sweep.discriminators, c.sweep.overlays = "0,0.1", "none,lof", False
    c.audit.enabled, c.threshold.source = False, "none"
    c.runtime.cache_dir = cache_dir
    workdir = tmp_path / "sweep"
    other = subprocess.Popen(_sweep_args(data_root, workdir, cache_dir, "--shard=1/2"),
                             cwd=REPO, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    sweep.run_sweep(c, str(workdir), shard="0/2")
    _, err = other.communicate(timeout=300)
    assert other.returncode == 0, err[-2000:]
    assert len(sweep.finished_points(str(workdir))) == 4
    assert not os.path.exists(workdir / lock.LOCK_FILE)


def _sweep_args(data_root, workdir, cache_dir, *extra):
    return [sys.executable, "-m", "experiments.sweep", "--config=configs/sweeps/noise.py",
            f"--workdir={workdir}", f"--config.data.root={data_root}",
            "--config.data.category=alpha", "--config.data.resize=32",
            "--config.data.image_size=32", "--config.data.batch_size=8",
            "--config.sweep.ratios=0,0.1", "--config.sweep.discriminators=none,lof",
            "--config.sweep.overlays=False", "--config.audit.enabled=False",
            "--config.threshold.source=none", f"--config.runtime.cache_dir={cache_dir}"
            ] + list(extra)


def _points(workdir):
    """{point: metrics without timings} of a sweep folder."""
    return {(r["category"], r["mode"], r["ratio"], r["method"]):
            {k: v for k, v in r.items() if k != "seconds" and not k.startswith("seconds_")
             and k not in ("stage_seconds", "compiles", "compile_cache_hits")}
            for r in sweep.finished_points(str(workdir))}


def test_a_sweep_killed_at_any_moment_resumes_to_the_uninterrupted_results(
        data_root, cache_dir, tmp_path):
    clean = subprocess.run(_sweep_args(data_root, tmp_path / "clean", cache_dir), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-2000:]
    reference = _points(tmp_path / "clean")
    assert len(reference) == 4
    workdir = tmp_path / "w"
    for signum, delay in ((signal.SIGKILL, 0.5), (signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)):
        proc = subprocess.Popen(_sweep_args(data_root, workdir, cache_dir), cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        mine = f".staging-{proc.pid}"  # a killed run's staging stays until the next run starts
        while not (os.path.isdir(workdir) and mine in os.listdir(workdir)):
            assert proc.poll() is None and time.time() < deadline, "the sweep never started"
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            break
        if signum == signal.SIGTERM:
            assert proc.returncode == 143 and "Traceback" not in err
            assert err.strip().splitlines()[-1] == f"terminated; {STOPPED}"
        found = _points(workdir)  # every point that survived is whole and right
        assert {k: reference[k] for k in found} == found
    rerun = subprocess.run(_sweep_args(data_root, workdir, cache_dir), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _points(workdir) == reference
    assert not [n for n in os.listdir(workdir) if n.startswith((".staging-", ".lock"))]


def test_a_category_caught_between_two_renames_is_restored(tmp_path):
    """A kill between the two renames of a category's replacement leaves only the old folder
    under a dot name: the next run puts it back (or drops it when a new one is in place)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = tmp_path / "categories"
    (root / f".old-alpha-{dead.pid}").mkdir(parents=True)
    (root / f".old-alpha-{dead.pid}" / "result.json").write_text("{}")
    (root / "beta").mkdir()
    (root / f".old-beta-{dead.pid}").mkdir()
    (root / f".old-gamma-{os.getpid()}").mkdir()  # a live run's: left alone
    rundir.remove_dead_staging(str(tmp_path))
    assert sorted(os.listdir(root)) == [f".old-gamma-{os.getpid()}", "alpha", "beta"]
    assert (root / "alpha" / "result.json").read_text() == "{}"
