"""Sharded 1-NN and data-parallel extraction equal the single-device results (4 host devices,
in a subprocess because the device count is fixed when JAX starts)."""
import os
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    assert jax.device_count() == 4, jax.devices()
    from softpatch_jax.ops import knn, sharding
    from softpatch_jax.features.backbones import build_backbone
    rng = np.random.default_rng(0)
    q = rng.normal(size=(301, 16)).astype(np.float32)
    bank = rng.normal(size=(103, 16)).astype(np.float32)  # not a multiple of 4: padded shards
    d1, i1 = knn.nearest_neighbour(q, bank)
    for budget in (1024, 0.01):
        d4, i4 = sharding.sharded_nearest_neighbour(q, bank, sharding.device_mesh(), budget)
        np.testing.assert_array_equal(i4, i1)
        np.testing.assert_allclose(d4, d1, rtol=1e-6)
    module, variables = build_backbone("resnet18", ("layer2",), "random", seed=0)
    x = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    single = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(x))["layer2"])
    par = sharding.data_parallel(module.apply)(variables, x)["layer2"]
    assert len(par.sharding.device_set) == 4
    np.testing.assert_allclose(np.asarray(par), single, rtol=1e-5, atol=1e-5)
    print("SHARDED OK")
""")


def test_sharded_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "SHARDED OK" in out.stdout, out.stderr[-3000:]


def test_pipeline_on_four_devices_equals_one(mvtec_root, tmp_path, cache_dir):
    """The whole fit and evaluation with 4 devices (sharded bank, data-parallel extraction)
    gives the same metrics as on one."""
    import json

    results = {}
    for devices in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_PLATFORMS="cpu", XDG_CACHE_HOME=cache_dir)
        work = tmp_path / str(devices)
        out = subprocess.run(
            [sys.executable, "-m", "softpatch_jax.main", "--config=configs/mvtec.py",
             f"--config.data.root={mvtec_root}", "--config.data.resize=64",
             "--config.data.image_size=64", "--config.data.batch_size=8", f"--workdir={work}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        results[devices] = json.loads((work / "metrics.json").read_text())["categories"]["widget"]
    for k in ("image_auroc", "pixel_auroc", "aupro"):
        assert abs(results[1][k] - results[4][k]) < 1e-6, k


PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    from softpatch_jax.ops import knn, sharding
    pid, port = int(sys.argv[1]), sys.argv[2]
    sharding.maybe_initialize_distributed(True, coordinator_address=f"127.0.0.1:{port}",
                                          num_processes=2, process_id=pid)
    import jax
    assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(0)
    q = rng.normal(size=(301, 16)).astype(np.float32)
    bank = rng.normal(size=(103, 16)).astype(np.float32)
    mine = bank[:52] if pid == 0 else bank[52:]  # each process holds half of the bank
    d, i = sharding.sharded_nearest_neighbour(q, mine, sharding.device_mesh(), local=True)
    d1, i1 = knn.nearest_neighbour(q, bank)  # one process, the whole bank
    np.testing.assert_array_equal(i, i1)
    np.testing.assert_allclose(d, d1, rtol=1e-6)
    print("PROCESS OK", pid)
""")


def test_two_processes_each_with_half_the_bank_equal_one():
    """Multi-host for real: two processes on this machine (coordinator on 127.0.0.1, CPU
    collectives through gloo), each holding half of the bank, give one process's 1-NN."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS, str(pid), str(port)], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for pid, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"PROCESS OK {pid}" in out, err[-3000:]
