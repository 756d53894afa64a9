"""Multi-process data parallelism for real: two processes on 127.0.0.1 (CPU, gloo collectives)
against one process with the same number of devices, through the library and the CLI."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fnn.io import checkpoint

WORKER = Path(__file__).with_name("multihost_worker.py")
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(commands, env=None):
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for c in commands]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.linalg.norm(x - y) <= tol * max(np.linalg.norm(x), np.linalg.norm(y), 1e-300)


def test_fit_parallel_over_two_processes_equals_one_process(tmp_path):
    port = _free_port()
    multi, single = tmp_path / "multi.npz", tmp_path / "single.npz"
    _run_processes([[sys.executable, str(WORKER), str(port), "2", str(i), "2", str(multi)] for i in range(2)])
    _run_processes([[sys.executable, str(WORKER), "0", "1", "0", "4", str(single)]])
    with np.load(multi) as a, np.load(single) as b:
        assert sorted(a.files) == sorted(b.files)
        # float64: the same sums, reduced across processes by gloo instead of inside one process.
        _close([a[k] for k in sorted(a.files)], [b[k] for k in sorted(b.files)], 1e-12)


def test_fnn_train_over_two_processes_equals_one_process(tmp_path):
    common = [sys.executable, "-m", "fnn", "train", "--dataset", "moons", "--hidden", "16", "--epochs", "3",
              "--batch-size", "30", "--devices", "4", "--x64", "--no-progress", "--no-plot"]
    port = _free_port()
    env2 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    outs = _run_processes(
        [[*common, "--out", str(tmp_path / "multi"), "--coordinator", f"127.0.0.1:{port}",
          "--num-processes", "2", "--process-id", str(i)] for i in range(2)], env=env2)
    assert "final test" in outs[0] and "final test" not in outs[1]  # process 0 reports and writes
    env4 = {**env2, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    _run_processes([[*common, "--out", str(tmp_path / "single")]], env=env4)
    a = checkpoint.load(tmp_path / "multi" / "checkpoint.npz")
    b = checkpoint.load(tmp_path / "single" / "checkpoint.npz")
    assert a.step == b.step == 3
    _close(a.params, b.params, 1e-12)


def test_distributed_flags_must_come_together(capsys):
    from fnn.cli.main import main

    assert main(["train", "--coordinator", "127.0.0.1:1", "--no-progress"]) == 2
    assert "--num-processes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--num-processes", "0"])
