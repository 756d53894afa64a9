"""Minibatch training (``fit``): epochs of :mod:`fnn.epoch`, evaluation after each, and the
last good state kept when the loss becomes non-finite.

``fnn.train`` also re-exports the loops' building blocks for earlier users:
:func:`~fnn.descent.gradient_descent`, :func:`~fnn.epoch.make_epoch_fn`,
:func:`~fnn.epoch.permutation` and :func:`~fnn.metrics.evaluate`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np
import optax

from fnn.descent import gradient_descent
from fnn.epoch import check_batch_size, make_epoch_fn, permutation
from fnn.losses import Loss, get_loss
from fnn.metrics import _host_metrics, _to_device, evaluate
from fnn.network import MLP, Params
from fnn.optim import plain_gd
from fnn.parallel import make_mesh, replicate
from fnn.quantities import diagnostics as quantities_diagnostics
from fnn.validation import check_key, check_optimizer, check_params_finite, validate

Array = jax.Array

__all__ = ["NonFiniteLossError", "TrainState", "check_batch_size", "evaluate", "fit", "fit_parallel",
           "gradient_descent", "make_epoch_fn", "permutation"]


class NonFiniteLossError(FloatingPointError):
    """Raised when training produces a non-finite loss; carries the last good state.

    Attributes:
      step: the global step (0-based, counting every batch of every epoch) whose
        loss was NaN or Inf, or the last step of an epoch whose end-of-epoch
        training loss was.
      state: the :class:`TrainState` from before the step that made things
        non-finite: finite parameters whose training loss is finite. Its
        ``batch`` field says how far into its epoch it is, so ``fit(...,
        state=err.state)`` continues from exactly there.
    """

    def __init__(self, step: int, state: "TrainState", reason: str = "loss"):
        super().__init__(
            f"The training {reason} became non-finite at step {step}. Training stopped; the last state "
            f"with a finite loss (epoch {state.epoch + 1}, after {state.batch} of its batches) is kept. "
            "Lower the learning rate or check the data."
        )
        self.step = step
        self.state = state


class TrainState(NamedTuple):
    """Everything a run needs to continue.

    Attributes:
      params: the parameters.
      opt_state: the optimizer state.
      epoch: epochs completed.
      key: the run's PRNG key (epoch ``e`` uses ``fold_in(key, e)``).
      batch: batches of epoch ``epoch`` already applied (0 at an epoch boundary;
        non-zero only for the last good state of a run that diverged mid-epoch).
    """

    params: Params
    opt_state: optax.OptState
    epoch: int
    key: Array
    batch: int = 0


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
    state: TrainState | None = None,
    mesh=None,
    on_epoch: Callable[[TrainState, dict], None] | None = None,
    progress: bool = False,
    clip_norm: float | None = None,
    noise_multiplier: float = 0.0,
    diagnostics: bool = False,
) -> tuple[Params, dict]:
    """Minibatch training: ``epochs`` passes over freshly shuffled batches.

    Each epoch is one compiled ``lax.scan``; the shuffle and the dropout masks
    of epoch ``e`` come from ``fold_in(key, e)``, so a run is deterministic given
    ``key`` and a resumed run (``state=``) repeats an uninterrupted one exactly,
    also from the mid-epoch state a diverged run leaves.

    Args:
      net, loss, params: the network and loss; ``x`` ``(N, d_0)``, ``v``: training data.
      key: the run's PRNG key.
      optimizer: an optax transformation (default plain gradient descent, η = 0.1).
      epochs: total epochs (counting those already in ``state``).
      batch_size, method, l2, dropout: as in :func:`fnn.make_update_step`.
      test: optional ``(x_test, v_test)`` evaluated after every epoch.
      state: a :class:`TrainState` to resume from (its params replace ``params``).
      mesh: a ``jax.sharding.Mesh`` to split every batch over (data parallelism,
        see :func:`fnn.parallel.fit_parallel`); params stay replicated. Works
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
        trace (:func:`fnn.quantities.diagnostics`) on the first 256 training examples, under
        history keys ``diag_grad_norm_l1``, ``diag_snr_l1``, ... (without dropout).

    Returns:
      ``(params, history)`` with ``history`` a dict of per-epoch lists:
      ``epoch``, ``train_loss`` and the :func:`evaluate` metrics on train
      (``train_*``, so ``train_loss`` is the full training-set risk after the
      epoch) and test (``test_*``).

    Raises:
      ValueError: bad inputs (checked once, before anything runs), or a
        non-finite loss at the starting parameters.
      NonFiniteLossError: a step made the loss NaN/Inf; names the step and
        carries the last state with a finite loss.
    """
    loss = get_loss(loss)
    optimizer = optimizer if optimizer is not None else plain_gd(0.1)
    start = _starting_state(net, loss, params, x, v, key=key, optimizer=optimizer, epochs=epochs,
                            batch_size=batch_size, test=test, state=state)
    private = {"clip_norm": clip_norm, "noise_multiplier": noise_multiplier}
    return _Trainer(net, loss, optimizer, x, v, test, batch_size=batch_size, method=method, l2=l2,
                    dropout=dropout, mesh=mesh, diagnostics=diagnostics, **private).run(
        start, epochs, on_epoch, progress)


def _starting_state(net, loss: Loss, params, x, v, *, key, optimizer, epochs, batch_size, test, state
                    ) -> TrainState:
    """Every check of :func:`fit`'s arguments, once, before anything runs; the state to start from."""
    check_optimizer(optimizer)
    check_key(key if state is None else state.key, "key")
    if test is not None and (not isinstance(test, (tuple, list)) or len(test) != 2):
        raise ValueError("test must be a pair (x_test, v_test).")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}.")
    for xs, vs in [(x, v)] + ([tuple(test)] if test is not None else []):
        validate(net, loss, params if state is None else state.params, xs, vs)
    check_batch_size(batch_size, len(x))
    if state is None:
        state = TrainState(params, optimizer.init(params), 0, key)
    check_params_finite(state.params)
    return state


class _Trainer:
    """The state of one ``fit`` call: data on the device, the compiled epoch, the history."""

    def __init__(self, net, loss, optimizer, x, v, test, *, batch_size, method, l2, dropout, mesh,
                 diagnostics=False, **private):
        self.net, self.loss, self.mesh = net, loss, mesh
        self.batches = len(x) // batch_size
        # Not donated: the state an epoch starts from is kept, to recover the last good state.
        self.epoch_fn = make_epoch_fn(net, loss, optimizer, batch_size=batch_size, method=method, l2=l2,
                                      dropout=dropout, mesh=mesh, donate=False, **private)
        self.data, self.test = (x, v), test
        self.placed = None
        self.diagnostics = diagnostics

    def _place(self, params):
        if self.placed is None:
            arrays = [_to_device(params, *self.data)]
            if self.test is not None:
                arrays.append(_to_device(params, *self.test))
            if self.mesh is not None:
                arrays = replicate(arrays, self.mesh)
            self.placed = arrays
        return self.placed

    def _to_mesh(self, tree):
        return tree if self.mesh is None else replicate(tree, self.mesh)

    def metrics(self, params) -> dict[str, float]:
        """``train_*`` and ``test_*`` metrics of ``params``, on the data already on the device."""
        placed = self._place(params)
        out = {f"train_{k}": a for k, a in _host_metrics(self.net, self.loss, params, *placed[0]).items()}
        if self.test is not None:
            out.update({f"test_{k}": a for k, a in _host_metrics(self.net, self.loss, params, *placed[1]).items()})
        if self.diagnostics:
            x, v = placed[0]
            probe = _diagnostics(self.net, self.loss, params, x[:256], v[:256])
            out.update({f"diag_{k}": float(a) for k, a in probe.items()})
        return out

    def good(self, params, opt_state, train_loss: float | None = None) -> bool:
        """Finite parameters and optimizer state, and a finite training risk."""
        if train_loss is None:
            train_loss = _host_metrics(self.net, self.loss, params, *self._place(params)[0])["loss"]
        return bool(_all_finite((params, opt_state))) and bool(np.isfinite(train_loss))

    def run_epoch(self, state: TrainState, first: int, limit: int):
        """Batches ``first <= i < limit`` of epoch ``state.epoch``: ``(params, opt_state, losses)``."""
        x, v = self._place(state.params)[0]
        key = self._to_mesh(jax.random.fold_in(state.key, state.epoch))
        return self.epoch_fn(state.params, state.opt_state, x, v, key, first, limit)

    def run(self, state, epochs, on_epoch, progress):
        """Epochs from ``state`` up to ``epochs``: ``(params, history)``."""
        state = state._replace(params=self._to_mesh(state.params), opt_state=self._to_mesh(state.opt_state))
        if not self.good(state.params, state.opt_state):
            raise ValueError(
                "The training loss at the starting parameters (or their optimizer state) is not finite: "
                "lower the init scale or check the data (standardise inputs and regression targets)."
            )
        history: dict[str, list] = {"epoch": [], "train_loss": []}
        bar = _progress_bar(epochs, state.epoch) if progress else None
        try:
            while state.epoch < epochs:
                state, metrics = self.epoch(state)
                for k, a in metrics.items():
                    history.setdefault(k, []).append(a)
                if on_epoch is not None:
                    on_epoch(state, metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{a:.4f}" for k, a in metrics.items() if k.startswith("test_")})
        finally:
            if bar is not None:
                bar.close()
        return state.params, history

    def epoch(self, state: TrainState) -> tuple[TrainState, dict]:
        """One epoch (the rest of it when ``state.batch > 0``) and its metrics, or
        :class:`NonFiniteLossError` with the last good state."""
        params, opt_state, losses = self.run_epoch(state, state.batch, self.batches)
        losses = np.asarray(losses)[state.batch:]
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size == 0:
            metrics = self.metrics(params)
            if self.good(params, opt_state, metrics["train_loss"]):
                done = TrainState(params, opt_state, state.epoch + 1, state.key)
                summary = {"epoch": state.epoch + 1, "train_loss": float(losses.mean())}
                return done, {**summary, **metrics}
            first_bad = self.batches  # every batch loss was finite, the state after them is not
        else:
            first_bad = state.batch + int(bad[0])
        raise NonFiniteLossError(state.epoch * self.batches + min(first_bad, self.batches - 1),
                                 self.last_good(state, first_bad))

    def last_good(self, state: TrainState, first_bad: int) -> TrainState:
        """The latest state before batch ``first_bad`` of this epoch with a finite training loss:
        replayed by the same compiled epoch, stopped short."""
        for limit in sorted({max(first_bad - 1, state.batch), state.batch}, reverse=True):
            if limit == state.batch:
                return state  # the state the epoch started from was checked when it was made
            params, opt_state, _ = self.run_epoch(state, state.batch, limit)
            if self.good(params, opt_state):
                return TrainState(params, opt_state, state.epoch, state.key, limit)
        return state


def _all_finite(tree) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite (checked on the host: a compiled
    reduction would cost more to compile than the copy costs at these sizes)."""
    leaves = (np.asarray(a) for a in jax.tree.leaves(tree))
    return all(np.all(np.isfinite(a)) for a in leaves if np.issubdtype(a.dtype, np.inexact))


_diagnostics = jax.jit(quantities_diagnostics, static_argnums=(0, 1))


def _progress_bar(total: int, initial: int):
    from tqdm.auto import tqdm

    # disable=None: no bar when the output is not a terminal (logs stay clean).
    return tqdm(total=total, initial=initial, desc="training", unit="epoch", leave=True, disable=None)


def fit_parallel(net: MLP, loss: str | Loss, params: Params, x, v, *, devices: int | None = None,
                 **fit_kwargs) -> tuple[Params, dict]:
    """:func:`fit` with every batch split over ``devices`` devices (all by default): the same
    results up to the order of float reductions. Across processes after
    ``jax.distributed.initialize``, ``devices`` counts the devices of every process."""
    return fit(net, loss, params, x, v, mesh=make_mesh(devices), **fit_kwargs)
