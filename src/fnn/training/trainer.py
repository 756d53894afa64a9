"""The machinery of :func:`fnn.fit`: the training state, the epoch loop with its progress bar,
early stopping, and the recovery of the last good state when the loss becomes non-finite."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np
import optax

from fnn.training.config import TrainConfig
from fnn.training.epoch import make_chunk_fn, make_epoch_fn
from fnn.core.metrics import _host_metrics, _to_device
from fnn.core.network import Params
from fnn.training.parallel import replicate
from fnn.analysis.curvature import curvature_of
from fnn.analysis.quantities import diagnostics as quantities_diagnostics
from fnn.training.schedules import current_learning_rate

Array = jax.Array

# Epochs longer than this many batches run in equal chunks of at most this many, so that the
# progress bar moves (and an interrupt lands) within a chunk's time; shorter ones are one call.
CHUNK_BATCHES = 128
# A second-order optimizer diverges when its damping is too small for its curvature estimate.
SECOND_ORDER_ADVICE = "Raise the damping or lower the learning rate (or check the data)."


class NonFiniteLossError(FloatingPointError):
    """Raised when training produces a non-finite loss; carries the last good state.

    Attributes:
      step: the global step (0-based, counting every batch of every epoch) that made
        things non-finite: the first step after ``state``, so ``step == state.epoch *
        batches + state.batch`` (``batches`` per epoch).
      state: the :class:`TrainState` kept: the latest state of the trajectory whose
        parameters, optimizer state and training loss (on the whole training set) are all
        finite, found by replaying the epoch from its start with the same batches and keys
        (bit for bit the state the run had there). Its ``batch`` field says how far into
        its epoch it is, so ``fit(..., state=err.state)`` continues from exactly there.
    """

    def __init__(self, step: int, state: "TrainState", reason: str = "loss",
                 advice: str = "Lower the learning rate or check the data."):
        super().__init__(
            f"The training {reason} became non-finite at step {step}. Training stopped; the last state "
            f"with a finite loss (epoch {state.epoch + 1}, after {state.batch} of its batches) is kept. {advice}"
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


class EarlyStopping:
    """Stops training when ``monitor`` has not improved for ``patience`` epochs.

    ``monitor`` is a history key (``"val_loss"``, ``"val_accuracy"``, ``"test_loss"``, ...); by
    default ``"val_loss"`` when the metrics have it (a validation split), else ``"test_loss"``;
    ``mode`` is ``"min"`` or ``"max"`` (default: ``"max"`` for accuracy and R², else
    ``"min"``). An epoch improves only if strictly better than the best so far.
    After each :meth:`update`, ``improved`` says whether that epoch is the new best,
    and ``best_epoch``/``best`` describe it; ``stop`` says whether to stop.
    """

    def __init__(self, patience: int, monitor: str | None = None, mode: str | None = None):
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
            raise ValueError(f"The early-stopping patience must be a positive number of epochs, got {patience!r}.")
        mode = mode or ("max" if (monitor or "").endswith(("accuracy", "r2")) else "min")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
        self.patience, self.monitor, self.mode = int(patience), monitor, mode
        self.best, self.best_epoch, self.improved, self.stop = None, None, False, False

    def update(self, metrics: dict) -> bool:
        """Takes one epoch's metrics (with ``epoch`` and ``monitor``); returns whether to stop."""
        if self.monitor is None:
            self.monitor = "val_loss" if "val_loss" in metrics else "test_loss"
        if self.monitor not in metrics:
            raise ValueError(f"Early stopping monitors {self.monitor!r}, which the history does not have "
                             f"(it has {', '.join(sorted(metrics))}): give validation (or test) data or another monitor.")
        value, epoch = float(metrics[self.monitor]), int(metrics["epoch"])
        better = math.isfinite(value) and (self.best is None or (
            value < self.best if self.mode == "min" else value > self.best))
        self.improved = better
        if better:
            self.best, self.best_epoch = value, epoch
        self.stop = self.best_epoch is not None and epoch - self.best_epoch >= self.patience
        return self.stop

    def replay(self, history: dict) -> None:
        """Brings the tracker up to date with an earlier history (a resumed run)."""
        for i in range(len(history.get("epoch", []))):
            self.update({k: a[i] for k, a in history.items()})


class Trainer:
    """The state of one ``fit`` call: data on the device, the compiled epoch (built from
    ``config``, a :class:`fnn.TrainConfig`), the history."""

    def __init__(self, net, loss, optimizer, config: TrainConfig, x, v, *, test=None, validation=None,
                 diagnostics=False):
        self.net, self.loss, self.mesh = net, loss, config.mesh
        self.advice = {"advice": SECOND_ORDER_ADVICE} if curvature_of(optimizer) is not None else {}
        self.batches = len(x) // config.batch_size
        # Not donated: the state an epoch starts from is kept, to recover the last good state.
        if self.batches > CHUNK_BATCHES:
            # Equal chunks of at most CHUNK_BATCHES: the last one is not padded with skipped steps
            # (a skipped step is still computed, then discarded).
            self.chunk = math.ceil(self.batches / math.ceil(self.batches / CHUNK_BATCHES))
            self.order, self.chunk_fn = make_chunk_fn(net, loss, optimizer, config, chunk=self.chunk, donate=False)
        else:
            self.epoch_fn = make_epoch_fn(net, loss, optimizer, config, donate=False)
        self.data, self.test = (x, v), test
        # Held-out sets by history prefix: val_* (a validation split), test_* (the test set).
        self.held_out = [(name, pair) for name, pair in (("val", validation), ("test", test)) if pair is not None]
        self.placed = None
        self.diagnostics = diagnostics
        self.on_batches = None  # called with the number of batches each chunk ran (progress)

    def _place(self, params):
        if self.placed is None:
            arrays = [_to_device(params, *self.data)]
            arrays += [_to_device(params, *pair) for _, pair in self.held_out]
            if self.mesh is not None:
                arrays = replicate(arrays, self.mesh)
            self.placed = arrays
        return self.placed

    def _to_mesh(self, tree):
        return tree if self.mesh is None else replicate(tree, self.mesh)

    def metrics(self, params, opt_state=None) -> dict[str, float]:
        """``train_*``, ``val_*`` and ``test_*`` metrics of ``params``, on the data already on the device."""
        placed = self._place(params)
        out = {f"train_{k}": a for k, a in _host_metrics(self.net, self.loss, params, *placed[0]).items()}
        for (name, _), arrays in zip(self.held_out, placed[1:]):
            out.update({f"{name}_{k}": a for k, a in _host_metrics(self.net, self.loss, params, *arrays).items()})
        lr = current_learning_rate(opt_state) if opt_state is not None else None
        if lr is not None:
            out["lr"] = lr
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
        if self.batches <= CHUNK_BATCHES:
            out = self.epoch_fn(state.params, state.opt_state, x, v, key, first, limit)
            if self.on_batches is not None:
                self.on_batches(limit - first)
            return out
        batches, dropout_key = self.order(x, key)
        params, opt_state = state.params, state.opt_state
        losses = np.zeros(self.batches, jax.tree.leaves(params)[0].dtype)
        for start in range(first - first % self.chunk, limit, self.chunk):
            params, opt_state, part = self.chunk_fn(params, opt_state, x, v, batches, dropout_key, start, first, limit)
            part = np.asarray(part)[: self.batches - start]
            losses[start:start + len(part)] = part
            if self.on_batches is not None:
                self.on_batches(min(limit, start + self.chunk) - max(first, start))
            if not np.all(np.isfinite(part)):
                break  # the chunk stopped at the bad batch; later chunks must not run
        return params, opt_state, losses

    def run(self, state, epochs, on_epoch, progress, stopping: EarlyStopping | None = None):
        """Epochs from ``state`` up to ``epochs`` (or early stopping): ``(state, history)``.
        With ``stopping``, ``self.best_params`` holds the parameters of its best epoch so far."""
        self.best_params = None
        state = state._replace(params=self._to_mesh(state.params), opt_state=self._to_mesh(state.opt_state))
        if not self.good(state.params, state.opt_state):
            raise ValueError(
                "The training loss at the starting parameters (or their optimizer state) is not finite: "
                "lower the init scale or check the data (standardise inputs and regression targets)."
            )
        history: dict[str, list] = {"epoch": [], "batch_loss": []}
        bar = _Progress(epochs, self.batches, state) if progress else None
        self.on_batches = bar.advance if bar is not None else None
        try:
            while state.epoch < epochs and not (stopping is not None and stopping.stop):
                state, metrics = self.epoch(state)
                for k, a in metrics.items():
                    history.setdefault(k, []).append(a)
                if stopping is not None:
                    stopping.update(metrics)
                    if stopping.improved:
                        self.best_params = state.params
                if on_epoch is not None:
                    on_epoch(state, metrics)
                if bar is not None:
                    bar.show(metrics)
        finally:
            if bar is not None:
                bar.close()
        return state, history

    def epoch(self, state: TrainState) -> tuple[TrainState, dict]:
        """One epoch (the rest of it when ``state.batch > 0``) and its metrics, or
        :class:`NonFiniteLossError` with the last good state."""
        params, opt_state, losses = self.run_epoch(state, state.batch, self.batches)
        losses = np.asarray(losses)[state.batch:]
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size == 0:
            metrics = self.metrics(params, opt_state)
            if self.good(params, opt_state, metrics["train_loss"]):
                done = TrainState(params, opt_state, state.epoch + 1, state.key)
                summary = {"epoch": state.epoch + 1, "batch_loss": float(losses.mean())}
                return done, {**summary, **metrics}
            first_bad = self.batches  # every batch loss was finite, the state after them is not
        else:
            first_bad = state.batch + int(bad[0])
        kept = self.last_good(state, first_bad)
        raise NonFiniteLossError(kept.epoch * self.batches + kept.batch, kept, **self.advice)

    def last_good(self, state: TrainState, first_bad: int) -> TrainState:
        """The latest state of this epoch, after fewer than ``first_bad`` batches (the state
        after ``first_bad`` is known to be bad), whose parameters, optimizer state and
        training loss are all finite; ``state`` (the epoch's start, checked when it was made)
        if none is.

        Each candidate, latest first, is replayed from ``state`` by the same compiled epoch
        stopped short (``limit``): the same batches, keys and dropout masks, so the state is
        bit for bit the one the run had after that many batches. One replay per candidate:
        usually one or two, at most ``first_bad - state.batch - 1``.
        """
        self.on_batches = None
        for limit in range(first_bad - 1, state.batch, -1):
            params, opt_state, _ = self.run_epoch(state, state.batch, limit)
            if self.good(params, opt_state):
                return TrainState(params, opt_state, state.epoch, state.key, limit)
        return state


class _Progress:
    """A progress bar over batches that moves after every chunk; its rate and time estimate
    start after the first chunk, so they leave compilation out."""

    def __init__(self, epochs: int, batches: int, state: TrainState):
        self.total, self.done, self.bar = epochs * batches, state.epoch * batches + state.batch, None
        self.batches, self.epochs, self.postfix = batches, epochs, {}

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is None:
            from tqdm.auto import tqdm

            # disable=None: no bar when the output is not a terminal (logs stay clean).
            self.bar = tqdm(total=self.total, initial=self.done, unit="batch", leave=True, disable=None,
                            desc=self._desc())
        else:
            self.bar.update(n)
            self.bar.set_description(self._desc(), refresh=False)

    def _desc(self) -> str:
        return f"epoch {min(self.done // self.batches + 1, self.epochs)}/{self.epochs}"

    def show(self, metrics: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{a:.4f}" for k, a in metrics.items() if k.startswith(("val_", "test_"))})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _all_finite(tree) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite (checked on the host: a compiled
    reduction would cost more to compile than the copy costs at these sizes)."""
    leaves = (np.asarray(a) for a in jax.tree.leaves(tree))
    return all(np.all(np.isfinite(a)) for a in leaves if np.issubdtype(a.dtype, np.inexact))


_diagnostics = jax.jit(quantities_diagnostics, static_argnums=(0, 1))
