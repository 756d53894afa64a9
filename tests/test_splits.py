"""Leak-free splits: every statistic is fitted on the training rows only, after every split
(test, validation, per seed), checked against a computation by hand from the raw rows."""

import numpy as np
import pytest

from fnn.data import datasets
from fnn.cli.runs import build
from fnn.cli.config import DEFAULTS
from fnn.data.tables import as_binary, load_table


def _by_hand(x, y, n, seed, val_fraction=0.2, test_fraction=0.2):
    """The rows of the test, validation and training parts, drawn as documented, and the
    training part's float64 statistics."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(test_fraction * n))
    test, rest = order[:n_test], order[n_test:]
    inner = np.random.default_rng(seed + 1).permutation(len(rest))
    n_val = max(1, round(val_fraction * len(rest)))
    val, train = rest[inner[:n_val]], rest[inner[n_val:]]
    xt = np.asarray(x, np.float64)[train]
    mean, std = xt.mean(0), xt.std(0)
    std[std == 0] = 1
    return test, val, train, mean, std


def _check(v, leaky, x, y, parts, regression=False):
    test, val, train, mean, std = parts
    for got, rows in ((v.x_train, train), (v.x_val, val), (v.x_test, test)):
        np.testing.assert_allclose(got, (np.asarray(x, np.float64)[rows] - mean) / std, rtol=1e-5, atol=1e-5)
    # the statistics fitted before the validation split are measurably different: this check can fail
    assert np.abs(leaky.x_train[np.isin(np.setdiff1d(np.arange(len(x)), test), val)] - v.x_val).max() > 1e-3 \
        or np.abs(v.x_mean - leaky.x_mean).max() > 1e-4
    if regression:
        yt = np.asarray(y, np.float64).reshape(len(y), -1)
        y_mean, y_std = yt[train].mean(0), yt[train].std(0)
        for got, rows in ((v.y_train, train), (v.y_val, val), (v.y_test, test)):
            np.testing.assert_allclose(got, (yt[rows] - y_mean) / y_std, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(v.y_mean, y_mean, rtol=1e-6)
    else:
        for got, rows in ((v.y_train, train), (v.y_val, val), (v.y_test, test)):
            np.testing.assert_array_equal(got, np.asarray(y)[rows])


def test_digits_validation_split_uses_only_the_training_part_statistics():
    table = datasets._read_sklearn_csv("digits.csv.gz")
    x, y = table[:, :-1], table[:, -1].astype(np.int32)
    leaky = datasets.digits(seed=3)
    v = datasets.validation_split(leaky, seed=3)
    _check(v, leaky, x, y, _by_hand(x, y, len(x), 3))
    # before the fix the validation inputs differed from a leak-free standardisation by ~7 units
    parts = _by_hand(x, y, len(x), 3)
    assert np.abs(v.x_val - (x[parts[1]] - parts[3]) / parts[4]).max() < 1e-4


def test_regression_targets_are_standardised_with_training_part_statistics():
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    leaky = datasets.diabetes(seed=1)
    v = datasets.validation_split(leaky, seed=1)
    _check(v, leaky, d.data.astype(np.float32), d.target, _by_hand(d.data, d.target, len(d.data), 1), True)


def test_csv_validation_split_is_leak_free(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal([3, -2, 50], [1, 4, 20], (60, 3)).round(3)
    y = (x @ [1.0, 0.5, 0.1] + rng.normal(0, 0.1, 60)).round(3)
    path = tmp_path / "t.csv"
    path.write_text("a,b,c,y\n" + "".join(",".join(map(str, [*r, t])) + "\n" for r, t in zip(x, y)))
    leaky = load_table(path, seed=2)
    v = datasets.validation_split(leaky, seed=2)
    _check(v, leaky, x.astype(np.float32), y, _by_hand(x.astype(np.float32), y, 60, 2), True)


def test_the_test_split_keeps_its_rows_and_sees_no_statistic():
    d = datasets.digits(seed=0)
    v = datasets.validation_split(d, seed=0)
    np.testing.assert_allclose(v.x_test * v.x_std + v.x_mean, d.x_test * d.x_std + d.x_mean, atol=1e-4)
    np.testing.assert_array_equal(v.y_test, d.y_test)
    assert len(v.x_train) + len(v.x_val) == len(d.x_train)
    with pytest.raises(ValueError, match="already has a validation split"):
        datasets.validation_split(v)


def test_a_binary_dataset_keeps_its_float_targets_after_a_validation_split():
    v = datasets.validation_split(as_binary(datasets.load("xor", seed=0)), seed=0)
    assert v.task == "binary" and all(a.shape[1:] == (1,) and a.dtype == np.float32
                                      for a in (v.y_train, v.y_val, v.y_test))


@pytest.mark.parametrize("seed", [0, 4])
def test_the_cli_and_every_sweep_seed_load_the_same_leak_free_split(seed):
    data, _, _ = build({**DEFAULTS, "dataset": "moons", "validation": True, "seed": seed})
    expected = datasets.validation_split(datasets.load("moons", seed=seed), seed=seed)
    for name in ("x_train", "x_val", "x_test"):
        np.testing.assert_array_equal(getattr(data, name), getattr(expected, name))
    np.testing.assert_array_equal(data.y_val.ravel(), expected.y_val)  # binary loss: float 0/1 targets
    np.testing.assert_allclose(data.x_train.mean(0), 0, atol=1e-5)
