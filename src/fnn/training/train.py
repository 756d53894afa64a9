"""Minibatch training (``fit``): epochs of :mod:`fnn.training.epoch`, evaluation after each, and the
last good state kept when the loss becomes non-finite.

``fnn.training.train`` also re-exports the loops' building blocks for earlier users:
:func:`~fnn.training.descent.gradient_descent`, :func:`~fnn.training.epoch.make_epoch_fn`,
:func:`~fnn.training.epoch.permutation` and :func:`~fnn.core.metrics.evaluate`.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
import optax

from fnn.training.descent import gradient_descent
from fnn.training.epoch import check_batch_size, make_epoch_fn, permutation
from fnn.core.losses import Loss, get_loss
from fnn.core.metrics import evaluate
from fnn.core.network import MLP, Params
from fnn.training.optim import get_optimizer
from fnn.training.parallel import make_mesh
from fnn.training.trainer import EarlyStopping, NonFiniteLossError, Trainer, TrainState
from fnn.core.validation import check_key, check_optimizer, check_params_finite, validate

Array = jax.Array

__all__ = ["EarlyStopping", "NonFiniteLossError", "TrainState", "check_batch_size", "evaluate", "fit", "fit_parallel",
           "gradient_descent", "make_epoch_fn", "permutation"]


def fit(
    net: MLP,
    loss: str | Loss,
    params: Params,
    x,
    v,
    *,
    key: Array,
    optimizer: optax.GradientTransformation | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    method: str = "manual",
    l2: float = 0.0,
    dropout: float = 0.0,
    test: tuple | None = None,
    validation: tuple | None = None,
    state: TrainState | None = None,
    mesh=None,
    on_epoch: Callable[[TrainState, dict], None] | None = None,
    progress: bool = False,
    clip_norm: float | None = None,
    noise_multiplier: float = 0.0,
    diagnostics: bool = False,
    early_stopping: int | EarlyStopping | None = None,
) -> tuple[Params, dict]:
    """Minibatch training: ``epochs`` passes over freshly shuffled batches.

    Each epoch is one compiled ``lax.scan``; the shuffle and the dropout masks
    of epoch ``e`` come from ``fold_in(key, e)``, so a run is deterministic given
    ``key`` and a resumed run (``state=``) repeats an uninterrupted one exactly,
    also from the mid-epoch state a diverged run leaves.

    Args:
      net, loss, params: the network and loss; ``x`` ``(N, d_0)``, ``v``: training data.
      key: the run's PRNG key.
      optimizer: an optax transformation; default Adam with η = 1e-3 (``fnn.get_optimizer()``,
        the default of ``fnn train`` and :func:`fnn.sweep` too). The compiled epoch is reused
        by a later ``fit`` with an equal configuration and the same optimizer object: build it
        once, or by :func:`fnn.get_optimizer`/:func:`fnn.plain_gd`, which return the same object
        for equal settings (``optax.adam(1e-3)`` built anew compiles anew).
      epochs: total epochs (counting those already in ``state``); not part of the compiled
        program, so a later ``fit`` that differs only in ``epochs``, ``key`` or the data's values
        (same shapes) compiles nothing.
      batch_size, method, l2, dropout: as in :func:`fnn.make_update_step`.
      test: optional ``(x_test, v_test)`` evaluated after every epoch (history ``test_*``).
      validation: optional ``(x_val, v_val)``, a validation split (e.g. from
        :func:`fnn.data.validation_split`) evaluated after every epoch (history ``val_*``): the
        data to choose settings and the stopping epoch on, leaving the test set for the end.
      state: a :class:`TrainState` to resume from (its params replace ``params``).
      mesh: a ``jax.sharding.Mesh`` to split every batch over (data parallelism,
        see :func:`fnn.fit_parallel`); params stay replicated. Works
        across processes after ``jax.distributed.initialize``.
      on_epoch: called after every epoch with the new state and its metrics
        (e.g. to write a checkpoint).
      progress: show a progress bar.
      clip_norm, noise_multiplier: DP-SGD (see :func:`fnn.make_update_fn`): each example's
        gradient clipped to norm ``clip_norm``, Gaussian noise ``noise_multiplier × clip_norm``
        added to each batch's sum. Privacy accounting is left to a library such as
        ``dp-accounting`` (sampling rate ``batch_size / N``, steps ``epochs × N // batch_size``).
      diagnostics: also record, after every epoch and per layer, the gradient norm, the
        gradient signal-to-noise ratio, the spread of per-example gradient norms and the GGN
        trace (:func:`fnn.analysis.quantities.diagnostics`) on the first 256 training examples, under
        history keys ``diag_grad_norm_l1``, ``diag_snr_l1``, ... (without dropout).
      early_stopping: a patience in epochs (monitoring ``val_loss``, or ``test_loss`` when only
        ``test`` is given), or an :class:`EarlyStopping` (any history key, e.g.
        ``"val_accuracy"``): training stops once the monitored metric has not improved for that
        many epochs, and ``fit`` returns the parameters of the best epoch. Needs ``validation``
        (or ``test``; stopping on the test set chooses the run's length on it).

    Returns:
      ``(params, history)`` with ``history`` a dict of per-epoch lists:

      - ``epoch``: epochs completed;
      - ``batch_loss``: the mean of the epoch's minibatch losses, each taken before its
        update (with dropout active): the running training loss;
      - ``train_loss``, ``train_accuracy`` (or ``train_mse``, ``train_r2``): the
        :func:`evaluate` metrics of the full training set after the epoch;
      - ``val_*``: the same on ``validation``; ``test_*``: the same on ``test``;
      - ``lr``: the learning rate of the epoch's last step, when the optimizer holds it
        (an optimizer built with a schedule, see :func:`fnn.get_optimizer`).

      With early stopping, ``params`` are those of the best epoch.

    Raises:
      ValueError: bad inputs (checked once, before anything runs), or a
        non-finite loss at the starting parameters.
      NonFiniteLossError: a step made the loss NaN/Inf; names the step and
        carries the last state with a finite loss.
    """
    loss = get_loss(loss)
    optimizer = optimizer if optimizer is not None else get_optimizer()
    start = _starting_state(net, loss, params, x, v, key=key, optimizer=optimizer, epochs=epochs,
                            batch_size=batch_size, test=test, state=state, validation=validation)
    stopping = _stopping(early_stopping, test if validation is None else validation)
    private = {"clip_norm": clip_norm, "noise_multiplier": noise_multiplier}
    trainer = Trainer(net, loss, optimizer, x, v, test, batch_size=batch_size, method=method, l2=l2,
                      dropout=dropout, mesh=mesh, diagnostics=diagnostics, validation=validation, **private)
    state, history = trainer.run(start, epochs, on_epoch, progress, stopping)
    return (state.params if trainer.best_params is None else trainer.best_params), history


def _stopping(early_stopping, test) -> EarlyStopping | None:
    if early_stopping is None:
        return None
    if test is None:
        raise ValueError("Early stopping watches a held-out metric: give validation=(x_val, v_val).")
    return early_stopping if isinstance(early_stopping, EarlyStopping) else EarlyStopping(early_stopping)


def _starting_state(net, loss: Loss, params, x, v, *, key, optimizer, epochs, batch_size, test, state,
                    validation=None) -> TrainState:
    """Every check of :func:`fit`'s arguments, once, before anything runs; the state to start from."""
    check_optimizer(optimizer)
    check_key(key if state is None else state.key, "key")
    held_out = [(n, s) for n, s in (("test", test), ("validation", validation)) if s is not None]
    for name, pair in held_out:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            short = "val" if name == "validation" else name
            raise ValueError(f"{name} must be a pair (x_{short}, v_{short}).")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}.")
    for xs, vs in [(x, v)] + [tuple(pair) for _, pair in held_out]:
        validate(net, loss, params if state is None else state.params, xs, vs)
    check_batch_size(batch_size, len(x))
    if state is None:
        state = TrainState(params, optimizer.init(params), 0, key)
    check_params_finite(state.params)
    return state


def fit_parallel(net: MLP, loss: str | Loss, params: Params, x, v, *, devices: int | None = None,
                 **fit_kwargs) -> tuple[Params, dict]:
    """:func:`fit` with every batch split over ``devices`` devices (all by default): the same
    results up to the order of float reductions. Across processes after
    ``jax.distributed.initialize``, ``devices`` counts the devices of every process."""
    return fit(net, loss, params, x, v, mesh=make_mesh(devices), **fit_kwargs)
