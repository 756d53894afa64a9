"""fnn.sweep: every run equals its solo run; the summary statistics; bad grids."""

import math

import jax
import numpy as np
import pytest

import fnn
from fnn.data.datasets import load
from fnn.analysis.stats import mean_ci, t_quantile
from fnn.training.sweep import sweep
from fnn.data.tables import as_binary


def _solo(net, loss, x, v, test, config, steps):
    k_init, k_run, _ = jax.random.split(jax.random.key(config["seed"]), 3)
    params = fnn.init(k_init, net, config["init"])
    params = [{"W": l["W"] * config["init_scale"], "b": l["b"]} for l in params]
    lr = config["lr"]
    if config["schedule"] != "constant":
        lr = fnn.make_schedule(config["schedule"], lr, config["epochs"] * steps)
    opt = fnn.get_optimizer(config["optimizer"], lr, config["momentum"])
    return fnn.fit(net, loss, params, x, v, key=k_run, optimizer=opt, epochs=config["epochs"],
                   batch_size=config["batch_size"], l2=config["l2"], dropout=config["dropout"], test=test)


def _moons(dtype):
    d = as_binary(load("moons"))
    cast = lambda a: np.asarray(a, dtype)
    return cast(d.x_train), cast(d.y_train), (cast(d.x_test), cast(d.y_test))


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_every_run_equals_its_solo_run(precision):
    with jax.enable_x64(precision == "float64"):
        x, v, test = _moons(np.float64 if precision == "float64" else np.float32)
        net = fnn.MLP((2, 12, 1), ("tanh", "identity"))
        grid = {"lr": [0.01, 0.05], "dropout": [0.0, 0.2], "l2": [0.0, 1e-3], "init_scale": [1.0, 0.5],
                "optimizer": ["momentum", "adam"]}
        if precision == "float32":  # the float32 check on a smaller grid (the program is the same)
            grid = {"lr": [0.01, 0.05], "dropout": [0.0, 0.2], "optimizer": ["adam"]}
        result = sweep(net, "binary_cross_entropy", x, v, seeds=[0, 7], grid=grid, test=test, epochs=2,
                       batch_size=32, schedule="cosine")
        runs = 2 * math.prod(len(a) for a in grid.values())
        assert len(result.configs) == runs and result.history["test_loss"].shape == (runs, 2)
        rtol = 1e-11 if precision == "float64" else 2e-4
        for i in range(0, runs, 9 if runs > 8 else 3):  # runs among which every setting and both seeds vary
            c = result.configs[i]
            params, history = _solo(net, "binary_cross_entropy", x, v, test, c, len(x) // 32)
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(result.run_params(i))):
                np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * float(np.abs(a).max()))
            for k in ("batch_loss", "train_loss", "test_loss", "test_accuracy", "lr"):
                np.testing.assert_allclose(result.history[k][i], history[k], rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_a_sweep_of_one_run_equals_fit(precision):
    # The same operations in the same order, except that a run axis of size 1 turns each
    # matrix product into a batched one, whose float32 kernels may sum in another order.
    with jax.enable_x64(precision == "float64"):
        d = load("digits")
        dtype = np.float64 if precision == "float64" else np.float32
        x, xt = np.asarray(d.x_train, dtype), np.asarray(d.x_test, dtype)
        net = fnn.MLP((64, 32, 10), ("relu", "identity"))
        result = sweep(net, "softmax_cross_entropy", x, d.y_train, seeds=[3], test=(xt, d.y_test),
                       epochs=3, batch_size=32, lr=3e-3, dropout=0.1)
        config = result.configs[0]
        params, history = _solo(net, "softmax_cross_entropy", x, d.y_train, (xt, d.y_test), config, len(x) // 32)
        rtol = 1e-12 if precision == "float64" else 1e-4
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(result.run_params(0))):
            np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * float(np.abs(a).max()))
        for k in ("batch_loss", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(result.history[k][0], history[k], rtol=rtol)


def test_per_seed_data_and_divergence():
    net = fnn.MLP((64, 16, 10), ("relu", "identity"))
    splits = [load("digits", seed=s) for s in (0, 1)]
    stack = lambda name: np.stack([getattr(d, name) for d in splits])
    result = sweep(net, "softmax_cross_entropy", stack("x_train"), stack("y_train"), seeds=[0, 1],
                   test=(stack("x_test"), stack("y_test")), grid={"lr": [1e-3, 1e6]}, epochs=2,
                   optimizer="sgd")
    assert list(result.diverged[:2]) == [0, 0] and all(result.diverged[2:] == 1)
    assert np.isnan(result.history["test_loss"][2:]).all()
    assert all(np.isfinite(l).all() for l in jax.tree.leaves(result.run_params(3)))  # the last finite state
    assert result.best["lr"] == 1e-3 and result.summary[1]["diverged"] == 2
    params, _ = _solo(net, "softmax_cross_entropy", splits[1].x_train, splits[1].y_train, None,
                      result.configs[1], len(splits[1].x_train) // 32)
    np.testing.assert_allclose(result.run_params(1)[0]["W"], params[0]["W"], rtol=2e-4, atol=1e-6)


def test_summary_statistics_on_known_numbers():
    assert t_quantile(0.95, 4) == pytest.approx(2.776445, rel=1e-6)
    mean, std, half, n = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (mean, n) == (3.0, 5) and std == pytest.approx(math.sqrt(2.5))
    assert half == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert mean_ci([2.0, float("nan"), 4.0])[:2] == (3.0, pytest.approx(math.sqrt(2)))
    assert math.isnan(mean_ci([1.0])[2]) and mean_ci([])[3] == 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(grid={"lr": []}), "non-empty list"),
    (dict(grid={"hidden": [[8], [16]]}), "'hidden' cannot be swept"),
    (dict(grid={"lr": [0.1, -1.0]}), "learning rate must be positive"),
    (dict(seeds=0), "at least 1"),
    (dict(seeds=[1, 1]), "distinct integers"),
    (dict(learning_rate=0.1), "Unknown sweep settings: learning_rate"),
    (dict(clipnorm=1.0), r"Unknown sweep settings: clipnorm \(did you mean 'clip_norm'\?\); known: lr, "),
    (dict(batch_size=10**6), "larger than the"),
])
def test_bad_sweeps_get_one_clear_error(kwargs, message):
    d = load("xor")
    net = fnn.MLP((2, 4, 2), ("tanh", "identity"))
    with pytest.raises(ValueError, match=message):
        sweep(net, "softmax_cross_entropy", d.x_train, d.y_train, **{"epochs": 1, **kwargs})


# --- fnn sweep -------------------------------------------------------------------------------------

def test_fnn_sweep_end_to_end_equals_fnn_train(tmp_path, capsys):
    import json

    from fnn.io import checkpoint
    from fnn.cli.main import main

    small = ["--dataset", "moons", "--hidden", "8", "--epochs", "2", "--no-progress"]
    assert main(["sweep", *small, "--lr", "0.01", "0.03", "--seeds", "0", "4", "--dropout", "0.1",
                 "--out", str(tmp_path / "sw")]) == 0
    out = capsys.readouterr().out
    assert "4 runs (2 seeds × --lr 0.01 0.03)" in out and "best by test accuracy" in out
    assert "runner-up --lr 0.0" in out and "best − runner-up" in out and "over 2 seeds" in out
    for name in ("sweep.json", "summary.csv", "summary.md", "curves.png", "params.npz"):
        assert (tmp_path / "sw" / name).stat().st_size > 0
    doc = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["config"]["seed"] for r in doc["runs"]] == [0, 4, 0, 4]
    assert len(doc["summary"]) == 2 and doc["summary"][1]["n"] == 2
    params = np.load(tmp_path / "sw" / "params.npz")
    run = 3  # lr 0.03, seed 4
    assert main(["train", *small, "--lr", "0.03", "--seed", "4", "--dropout", "0.1", "--out", str(tmp_path / "solo"),
                 "--no-gradcheck", "--no-plot"]) == 0
    solo = checkpoint.load(tmp_path / "solo" / "checkpoint.npz")
    for l, layer in enumerate(solo.params, 1):
        np.testing.assert_allclose(params[f"relu/W{l}"][run], layer["W"], rtol=1e-4, atol=1e-6)
    history = json.loads((tmp_path / "solo" / "metrics.json").read_text())["history"]
    np.testing.assert_allclose(doc["runs"][run]["history"]["test_loss"], history["test_loss"], rtol=1e-4)


@pytest.mark.parametrize("args,message", [
    (["--lr"], "expected at least one argument"),
    (["--dataset", "digits", "moons"], "--dataset takes one value in a sweep"),
    (["--loss", "mse", "mae"], "--loss takes one value in a sweep"),
    (["--seed", "3"], "not --seed"),
    (["--seeds", "0", "0"], "distinct seeds"),
    (["--lr", "0.1", "-1"], "must be positive"),
    (["--hidden", "4096", "4096", "--seeds", "3000"], "more than half of this machine"),
    (["--diagnostics"], "--diagnostics is not available in a sweep"),
    (["--early-stopping", "3"], "--early-stopping is not available in a sweep"),
])
def test_fnn_sweep_bad_inputs(args, message, tmp_path, capsys):
    from fnn.cli.main import main

    try:
        status = main(["sweep", "--dataset", "xor", "--epochs", "1", "--no-progress", *args,
                       "--out", str(tmp_path / "sw")])
    except SystemExit as exit_info:
        status = exit_info.code
    assert status == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()


def test_runs_split_over_devices_equal_one_device():
    from fnn.training.parallel import make_mesh

    d = load("digits")
    net = fnn.MLP((64, 16, 10), ("relu", "identity"))
    kwargs = dict(seeds=[0, 1], test=(d.x_test, d.y_test), epochs=2, dropout=0.1)
    one = sweep(net, "softmax_cross_entropy", d.x_train, d.y_train, grid={"lr": [1e-3, 3e-3, 1e-2, 3e-2]}, **kwargs)
    four = sweep(net, "softmax_cross_entropy", d.x_train, d.y_train, grid={"lr": [1e-3, 3e-3, 1e-2, 3e-2]},
                 mesh=make_mesh(4), **kwargs)  # grid points over 4 devices
    by_seed = sweep(net, "softmax_cross_entropy", d.x_train, d.y_train, grid={"lr": [1e-3, 3e-3, 1e-2]},
                    mesh=make_mesh(2), **kwargs)  # 3 points do not divide: seeds over 2 devices
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)  # the same runs, reductions partitioned
    np.testing.assert_allclose(by_seed.history["test_loss"], one.history["test_loss"][:6], rtol=1e-5)
    with pytest.raises(ValueError, match="cannot be split evenly over 4 devices"):
        sweep(net, "softmax_cross_entropy", d.x_train, d.y_train, seeds=3, grid={"lr": [1e-3, 1e-2, 0.1]},
              epochs=1, mesh=make_mesh(4))


def test_private_runs_equal_their_solo_dp_sgd_runs(x64):
    d = load("digits")
    x, xt = np.asarray(d.x_train, np.float64), np.asarray(d.x_test, np.float64)
    net = fnn.MLP((64, 16, 10), ("relu", "identity"))
    result = sweep(net, "softmax_cross_entropy", x, d.y_train, seeds=[2], grid={"lr": [1e-2, 3e-2]},
                   test=(xt, d.y_test), epochs=2, clip_norm=1.0, noise_multiplier=0.5)
    for i, config in enumerate(result.configs):
        k_init, k_run, _ = jax.random.split(jax.random.key(config["seed"]), 3)
        params, _ = fnn.fit(net, "softmax_cross_entropy", fnn.init(k_init, net, "he"), x, d.y_train, key=k_run,
                            optimizer=fnn.get_optimizer("adam", config["lr"]), epochs=2, batch_size=32,
                            clip_norm=1.0, noise_multiplier=0.5)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(result.run_params(i))):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
