"""The state kept when training goes non-finite is the latest one whose parameters, optimizer
state and training loss are all finite, bit for bit the state the run had there."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.training import trainer
from fnn.training.train import make_epoch_fn

N, BATCH, BATCHES = 64, 8, 8  # 8 batches per epoch
NET = fnn.MLP((3, 4, 1), ("tanh", "identity"))
KEY = jax.random.key(7)


class _Poison(NamedTuple):
    count: jax.Array  # steps taken (0-based index of the next step)
    aux: jax.Array  # a value of the optimizer state that can go NaN before the parameters do


def _poisoned(*, nan_params_at=-1, nan_state_at=-1, state_used_from=-1, shift_at=-1, shift=0.0):
    """SGD at 0.05 that, at a known step (0-based, counting every step of every epoch), makes
    the parameters NaN, its own state NaN (the parameters only from step ``state_used_from``),
    or shifts the output bias by ``shift`` (a float32 training loss that overflows while
    each batch's loss stays finite)."""

    def init(params):
        return _Poison(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))

    def update(grads, state, params=None):
        c = state.count
        aux = jnp.where(c == nan_state_at, jnp.nan, state.aux)
        poison = jnp.where(c == nan_params_at, jnp.nan, 0.0) + jnp.where(c >= state_used_from, aux, 0.0)
        updates = jax.tree.map(lambda g: -0.05 * g + poison, grads)
        updates[-1]["b"] = updates[-1]["b"] + jnp.where(c == shift_at, shift, 0.0)
        return updates, _Poison(c + 1, aux)

    return optax.GradientTransformation(init, update)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype(np.float32)
    return x, (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)


def _diverge(opt, epochs=3):
    x, y = _data()
    params = fnn.init(jax.random.key(0), NET)
    with pytest.raises(fnn.NonFiniteLossError) as info:
        fnn.fit(NET, "mse", params, x, y, key=KEY, optimizer=opt, epochs=epochs, batch_size=BATCH)
    return info.value


def _by_hand(opt, steps):
    """The run stopped by hand after ``steps`` steps (the same compiled epoch, stopped short),
    and every batch loss it reported on the way, with the next step's."""
    x, y = (jnp.asarray(a) for a in _data())
    params = fnn.init(jax.random.key(0), NET)
    state, losses = opt.init(params), []
    epoch = make_epoch_fn(NET, fnn.get_loss("mse"), opt, batch_size=BATCH, donate=False)
    for e in range(steps // BATCHES + 1):
        limit = min(BATCHES, steps - e * BATCHES)
        # One step further for the next step's loss, then the state stopped at ``limit``.
        _, _, part = epoch(params, state, x, y, jax.random.fold_in(KEY, e), 0, limit + 1)
        losses.extend(np.asarray(part)[: limit + 1])
        params, state, _ = epoch(params, state, x, y, jax.random.fold_in(KEY, e), 0, limit)
    return params, state, np.array(losses)


def _assert_kept(err, opt, step):
    assert err.step == step
    assert (err.state.epoch, err.state.batch) == divmod(step, BATCHES)
    assert f"non-finite at step {step}." in str(err)
    assert f"(epoch {step // BATCHES + 1}, after {step % BATCHES} of its batches) is kept" in str(err)
    params, state, _ = _by_hand(opt, step)
    jax.tree.map(np.testing.assert_array_equal, (err.state.params, err.state.opt_state), (params, state))


@pytest.fixture(params=[False, True], ids=["whole", "chunks"])
def chunked(request, monkeypatch):
    """Runs the test with the whole epoch as one call, and in chunks of 3 batches."""
    if request.param:
        monkeypatch.setattr(trainer, "CHUNK_BATCHES", 3)
    return request.param


@pytest.mark.parametrize("k", [3, 6, BATCHES + 4])
def test_nan_parameters_at_step_k_keep_the_state_after_k_steps(k, chunked):
    opt = _poisoned(nan_params_at=k)
    _assert_kept(_diverge(opt), opt, k)


def test_a_nan_optimizer_state_before_the_parameters_is_not_kept(chunked):
    # Step 3 makes the optimizer state NaN; the parameters go NaN only at step 6 (the first
    # non-finite batch loss is batch 7's): the states after 4, 5 and 6 steps have finite
    # parameters and losses but a NaN optimizer state.
    opt = _poisoned(nan_state_at=3, state_used_from=6)
    _, _, losses = _by_hand(opt, 7)
    assert np.isfinite(losses[:7]).all() and not np.isfinite(losses[7])
    _assert_kept(_diverge(opt), opt, 3)


def test_a_training_loss_that_overflows_while_batch_losses_stay_finite(chunked):
    # Step 3 shifts the output bias to 4e18: each example's loss is about 8e36, a batch's
    # sum stays below float32's 3.4e38 but the training set's overflows. Step 5 makes the
    # parameters NaN. The states after 4 and 5 steps have finite parameters, optimizer state
    # and batch losses, and an infinite training loss.
    opt = _poisoned(shift_at=3, shift=4e18, nan_params_at=5)
    x, y = _data()
    _, _, losses = _by_hand(opt, 6)
    assert np.isfinite(losses[:6]).all() and not np.isfinite(losses[6])
    for steps in (4, 5):
        params, _, _ = _by_hand(opt, steps)
        assert np.isinf(fnn.evaluate(NET, "mse", params, x, y)["loss"])
    _assert_kept(_diverge(opt), opt, 3)


@pytest.mark.parametrize("poison", [dict(nan_params_at=BATCHES), dict(nan_state_at=BATCHES, state_used_from=BATCHES + 2)],
                         ids=["params", "optimizer-state"])
def test_a_bad_first_step_of_an_epoch_keeps_the_epochs_start(poison, chunked):
    opt = _poisoned(**poison)
    _assert_kept(_diverge(opt), opt, BATCHES)


def test_resuming_from_the_kept_state_diverges_at_the_same_step():
    opt = _poisoned(nan_state_at=BATCHES + 2, state_used_from=BATCHES + 5)
    err = _diverge(opt)
    assert err.step == BATCHES + 2
    x, y = _data()
    with pytest.raises(fnn.NonFiniteLossError) as again:
        fnn.fit(NET, "mse", err.state.params, x, y, key=KEY, optimizer=opt, epochs=3, batch_size=BATCH,
                state=err.state)
    assert again.value.step == err.step
    assert (again.value.state.epoch, again.value.state.batch) == (err.state.epoch, err.state.batch)
    jax.tree.map(np.testing.assert_array_equal, again.value.state[:2], err.state[:2])
