import jax
import numpy as np
import optax
import pytest

import fnn
from fnn.data import datasets
from helpers import assert_rel_close


def test_gradient_descent_stops_by_epsilon_rule(x64):
    data = datasets.sine(n=128)
    net = fnn.MLP((1, 16, 1), "tanh")
    params = fnn.init(jax.random.key(0), net)
    eps = 1e-5
    _, h = fnn.gradient_descent(net, "mse", params, data.x_train, data.y_train,
                                learning_rate=0.1, eps=eps, max_steps=20000)
    assert h["stopped"] == "converged"
    losses = h["loss"]
    assert len(losses) == h["steps"] + 1 and h["steps"] < 20000
    assert abs(losses[-1] - losses[-2]) < eps          # the rule held at the stop
    assert np.all(np.abs(np.diff(losses[:-1])) >= eps)  # and not before
    assert losses[-1] < losses[0]


def test_gradient_descent_budget_and_non_finite(x64):
    data = datasets.sine(n=64)
    net = fnn.MLP((1, 8, 1), "tanh")
    params = fnn.init(jax.random.key(0), net)
    _, h = fnn.gradient_descent(net, "mse", params, data.x_train, data.y_train,
                                learning_rate=0.01, eps=0.0, max_steps=7)
    assert h["stopped"] == "max_steps" and h["steps"] == 7 and len(h["loss"]) == 8
    big = [{"W": p["W"] * 100, "b": p["b"]} for p in params]
    p, h = fnn.gradient_descent(net, "mse", big, data.x_train, data.y_train * 1e5,
                                learning_rate=10.0, eps=0.0, max_steps=500)
    assert h["stopped"] == "non_finite"
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(p))


def test_manual_and_autodiff_gd_agree(x64):
    data = datasets.xor()
    net = fnn.MLP((2, 8, 2), "tanh")
    params = fnn.init(jax.random.key(0), net)
    runs = [fnn.gradient_descent(net, "softmax_cross_entropy", params, data.x_train, data.y_train,
                                 learning_rate=0.5, eps=0.0, max_steps=50, method=m)[0]
            for m in ("manual", "autodiff")]
    assert_rel_close(runs[0], runs[1], 1e-10)


def test_minibatch_fit_learns_moons_deterministically():
    data = datasets.moons()
    net = fnn.MLP((2, 32, 32, 2), "relu")
    params = fnn.init(jax.random.key(0), net, "he")
    kwargs = dict(key=jax.random.key(1), optimizer=optax.adam(1e-2), epochs=20, batch_size=32,
                  test=(data.x_test, data.y_test))
    p1, h1 = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, **kwargs)
    p2, h2 = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, **kwargs)
    assert h1["test_accuracy"][-1] >= 0.95
    assert h1 == h2
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    assert set(h1) >= {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"}


def test_regression_metrics():
    data = datasets.sine()
    net = fnn.MLP((1, 32, 32, 1), "tanh")
    params = fnn.init(jax.random.key(0), net)
    _, h = fnn.fit(net, "mse", params, data.x_train, data.y_train, key=jax.random.key(0),
                   optimizer=optax.adam(1e-2), epochs=200, batch_size=32, test=(data.x_test, data.y_test))
    assert h["test_r2"][-1] > 0.98 and h["test_mse"][-1] < 0.01


def test_resume_equals_uninterrupted():
    data = datasets.spirals()
    net = fnn.MLP((2, 16, 3), "relu")
    params = fnn.init(jax.random.key(0), net)
    opt = optax.adam(1e-2)
    common = dict(key=jax.random.key(5), optimizer=opt, batch_size=16, dropout=0.1)
    full, _ = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, epochs=6, **common)
    saved = []
    fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, epochs=3,
            on_epoch=lambda state, m: saved.append(state), **common)
    resumed, _ = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, epochs=6,
                         state=saved[-1], **common)
    jax.tree.map(np.testing.assert_array_equal, full, resumed)


def test_non_finite_loss_names_the_step():
    data = datasets.sine()
    net = fnn.MLP((1, 8, 1), "relu")
    params = fnn.init(jax.random.key(0), net)
    with pytest.raises(fnn.NonFiniteLossError, match="non-finite at step") as err:
        fnn.fit(net, "mse", params, data.x_train, data.y_train * 1e18, key=jax.random.key(0),
                optimizer=optax.sgd(1e3), epochs=5, batch_size=32)
    assert err.value.step >= 0
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(err.value.state.params))


def test_bad_training_input():
    data = datasets.xor()
    net = fnn.MLP((2, 4, 2), "relu")
    params = fnn.init(jax.random.key(0), net)
    fit = lambda **kw: fnn.fit(net, "softmax_cross_entropy", params, kw.pop("x", data.x_train),
                               kw.pop("v", data.y_train), key=jax.random.key(0), **kw)
    with pytest.raises(ValueError, match="larger than the 384 training examples"):
        fit(batch_size=1000)
    with pytest.raises(ValueError, match="batch size must be positive"):
        fit(batch_size=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit(x=np.where(np.arange(768).reshape(384, 2) == 5, np.nan, data.x_train).astype(np.float32))
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 2\)"):
        fit(v=data.y_train + 1)


@pytest.mark.parametrize("n", [1, 2, 5, 1438, 2048, 5000])
def test_permutation_is_a_permutation(n):
    from fnn.training.train import permutation

    p = np.asarray(jax.jit(permutation, static_argnums=1)(jax.random.key(3), n))
    assert p.dtype == np.int32 and p.shape == (n,)
    np.testing.assert_array_equal(np.sort(p), np.arange(n))
    np.testing.assert_array_equal(p, np.asarray(permutation(jax.random.key(3), n)))  # a function of the key
    if n > 2:
        assert not np.array_equal(p, np.asarray(permutation(jax.random.key(4), n)))


def test_permutation_is_uniform():
    """Chi-square against the uniform law: over all 24 orders of 4 items (one round), and over
    where item 0 lands among 2048 (two rounds, the case the packed sort speeds up most)."""
    from scipy import stats

    from fnn.training.train import permutation

    keys = jax.random.split(jax.random.key(0), 24 * 200)
    small = np.asarray(jax.vmap(lambda k: permutation(k, 4))(keys))
    codes = small @ np.array([64, 16, 4, 1])
    counts = np.array([np.sum(codes == c) for c in np.unique(codes)])
    assert len(counts) == 24
    assert stats.chisquare(counts).pvalue > 1e-3

    big = np.asarray(jax.vmap(lambda k: permutation(k, 2048))(keys[:2000]))
    where_zero = np.argmax(big == 0, axis=1)
    assert stats.chisquare(np.bincount(where_zero // 128, minlength=16)).pvalue > 1e-3
    # and neighbours are not kept together more than chance (about 2/2048 of the time)
    adjacent = np.mean(np.abs(np.argmax(big == 1, axis=1) - where_zero) == 1)
    assert adjacent < 0.01


def test_permutation_rejects_empty():
    from fnn.training.train import permutation

    with pytest.raises(ValueError, match="n must be positive"):
        permutation(jax.random.key(0), 0)
