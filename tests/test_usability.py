"""What a researcher expects from a run: schedules, early stopping, their own data, binary tasks,
repeat runs (--config), honest timings, the compile cache, progress in chunks, readable displays."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import fnn
import fnn.training.trainer
from fnn.io import checkpoint
from fnn.cli.main import compile_cache, main
from fnn.data.datasets import load
from fnn.data.tables import load_table

QUIET = ["--no-progress", "--no-plot", "--no-gradcheck"]


# --- schedules -----------------------------------------------------------------------------------

def test_each_schedule_has_its_documented_values():
    lr, total = 0.1, 100
    const = fnn.make_schedule("constant", lr, total)
    assert float(const(0)) == float(const(99)) == pytest.approx(lr)
    cos = fnn.make_schedule("cosine", lr, total)
    assert float(cos(0)) == pytest.approx(lr) and float(cos(50)) == pytest.approx(lr / 2, rel=1e-5)
    assert float(cos(100)) == pytest.approx(0.0, abs=1e-9)
    warm = fnn.make_schedule("warmup_cosine", lr, total, warmup_steps=10)
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(lr / 2) and float(warm(10)) == pytest.approx(lr)
    assert float(warm(55)) == pytest.approx(lr / 2, rel=1e-5)  # half way through the 90 cosine steps
    assert float(fnn.make_schedule("warmup_cosine", lr, total)(5)) == pytest.approx(lr)  # default warmup: 5%
    exp = fnn.make_schedule("exponential", lr, total)
    assert float(exp(100)) == pytest.approx(lr / 100, rel=1e-5) and float(exp(50)) == pytest.approx(lr / 10, rel=1e-5)
    step = fnn.make_schedule("step", lr, total)
    assert [float(step(t)) for t in (49, 50, 74, 75)] == pytest.approx([lr, lr / 10, lr / 10, lr / 100])
    ramp = fnn.make_schedule("constant", lr, total, warmup_steps=4)
    assert [float(ramp(t)) for t in (0, 2, 4, 90)] == pytest.approx([0, lr / 2, lr, lr])


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="cosin"), "Unknown schedule 'cosin'"),
    (dict(total_steps=0), "positive number of steps"),
    (dict(warmup_steps=100), "must be shorter than the run"),
    (dict(warmup_steps=-1), "non-negative"),
])
def test_bad_schedules_are_refused(kwargs, message):
    args = {"name": "cosine", "learning_rate": 0.1, "total_steps": 100, **kwargs}
    with pytest.raises(ValueError, match=message):
        fnn.make_schedule(**args)


def test_fit_records_the_schedule_it_followed():
    data = load("moons")
    net = fnn.MLP((2, 8, 2), ("tanh", "identity"))
    params = fnn.init(jax.random.key(0), net)
    steps = len(data.x_train) // 32
    schedule = fnn.make_schedule("warmup_cosine", 0.05, 4 * steps, warmup_steps=steps)
    opt = fnn.get_optimizer("momentum", schedule)
    _, history = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train,
                         key=jax.random.key(1), optimizer=opt, epochs=4, batch_size=32)
    # The rate of each epoch's last step: steps·e − 1.
    assert history["lr"] == pytest.approx([float(schedule(steps * e - 1)) for e in range(1, 5)])
    _, plain = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train,
                       key=jax.random.key(1), optimizer=optax.sgd(0.05), epochs=1, batch_size=32)
    assert "lr" not in plain  # a rate the optimizer state does not hold is not made up


# --- history keys, chunked epochs ------------------------------------------------------------------

def test_batch_loss_is_the_running_mean_and_train_loss_the_full_set():
    data = load("moons")
    net = fnn.MLP((2, 8, 2), ("tanh", "identity"))
    params = fnn.init(jax.random.key(0), net)
    opt = fnn.plain_gd(0.1)
    _, history = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train,
                         key=jax.random.key(1), optimizer=opt, epochs=1, batch_size=32)
    epoch = fnn.training.train.make_epoch_fn(net, fnn.get_loss("softmax_cross_entropy"), opt, batch_size=32, donate=False)
    _, _, losses = epoch(params, opt.init(params), data.x_train, data.y_train, jax.random.fold_in(jax.random.key(1), 0))
    assert history["batch_loss"][0] == pytest.approx(float(np.mean(losses)), rel=1e-6)
    p, _ = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train,
                   key=jax.random.key(1), optimizer=opt, epochs=1, batch_size=32)
    full = fnn.evaluate(net, "softmax_cross_entropy", p, data.x_train, data.y_train)["loss"]
    assert history["train_loss"][0] == pytest.approx(full, rel=1e-6)
    assert history["batch_loss"][0] != pytest.approx(history["train_loss"][0], rel=1e-3)


def test_long_epochs_run_in_chunks_with_the_same_numbers(monkeypatch):
    data = load("moons")
    net = fnn.MLP((2, 8, 2), ("relu", "identity"))
    params = fnn.init(jax.random.key(0), net)
    kwargs = dict(key=jax.random.key(3), optimizer=optax.adam(1e-2), epochs=2, batch_size=8, dropout=0.2,
                  test=(data.x_test, data.y_test))
    whole = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, **kwargs)
    monkeypatch.setattr(fnn.training.trainer, "CHUNK_BATCHES", 7)  # 48 batches: 7 chunks, the last one partial
    chunked = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, **kwargs)
    for a, b in zip(jax.tree.leaves(whole[0]), jax.tree.leaves(chunked[0])):
        np.testing.assert_array_equal(a, b)
    assert whole[1] == chunked[1]


# --- early stopping --------------------------------------------------------------------------------

def test_early_stopping_on_a_planted_curve():
    curve = [1.0, 0.8, 0.7, 0.75, 0.7, 0.65, 0.7, 0.71, 0.72, 0.5]
    stop = fnn.EarlyStopping(3, "test_loss")
    stopped_at = next(e for e, a in enumerate(curve, 1) if stop.update({"epoch": e, "test_loss": a}))
    # 0.7 at epoch 5 ties the best, which is no gain; epoch 6 improves and restarts the count.
    assert (stopped_at, stop.best_epoch, stop.best) == (9, 6, 0.65)
    acc = fnn.EarlyStopping(2, "test_accuracy")
    assert acc.mode == "max"
    flags = [acc.update({"epoch": e, "test_accuracy": a}) for e, a in enumerate([0.5, 0.6, 0.6, 0.6], 1)]
    assert flags == [False, False, False, True]
    with pytest.raises(ValueError, match="positive number of epochs"):
        fnn.EarlyStopping(0)


def test_fit_stops_early_and_returns_the_best_parameters():
    data = load("digits")
    net = fnn.MLP((64, 64, 10), ("relu", "identity"))
    params = fnn.init(jax.random.key(0), net)
    seen = []
    best, history = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train,
                            key=jax.random.key(1), optimizer=optax.adam(0.02), epochs=60, batch_size=32,
                            test=(data.x_test, data.y_test), early_stopping=3,
                            on_epoch=lambda state, metrics: seen.append(state.params))
    losses = history["test_loss"]
    k = int(np.argmin(losses))
    assert len(losses) == k + 1 + 3 < 60  # stopped three epochs after the best
    assert fnn.evaluate(net, "softmax_cross_entropy", best, data.x_test, data.y_test)["loss"] == pytest.approx(losses[k])
    with pytest.raises(ValueError, match="held-out metric"):
        fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, key=jax.random.key(1),
                early_stopping=3)


def test_early_stopping_from_the_cli_keeps_best_npz(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--hidden", "64", "--lr", "0.02", "--epochs", "60", "--validation",
            "--early-stopping", "3", "--out", str(out), *QUIET]
    assert main(args) == 0
    text = capsys.readouterr().out
    history = json.loads((out / "metrics.json").read_text())["history"]
    k = int(np.argmin(history["val_loss"]))
    assert len(history["epoch"]) == k + 4 and f"best epoch {k + 1}" in text and "stopped early" in text
    best = checkpoint.load(out / "best.npz")
    assert best.step == k + 1
    assert main(["evaluate", str(out), "--best"]) == 0
    assert f"loss {history['val_loss'][k]:.4f}" in capsys.readouterr().out
    assert main(["train", "--resume", str(out), "--epochs", "80", "--no-progress"]) == 0
    assert "early stopping ended it" in capsys.readouterr().out
    assert main(["train", "--early-stopping", "3", "--out", str(tmp_path / "x"), *QUIET]) == 2
    assert "add --validation" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "x"), "--best"]) == 2 and not (tmp_path / "x").exists()


# --- your own data ---------------------------------------------------------------------------------

def _write_csv(path, header, rows):
    lines = ([",".join(header)] if header else []) + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_tables_load_with_header_detection_target_and_task(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    label = (x[:, 0] > 0).astype(int) * 3 + 1  # classes 1 and 4 -> 0 and 1
    rows = [[*a, b] for a, b in zip(x, label)]
    data = load_table(_write_csv(tmp_path / "t.csv", ["a", "b", "c", "cls"], rows))
    assert (data.task, data.num_classes, data.in_dim, len(data.x_train) + len(data.x_test)) == ("classification", 2, 3, 100)
    assert set(np.unique(data.y_train)) == {0, 1}
    np.testing.assert_allclose(data.x_train.mean(0), 0, atol=1e-5)  # standardised on train
    by_name = load_table(tmp_path / "t.csv", "a")  # a real-valued target: regression
    assert by_name.task == "regression" and by_name.in_dim == 3
    no_header = load_table(_write_csv(tmp_path / "n.csv", None, rows), 0)
    assert no_header.task == "regression" and len(no_header.x_train) + len(no_header.x_test) == 100
    as_regression = load_table(tmp_path / "t.csv", task="regression")
    assert as_regression.task == "regression"


@pytest.mark.parametrize("content,target,message", [
    ("", None, "is empty"),
    ("a,b\n", None, "header but no data rows"),
    ("a,b,c\n1,2,3\n4,5\n", None, "line 3: 2 cells where the header has 3"),
    ("a,b,c\n1,2,3\n4,,6\n", None, "line 3, column 'b': missing value"),
    ("a,b,c\n1,2,3\n4,NA,6\n", None, "line 3, column 'b': missing value"),
    ("a,b,c\n1,2,3\n4,x7,6\n", None, "line 3, column 'b': 'x7' is not a number"),
    ("a,b,c\n1,2,3\n4,5,6\n", "d", "no column 'd'"),
    ("a,b,c\n1,2,3\n4,5,3\n", None, "single class"),
    ("a\n1\n2\n", None, "single column"),
])
def test_bad_csv_files_get_one_clear_error(tmp_path, content, target, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_table(path, target)
    assert str(path) in str(info.value)


def test_npz_archives_load_with_and_without_a_test_split(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(80, 4)), rng.normal(size=(80, 2))
    np.savez(tmp_path / "r.npz", x=x, y=y)
    data = load_table(tmp_path / "r.npz")
    assert data.task == "regression" and data.out_dim == 2 and len(data.x_test) == 16
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(80) % 3, x_test=x[:10], y_test=np.arange(10) % 3)
    data = load_table(tmp_path / "c.npz")
    assert (data.task, data.num_classes, len(data.x_test)) == ("classification", 3, 10)


@pytest.mark.parametrize("arrays,message", [
    (dict(x=np.ones((4, 2))), "no array 'y'"),
    (dict(x=np.ones(4), y=np.ones(4)), "must be \\(examples, features\\)"),
    (dict(x=np.ones((4, 2)), y=np.ones(3)), "one target"),
    (dict(x=np.array([[1.0, np.nan], [1, 2]]), y=np.ones(2)), "x row 0 holds NaN"),
    (dict(x=np.ones((4, 2)), y=np.array(["a", "b", "c", "d"])), "not numbers"),
    (dict(x=np.ones((4, 2)), y=np.ones(4), x_test=np.ones((2, 2))), "only one of x_test and y_test"),
])
def test_bad_npz_files_get_one_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_table(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_table(tmp_path / "junk.npz")


def test_own_csv_and_binary_cross_entropy_from_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 2))
    rows = [[*a, int(a[0] * a[1] > 0)] for a in x]
    path = _write_csv(tmp_path / "quad.csv", ["u", "w", "same_sign"], rows)
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(path), "--target", "same_sign", "--hidden", "16", "--epochs", "30",
                 "--lr", "0.01", "--out", str(out), "--no-progress", "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "loss binary_cross_entropy" in text and "all layers agree" in text
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history["test_accuracy"][-1] > 0.85
    assert main(["train", "--dataset", "breast_cancer", "--epochs", "5", "--out", str(tmp_path / "bc"), *QUIET]) == 0
    assert "loss binary_cross_entropy" in capsys.readouterr().out
    assert main(["train", "--dataset", "digits", "--loss", "binary_cross_entropy", "--out", str(tmp_path / "d"),
                 *QUIET]) == 2
    assert "needs two classes" in capsys.readouterr().err
    assert main(["train", "--dataset", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m"), *QUIET]) == 2
    assert "no such data file" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "m").exists()


# --- repeat runs, timings, compile cache -----------------------------------------------------------

def test_config_repeats_a_run_exactly(tmp_path):
    first = tmp_path / "first"
    assert main(["train", "--dataset", "moons", "--hidden", "16", "--epochs", "3", "--schedule", "cosine",
                 "--dropout", "0.1", "--seed", "5", "--out", str(first), *QUIET]) == 0
    assert main(["train", "--config", str(first / "config.json"), "--out", str(tmp_path / "again"), *QUIET]) == 0
    a, b = (json.loads((p / "metrics.json").read_text())["history"] for p in (first, tmp_path / "again"))
    assert a == b and len(a["epoch"]) == 3
    doc = json.loads((tmp_path / "again" / "config.json").read_text())
    assert doc["config"]["seed"] == 5 and "--config" in doc["commands"][-1]["command"]
    assert set(doc["commands"][-1]["versions"]) == {"fnn", "jax", "jaxlib", "optax", "numpy"}
    assert main(["train", "--config", str(first), "--epochs", "4", "--out", str(tmp_path / "longer"), *QUIET]) == 0
    assert len(json.loads((tmp_path / "longer" / "metrics.json").read_text())["history"]["epoch"]) == 4


def test_timings_are_contiguous_and_sum_to_the_total(tmp_path):
    assert main(["train", "--dataset", "xor", "--epochs", "2", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    timings = json.loads((tmp_path / "r" / "timings.json").read_text())
    total = timings.pop("total")
    assert {"import", "data, checks, init", "gradcheck", "compile + first epoch", "write"} <= set(timings)
    assert all(a >= 0 for a in timings.values())
    assert math.isclose(sum(timings.values()), total, rel_tol=1e-9)


def test_compile_cache_folder_and_opt_outs(tmp_path, monkeypatch):
    monkeypatch.setenv("FNN_NO_COMPILE_CACHE", "1")
    assert compile_cache(False) is None
    monkeypatch.setenv("FNN_NO_COMPILE_CACHE", "0")
    assert compile_cache(True) is None  # --no-compile-cache
    assert jax.config.jax_compilation_cache_dir is None  # neither touched JAX's settings
    env = {**os.environ, "FNN_CACHE_DIR": str(tmp_path / "cache"), "FNN_NO_COMPILE_CACHE": "0"}
    run = [sys.executable, "-m", "fnn", "train", "--dataset", "xor", "--hidden", "4", "--epochs", "1", *QUIET]
    subprocess.run([*run, "--out", str(tmp_path / "a")], env=env, check=True, capture_output=True)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) >= 3  # the epoch, the metrics, the init ...
    subprocess.run([*run, "--out", str(tmp_path / "b"), "--no-compile-cache"],
                   env={**env, "FNN_CACHE_DIR": str(tmp_path / "other")}, check=True, capture_output=True)
    assert not (tmp_path / "other").exists()


# --- displays --------------------------------------------------------------------------------------

def test_rich_displays():
    data = load("digits")
    assert repr(data) == "Dataset('digits': 1438 train / 359 test examples, 64 features, 10 classes)"
    net = fnn.MLP((64, 8, 10), ("relu", "identity"))
    params = fnn.init(jax.random.key(0), net)
    report = fnn.gradcheck(net, "softmax_cross_entropy", params, data.x_train[:8], data.y_train[:8])
    page = report._repr_html_()
    assert page.count("<tr>") == 1 + len(report.rows) and "all layers agree" in page
    fig = fnn.plot_history({"epoch": [1, 2], "train_loss": [1.0, 0.5], "test_loss": [1.1, 0.7],
                            "train_accuracy": [0.5, 0.8], "test_accuracy": [0.4, 0.7], "lr": [0.1, 0.05],
                            "batch_loss": [1.2, 0.6]})
    assert len(fig.axes) == 3 and list(fig.axes[2].lines[0].get_xdata()) == [1, 2]


def test_make_update_step_donate_false_keeps_its_inputs():
    net = fnn.MLP((2, 4, 2), ("tanh", "identity"))
    params = fnn.init(jax.random.key(0), net)
    opt = optax.adam(1e-2)
    state = opt.init(params)
    x, v = np.ones((4, 2), np.float32), np.array([0, 1, 0, 1])
    step = fnn.make_update_step(net, "softmax_cross_entropy", opt, donate=False)
    step(params, state, x, v)
    step(params, state, x, v)  # the inputs are still alive
    assert np.isfinite(np.asarray(params[0]["W"])).all()
