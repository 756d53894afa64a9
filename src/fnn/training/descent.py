"""Full-batch gradient descent, the lectures' first training loop, as one ``lax.while_loop``."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.core.backprop import Objective, get_method, l2_penalty
from fnn.core.losses import Loss
from fnn.core.metrics import _to_device
from fnn.core.network import MLP, Params
from fnn.training.config import unknown_setting
from fnn.training.optim import check_learning_rate
from fnn.core.validation import check_coefficient, check_optimizer, check_params_finite, validate


def gradient_descent(
    net: MLP,
    loss: str | Loss,
    params: Params,
    x,
    v,
    *,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    eps: float = 1e-6,
    max_steps: int = 1000,
    **settings,
) -> tuple[Params, dict]:
    """Full-batch descent until ``|R(θ_t) − R(θ_{t−1})| < ε`` or ``max_steps`` steps.

    With ``learning_rate`` η the step is the lectures' ``θ ← θ − η ∇R(θ)``, and η is
    a traced value (a new η does not recompile); with ``optimizer``, any optax
    transformation takes the full-batch gradient instead. The whole loop is one
    compiled ``lax.while_loop``, compiled once per configuration: η, ε, the data's values
    and ``max_steps`` up to the next power of two are traced, not compiled in.

    Args:
      net, loss, params: the network, loss and starting parameters.
      x, v: the training data, ``(N, d_0)`` and targets that fit ``loss``.
      learning_rate, optimizer: exactly one of the two.
      eps: the convergence rule: stop after the first step ``t`` with
        ``|R(θ_t) − R(θ_{t−1})| < eps`` (``R`` with the L2 term). ``eps=0`` never converges:
        the run takes exactly ``max_steps`` steps.
      max_steps: the most steps taken (default 1000), a budget: a run that stops there
        has ``history["stopped"] == "max_steps"``, and warns when ``eps > 0`` (raise
        ``max_steps`` or ``eps`` to converge).
      **settings: the objective's settings by keyword: ``method`` (``"manual"`` or ``"autodiff"``,
        default ``"manual"``) and ``l2`` (λ ≥ 0, default 0), as in :func:`fnn.value_and_grad` and
        :class:`fnn.TrainConfig`. Any other keyword is a ``TypeError`` naming the closest one.

    Returns:
      ``(params, history)``, ``history`` in :func:`fnn.fit`'s convention (per-step lists of
      equal length, one full-batch step being one pass over the data; it starts at the
      starting parameters, step 0, which ``fit``'s history leaves out), so
      :func:`fnn.plot_history` draws it:

      - ``epoch``: ``[0, 1, ..., steps]``, the steps taken;
      - ``train_loss``: the risk ``R(θ_t)`` on ``(x, v)``, without the L2 term (as ``fit``
        and :func:`fnn.evaluate` report it);
      - ``loss``: the objective minimised, ``R(θ_t)`` with the L2 term (equal to
        ``train_loss`` when ``l2 = 0``);

      and two entries that say how it stopped: ``steps`` (an int, the steps taken) and
      ``stopped``: ``"converged"`` (the ε rule held), ``"max_steps"`` (the budget ran out
      first) or ``"non_finite"`` (a step made ``R`` NaN/Inf; it was not taken, and the
      parameters returned are the last finite ones).

    Raises:
      ValueError: bad inputs (checked before anything runs).
    """
    objective, method = _check(net, loss, params, (x, v), learning_rate, optimizer, eps, max_steps, settings)
    opt_state = optimizer.init(params) if optimizer is not None else optax.EmptyState()
    capacity = 1 << int(max_steps).bit_length()  # > max_steps: one program serves max_steps up to it
    params, losses, penalties, steps, code = _gd_loop(
        objective, method, capacity, optimizer, params, opt_state, _to_device(params, x, v),
        (learning_rate or 0.0, float(eps), int(max_steps)))
    steps = int(steps)
    stopped = ("converged", "max_steps", "non_finite")[int(code)]
    if stopped == "max_steps" and eps > 0:
        warnings.warn(f"gradient_descent stopped at max_steps={max_steps} before |ΔR| < eps={eps}: "
                      "give a larger max_steps (or eps) to run to convergence.", stacklevel=2)
    # Sliced on the host: a device slice of a new length would compile a program of its own.
    losses, penalties = np.asarray(losses)[: steps + 1], np.asarray(penalties)[: steps + 1]
    return params, {"epoch": list(range(steps + 1)), "train_loss": [float(a) for a in losses - penalties],
                    "loss": [float(a) for a in losses], "steps": steps, "stopped": stopped}


def _check(net, loss, params, data, learning_rate, optimizer, eps, max_steps, settings) -> tuple[Objective, str]:
    """Every check of :func:`gradient_descent`'s arguments, before anything runs; the objective
    and the gradient method."""
    for name in settings:
        if name not in _SETTINGS:
            raise unknown_setting("gradient_descent", name, _SETTINGS, "objective's method and l2")
    method, l2 = settings.get("method", "manual"), settings.get("l2", 0.0)
    if (learning_rate is None) == (optimizer is None):
        raise ValueError("Give gradient_descent exactly one of learning_rate and optimizer.")
    if optimizer is None:
        check_learning_rate(learning_rate)
    else:
        check_optimizer(optimizer)
    objective = Objective(net, loss, l2)
    check_coefficient(eps, "eps")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
    validate(net, objective.loss, params, *data)
    check_params_finite(params)
    get_method(method)
    return objective, method


_SETTINGS = ("method", "l2")


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _gd_loop(objective, method, capacity, optimizer, params, opt_state, data, rule):
    """The loop; ``data`` is ``(x, v)``, ``rule`` the traced ``(learning_rate, eps, max_steps)``."""
    (x, v), (learning_rate, eps, max_steps), grad_fn = data, rule, get_method(method)
    value_and_grad = lambda p: grad_fn(objective, p, x, v)
    penalty = lambda p: l2_penalty(p, objective.l2) if objective.l2 else jnp.zeros((), value0.dtype)
    value0, grads0 = value_and_grad(params)
    history = jnp.full((capacity,), jnp.nan, value0.dtype).at[0].set(value0)
    penalties = jnp.zeros((capacity,), value0.dtype).at[0].set(penalty(params))

    def step(params, opt_state, grads):
        if optimizer is None:
            return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), opt_state
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # Carry: θ_t and its optimizer state with R(θ_t) and ∇R(θ_t) already computed, t, the
    # history of R and of its L2 term, and a stop code: 0 converged, 1 max_steps, 2 non-finite, 3 running.
    def body(c):
        params, opt_state, value, grads, t, history, penalties, _ = c
        new_params, new_opt_state = step(params, opt_state, grads)
        new_value, new_grads = value_and_grad(new_params)
        finite = jnp.isfinite(new_value)
        t = t + 1
        code = jnp.where(~finite, 2, jnp.where(jnp.abs(new_value - value) < eps, 0,
                                                jnp.where(t >= max_steps, 1, 3)))
        # On a non-finite risk keep θ_{t-1}: the last good parameters.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        return (keep(new_params, params), keep(new_opt_state, opt_state), keep(new_value, value),
                keep(new_grads, grads), jnp.where(finite, t, t - 1), history.at[t].set(new_value),
                penalties.at[t].set(penalty(new_params)), code)

    init = (params, opt_state, value0, grads0, jnp.asarray(0), history, penalties, jnp.asarray(3))
    params, _, _, _, t, history, penalties, code = jax.lax.while_loop(lambda c: c[-1] == 3, body, init)
    return params, history, penalties, t, code
