"""``fnn bench`` runs end to end and writes its figures; the hand-written step compiles to the
same matrix multiplies as ``jax.grad``'s (the timing goals themselves live in the benchmark)."""

import importlib.util
import json
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import fnn
from fnn.cli.main import main


def test_bench_writes_a_table_for_every_row(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", "--configs", "digits", "--rounds", "2", "--steps", "32", "--peers", "torch",
                 "--out", str(out), "--leak-steps", "200"]) == 0
    res = json.loads((out / "benchmark.json").read_text())
    (config,) = res["configs"]
    assert config["config"] == "digits" and config["matmul_peak_gflops"] > 0
    rows = {r["impl"]: r for r in config["rows"]}
    fnn_rows = ["fnn manual (step per call)", "fnn jax.grad (step per call)", "fnn manual (scan-fused epoch)"]
    for name in fnn_rows:
        assert rows[name]["ms_per_step"] > 0 and rows[name]["fraction_of_matmul_peak"] > 0
        assert rows[name]["compiled_memory_mb"] > 0
    assert rows["fnn manual (step per call)"]["ratio_to_fnn_manual"] == 1.0
    # Twins: the same steps compiled a second time; their gap is reported as the resolution.
    for name in ("fnn manual (step per call, 2nd copy)", "fnn jax.grad (step per call, 2nd copy)"):
        assert rows[name]["ms_per_step"] > 0
    twin = max(abs(rows[f"fnn {m} (step per call, 2nd copy)"]["ms_per_step"]
                   / rows[f"fnn {m} (step per call)"]["ms_per_step"] - 1) for m in ("manual", "jax.grad"))
    assert config["twin_gap"] == pytest.approx(twin)
    assert "compiled twice differed by up to" in (out / "benchmark.md").read_text()
    # A peer is timed when installed and reported as skipped (with the fix) when not.
    if importlib.util.find_spec("torch") is None:
        assert "pip install" in config["skipped"]["torch"]
    else:
        assert any(name.startswith("PyTorch") and name.endswith("eager") for name in rows)
    assert res["leak_check"]["steps"] == 200
    assert (out / "benchmark.png").stat().st_size > 0
    assert "fnn manual (scan-fused epoch)" in (out / "benchmark.md").read_text()
    assert "measured matmul peak" in capsys.readouterr().out


def test_unknown_peer_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--peers", "tensorflow"])
    assert "invalid choice" in capsys.readouterr().err


def test_manual_step_compiles_to_the_same_matmuls_as_jax_grad():
    # MNIST-size step: 3 forward GEMMs, 3 weight-gradient GEMMs and 2 input-gradient GEMMs
    # (none for the input layer). A timing difference between the two cannot come from extra work.
    net = fnn.MLP((784, 1024, 1024, 10), "relu")
    params = fnn.init(jax.random.key(0), net, "he")
    opt = optax.sgd(0.01)
    x, v = jnp.ones((256, 784)), jnp.zeros((256,), jnp.int32)
    dots = {}
    for method in ("manual", "autodiff"):
        update = fnn.make_update_fn(net, "softmax_cross_entropy", opt, method)
        hlo = jax.jit(update).lower(params, opt.init(params), x, v).compile().as_text()
        dots[method] = sorted(re.findall(r"= f32\[([\d,]+)\]\{[\d,]+\} dot\(", hlo))
    assert len(dots["manual"]) == 8
    assert dots["manual"] == dots["autodiff"]
