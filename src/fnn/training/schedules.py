"""Learning-rate schedules by name, built on optax's, and the learning rate an optimizer state holds.

Every schedule maps the step count ``t`` (0-based, counting every batch of every
epoch) to a learning rate. With a peak rate ``η``, ``T`` steps in all and ``W``
warmup steps (a linear ramp from 0 to ``η`` first, for any schedule):

- ``constant``: ``η``;
- ``cosine``: ``η · ½(1 + cos(π t / T))``, down to 0 at the end;
- ``warmup_cosine``: ``cosine`` after a warmup (``W`` defaults to 5% of ``T`` here);
- ``exponential``: ``η · 0.01^(t / T)``, a hundredth of ``η`` at the end;
- ``step``: ``η``, then ``η/10`` from 50% of ``T`` and ``η/100`` from 75%.

Any optax schedule (a callable ``count -> rate``) can be given to
:func:`fnn.get_optimizer` instead; :func:`with_schedule` wraps the optimizer in
``optax.inject_hyperparams`` so that its state holds the current rate, which
:func:`current_learning_rate` reads (``fit`` records it in the history as ``lr``).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
import optax

from fnn.core.programs import program_cache
from fnn.core.registry import Registry

Schedule = Callable[[jax.Array], jax.Array]


def _cosine(lr, total):
    return optax.cosine_decay_schedule(lr, max(total, 1))


def _exponential(lr, total):
    return optax.exponential_decay(lr, max(total, 1), 0.01)


def _step(lr, total):
    return optax.piecewise_constant_schedule(lr, {max(total // 2, 1): 0.1, max(3 * total // 4, 1): 0.1})


SCHEDULES: Registry[Callable[[float, int], Schedule]] = Registry("schedule", {
    "constant": lambda lr, total: optax.constant_schedule(lr),
    "cosine": _cosine,
    "warmup_cosine": _cosine,  # its warmup is added by make_schedule
    "exponential": _exponential,
    "step": _step,
})
"""The schedules by name, each ``(learning_rate, total_steps) -> optax schedule``: constant,
cosine, warmup_cosine, exponential and step (see the module docstring).
:func:`make_schedule` looks names up here and adds the warmup."""


@program_cache
def make_schedule(name: str, learning_rate: float, total_steps: int, warmup_steps: int | None = None) -> Schedule:
    """The schedule ``name`` (see the module docstring) peaking at ``learning_rate`` over
    ``total_steps`` steps, after a linear warmup of ``warmup_steps`` (default 0, or 5% of the
    steps for ``warmup_cosine``).

    Raises ``ValueError`` for an unknown name, a non-positive total, or a warmup that is
    negative or not shorter than the run. Equal arguments give the same schedule object (so the
    optimizers and programs built on it are reused, see :mod:`fnn.core.programs`).
    """
    build = SCHEDULES.lookup(name)
    if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
        raise ValueError(f"A schedule needs a positive number of steps, got {total_steps!r}.")
    if warmup_steps is None:
        warmup_steps = max(1, total_steps // 20) if name == "warmup_cosine" else 0
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
        raise ValueError(f"The warmup must be a non-negative number of steps, got {warmup_steps!r}.")
    if warmup_steps and warmup_steps >= total_steps:
        raise ValueError(
            f"The warmup ({warmup_steps} steps) must be shorter than the run ({total_steps} steps): "
            "use fewer warmup epochs or more epochs."
        )
    schedule = build(learning_rate, total_steps - warmup_steps)
    if warmup_steps:
        ramp = optax.linear_schedule(0.0, learning_rate, warmup_steps)
        schedule = optax.join_schedules([ramp, schedule], [warmup_steps])

    def rate(count):
        # optax's schedules mix Python floats with the int32 count: give them the default
        # promotion, whatever the caller's setting.
        with jax.numpy_dtype_promotion("standard"):
            return schedule(count)

    return rate


def with_schedule(factory: Callable[..., optax.GradientTransformation], schedule: Schedule, **kwargs
                  ) -> optax.GradientTransformation:
    """``factory(learning_rate=schedule, **kwargs)`` with the rate held in its state
    (``optax.inject_hyperparams``), so that :func:`current_learning_rate` can read it."""
    return optax.inject_hyperparams(factory)(learning_rate=schedule, **kwargs)


def learning_rates(opt_state) -> np.ndarray | None:
    """The learning rate(s) an ``inject_hyperparams`` optimizer state holds (the first found):
    an array shaped like the state's leading axes (a scalar for one run, ``(S, G)`` in a
    sweep), or ``None`` if the state holds none."""
    found = []

    def visit(node):
        hyper = getattr(node, "hyperparams", None)
        if isinstance(hyper, dict) and "learning_rate" in hyper:
            found.append(hyper["learning_rate"])
            return
        if isinstance(node, (tuple, list)):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(opt_state)
    return np.asarray(found[0]) if found else None


def current_learning_rate(opt_state) -> float | None:
    """The learning rate of the last step an ``inject_hyperparams`` optimizer state took (the
    first one found in the state), or ``None`` if the state holds none."""
    rates = learning_rates(opt_state)
    return None if rates is None else float(rates)
