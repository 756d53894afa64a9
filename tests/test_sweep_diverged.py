"""fnn.sweep: a diverged run keeps its last state whose batch loss, parameters and optimizer
state are all finite, and stays there for the rest of the sweep; the other runs are untouched."""

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.training.optim import OPTIMIZERS
from fnn.training.sweep import sweep

N, BATCH, BATCHES = 64, 8, 8  # 8 batches per epoch
NET = fnn.MLP((3, 4, 1), ("tanh", "identity"))
SEEDS, MOMENTA = [0, 1], [0.0, 0.5, 0.9]  # momentum 0.5 marks the poisoned runs (grid point 1)
POISONED = [2, 3]  # runs are ordered grid point by grid point, seeds within each
NEVER = 10**6  # a step no test reaches
_names = itertools.count()


class _Poison(NamedTuple):
    count: jax.Array  # steps applied (0-based index of the next step)
    aux: jax.Array  # a value of the optimizer state that can go NaN before the parameters do


def _poisoned(*, nan_params_at=NEVER, nan_state_at=NEVER, state_used_from=NEVER, shift_at=NEVER, stop_at=NEVER):
    """An optimizer factory ``(learning_rate, momentum)``: SGD that, only for runs with momentum
    0.5 and at a known step (counted by its own state), makes the parameters NaN, makes its own
    state NaN (the parameters only from step ``state_used_from``), shifts the output bias by 4e18
    (a float32 training loss that overflows while each batch's loss stays finite), or stops
    (from ``stop_at`` on, no update and no count: the run stopped by hand). Every condition is
    a traced comparison, so runs that it leaves alone compute the same operations whatever the
    steps."""

    def build(learning_rate, momentum):
        mine = jnp.asarray(momentum) == 0.5

        def init(params):
            return _Poison(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))

        def update(grads, state, params=None):
            c = state.count
            aux = jnp.where(mine & (c == nan_state_at), jnp.nan, state.aux)
            poison = jnp.where(mine & (c == nan_params_at), jnp.nan, 0.0) + jnp.where(c >= state_used_from, aux, 0.0)
            stop = mine & (c >= stop_at)
            updates = jax.tree.map(lambda g: jnp.where(stop, 0.0, -learning_rate * g + poison), grads)
            updates[-1]["b"] = updates[-1]["b"] + jnp.where(mine & (c == shift_at), 4e18, 0.0)
            return updates, _Poison(jnp.where(stop, c, c + 1), aux)

        return optax.GradientTransformation(init, update)

    return build


def _data(dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype(dtype)
    return x, (x @ np.array([[1.0], [-2.0], [0.5]], dtype)).astype(dtype)


def _sweep(monkeypatch, build, epochs=3, dtype=np.float32):
    name = f"poisoned_{next(_names)}"  # a name per optimizer: the sweep's programs are cached by name
    monkeypatch.setitem(OPTIMIZERS._entries, name, build)
    x, y = _data(dtype)
    return sweep(NET, "mse", x, y, seeds=SEEDS, grid={"momentum": MOMENTA}, optimizer=name, lr=0.05,
                 batch_size=BATCH, epochs=epochs)


def _same_params(a, b, runs):
    for run in runs:
        jax.tree.map(np.testing.assert_array_equal, a.run_params(run), b.run_params(run))


def _check(result, reference, step, epochs=3):
    """``result``'s poisoned runs diverged in the epoch of ``step`` with the parameters that
    ``reference`` (the same runs stopped after ``step`` steps) ends with; every run's parameters,
    and the other runs' history, bit for bit."""
    others = [r for r in range(len(SEEDS) * len(MOMENTA)) if r not in POISONED]
    expected = np.zeros(len(others) + len(POISONED), int)
    expected[POISONED] = step // BATCHES + 1
    np.testing.assert_array_equal(result.diverged, expected)
    np.testing.assert_array_equal(reference.diverged, 0)
    for run in POISONED:
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(result.run_params(run)))
    _same_params(result, reference, range(len(expected)))
    for k, a in result.history.items():
        np.testing.assert_array_equal(a[others], reference.history[k][others])
        gone = step // BATCHES
        assert np.isnan(a[POISONED, gone:]).all()
        np.testing.assert_array_equal(a[POISONED, :gone], reference.history[k][POISONED, :gone])


@pytest.mark.parametrize("k", [3, BATCHES, BATCHES + 5])
def test_nan_parameters_with_a_finite_batch_loss_keep_the_state_before_that_step(monkeypatch, k):
    # Step k's own batch loss is finite (it is computed before the update); its update is NaN.
    _check(_sweep(monkeypatch, _poisoned(nan_params_at=k)), _sweep(monkeypatch, _poisoned(stop_at=k)), k)


@pytest.mark.parametrize("k", [2, BATCHES + 3])
def test_a_nan_optimizer_state_before_the_parameters_keeps_the_state_before_it(monkeypatch, k):
    # Step k makes the optimizer state NaN; the parameters would go NaN two steps later, their
    # batch losses one step after that.
    poisoned = _poisoned(nan_state_at=k, state_used_from=k + 2)
    _check(_sweep(monkeypatch, poisoned), _sweep(monkeypatch, _poisoned(stop_at=k)), k)


def test_a_run_marked_diverged_stays_frozen_in_later_epochs(monkeypatch):
    # The last step of epoch 1 shifts the output bias to 4e18: every parameter, the optimizer
    # state and each batch's loss stay finite, but the training loss overflows, so the run is
    # marked diverged after epoch 1. Left to train, SGD would pull the bias back (finite losses);
    # it must keep the state it had when it was marked, as the one-epoch sweep ends with it.
    poisoned = _poisoned(shift_at=BATCHES - 1)
    three, one = _sweep(monkeypatch, poisoned, epochs=3), _sweep(monkeypatch, poisoned, epochs=1)
    np.testing.assert_array_equal(three.diverged, [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(one.diverged, [0, 0, 1, 1, 0, 0])
    _same_params(three, one, POISONED)
    assert np.abs(three.run_params(POISONED[0])[-1]["b"]).max() > 1e18
    assert np.isnan(three.history["train_loss"][POISONED]).all()


@pytest.mark.parametrize("poison, step", [(dict(nan_params_at=BATCHES + 2), BATCHES + 2),
                                          (dict(nan_state_at=5, state_used_from=7), 5)], ids=["params", "state"])
def test_the_kept_state_is_the_one_fit_keeps(x64, monkeypatch, poison, step):
    # fnn.fit raises NonFiniteLossError with the state it recovers by replay; the sweep's run
    # (seed 0, momentum 0.5) stops there by itself (float64: the batched products of the
    # sweep's run axis round like fit's to ~1e-16).
    build = _poisoned(**poison)
    result = _sweep(monkeypatch, build, dtype=np.float64)
    x, y = _data(np.float64)
    k_init, k_run, _ = jax.random.split(jax.random.key(0), 3)
    params = fnn.init(k_init, NET, "he", dtype=np.float64)
    assert result.run_params(POISONED[0])[0]["W"].dtype == np.float64
    with pytest.raises(fnn.NonFiniteLossError) as info:
        fnn.fit(NET, "mse", params, x, y, key=k_run, optimizer=build(0.05, 0.5), epochs=3,
                batch_size=BATCH)
    assert info.value.step == step and result.diverged[POISONED[0]] == step // BATCHES + 1
    for a, b in zip(jax.tree.leaves(info.value.state.params), jax.tree.leaves(result.run_params(POISONED[0]))):
        np.testing.assert_allclose(b, a, rtol=1e-12)
