"""Minibatch training (``fit``): epochs of :mod:`fnn.training.epoch`, evaluation after each, and the
last good state kept when the loss becomes non-finite.

``fnn.training.train`` also re-exports the loops' building blocks for earlier users:
:func:`~fnn.training.descent.gradient_descent`, :func:`~fnn.training.epoch.make_epoch_fn`,
:func:`~fnn.training.epoch.permutation` and :func:`~fnn.core.metrics.evaluate`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
import optax

from fnn.training.config import FIELDS, TrainConfig, unknown_setting, with_settings
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

__all__ = ["EarlyStopping", "NonFiniteLossError", "TrainConfig", "TrainState", "check_batch_size", "evaluate", "fit",
           "fit_parallel", "gradient_descent", "make_epoch_fn", "permutation"]


def fit(net: MLP, loss: str | Loss, params: Params, x, v, *, key: Array,
        optimizer: optax.GradientTransformation | None = None, state: TrainState | None = None,
        config: TrainConfig | None = None, **settings) -> tuple[Params, dict]:
    """Minibatch training: ``epochs`` passes over freshly shuffled batches.

    Each epoch is one compiled ``lax.scan``; the shuffle and the dropout masks of epoch ``e``
    come from ``fold_in(key, e)``, so a run is deterministic given ``key`` and a resumed run
    (``state=``) repeats an uninterrupted one exactly, also from the mid-epoch state a
    diverged run leaves. ``fit(..., config=fnn.TrainConfig(batch_size=64))`` is ``fit(..., batch_size=64)``.

    Args:
      net, loss, params: the network, loss and starting parameters; ``x`` ``(N, d_0)``, ``v``: training data.
      key: the run's PRNG key.
      optimizer: an optax transformation; default Adam with η = 1e-3 (``fnn.get_optimizer()``). The compiled
        epoch is reused by a later ``fit`` with an equal configuration and the same optimizer object
        (:func:`fnn.get_optimizer` gives the same object for equal settings; ``optax.adam`` anew compiles anew).
      state: a :class:`TrainState` to resume from (its params replace ``params``).
      config: a :class:`fnn.TrainConfig`, the settings of the compiled epoch (default ``TrainConfig()``).
      **settings: the settings below by keyword; a field of ``TrainConfig`` overrides ``config``'s.

    Settings:
      - ``batch_size`` (32), ``method`` (``"manual"``), ``l2`` (0), ``dropout`` (0), ``clip_norm``
        (``None``), ``noise_multiplier`` (0), ``mesh`` (``None``): the fields of :class:`fnn.TrainConfig`.
      - ``epochs`` (10): total epochs, counting those in ``state``; not compiled in.
      - ``test``, ``validation``: ``(x, v)`` pairs evaluated after every epoch (history ``test_*``,
        ``val_*``); choose settings and the stopping epoch on ``validation``.
      - ``on_epoch``: called as ``on_epoch(state, metrics)`` after every epoch (e.g. to save a checkpoint);
        ``progress`` (``False``): show a progress bar.
      - ``diagnostics`` (``False``): also record per layer the gradient norm, signal-to-noise ratio,
        per-example norm spread and GGN trace on the first 256 examples (history ``diag_*``).
      - ``early_stopping``: a patience in epochs (watching ``val_loss``, else ``test_loss``) or an
        :class:`EarlyStopping`; ``fit`` then returns the best epoch's parameters. Needs ``validation`` (or ``test``).

    Returns:
      ``(params, history)``: per-epoch lists ``epoch``, ``batch_loss``, ``train_*``, ... (guide: "The history").

    Raises:
      TypeError: an unknown keyword, naming the closest one.
      ValueError: bad inputs (checked before anything runs), or a non-finite loss at the start.
      NonFiniteLossError: a step made the loss NaN/Inf; names the step and carries the last good state.
    """
    loss, (config, loop) = get_loss(loss), _settings(config, settings)
    optimizer = optimizer if optimizer is not None else get_optimizer()
    start = _starting_state(net, loss, params, x, v, key=key, optimizer=optimizer, state=state, loop=loop,
                            config=config)
    stopping = _stopping(loop.early_stopping, loop.test if loop.validation is None else loop.validation)
    trainer = Trainer(net, loss, optimizer, config, x, v, test=loop.test, validation=loop.validation,
                      diagnostics=loop.diagnostics)
    state, history = trainer.run(start, loop.epochs, loop.on_epoch, loop.progress, stopping)
    return (state.params if trainer.best_params is None else trainer.best_params), history


@dataclasses.dataclass(frozen=True, eq=False)
class _Loop:
    """:func:`fit`'s settings that are not compiled in: the loop around the epochs."""

    epochs: int = 10
    test: tuple | None = None
    validation: tuple | None = None
    on_epoch: Callable[[TrainState, dict], None] | None = None
    progress: bool = False
    diagnostics: bool = False
    early_stopping: int | EarlyStopping | None = None


_LOOP = tuple(f.name for f in dataclasses.fields(_Loop))


def _settings(config: TrainConfig | None, settings: dict) -> tuple[TrainConfig, _Loop]:
    """:func:`fit`'s keywords split into the compiled settings (over ``config``) and the loop's."""
    for name in settings:
        if name not in FIELDS and name not in _LOOP:
            raise unknown_setting("fit", name, FIELDS + _LOOP,
                                  "fields of fnn.TrainConfig and fit's epochs, test, validation, on_epoch, "
                                  "progress, diagnostics, early_stopping")
    compiled = {k: a for k, a in settings.items() if k in FIELDS}
    return with_settings(config, compiled, "fit"), _Loop(**{k: a for k, a in settings.items() if k in _LOOP})


def _stopping(early_stopping, test) -> EarlyStopping | None:
    if early_stopping is None:
        return None
    if test is None:
        raise ValueError("Early stopping watches a held-out metric: give validation=(x_val, v_val).")
    return early_stopping if isinstance(early_stopping, EarlyStopping) else EarlyStopping(early_stopping)


def _starting_state(net, loss: Loss, params, x, v, *, key, optimizer, state, loop: _Loop,
                    config: TrainConfig) -> TrainState:
    """Every check of :func:`fit`'s arguments, once, before anything runs; the state to start from."""
    epochs, test, validation = loop.epochs, loop.test, loop.validation
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
        if np.ndim(xs) != 2:  # rows are the examples that batches are drawn from
            raise ValueError(f"fit takes inputs of shape (N, {net.in_dim}), got {np.shape(xs)}: "
                             f"one example is x[None], and a leading seed axis is for fnn.sweep.")
        validate(net, loss, params if state is None else state.params, xs, vs)
    check_batch_size(config.batch_size, len(x))
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
