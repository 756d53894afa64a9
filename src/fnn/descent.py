"""Full-batch gradient descent, the lectures' first training loop, as one ``lax.while_loop``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.backprop import Objective, get_method
from fnn.losses import Loss
from fnn.metrics import _to_device
from fnn.network import MLP, Params
from fnn.optim import check_learning_rate
from fnn.validation import check_coefficient, check_optimizer, check_params_finite, validate


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
    method: str = "manual",
    l2: float = 0.0,
) -> tuple[Params, dict]:
    """Full-batch descent until ``|R(θ_t) − R(θ_{t−1})| < ε`` or ``max_steps`` steps.

    With ``learning_rate`` η the step is the lectures' ``θ ← θ − η ∇R(θ)``, and η is
    a traced value (a new η does not recompile); with ``optimizer``, any optax
    transformation takes the full-batch gradient instead. The whole loop is one
    compiled ``lax.while_loop``.

    Args:
      net, loss, params: the network, loss and starting parameters.
      x, v: the training data, ``(N, d_0)`` and targets that fit ``loss``.
      learning_rate, optimizer: exactly one of the two.
      eps, max_steps: the stopping rule.
      method, l2: as in :func:`fnn.value_and_grad`.

    Returns:
      ``(params, history)``; ``history`` has ``loss`` (R at every step taken,
      starting with the initial risk), ``steps`` and ``stopped``: ``"converged"``,
      ``"max_steps"`` or ``"non_finite"`` (the parameters are then the last finite ones).
    """
    objective = _check(net, loss, params, x, v, learning_rate, optimizer, eps, max_steps, method, l2)
    opt_state = optimizer.init(params) if optimizer is not None else optax.EmptyState()
    params, losses, steps, code = _gd_loop(objective, method, int(max_steps), optimizer, params, opt_state,
                                           *_to_device(params, x, v), learning_rate or 0.0, float(eps))
    steps = int(steps)
    stopped = ("converged", "max_steps", "non_finite")[int(code)]
    return params, {"loss": np.asarray(losses[: steps + 1]), "steps": steps, "stopped": stopped}


def _check(net, loss, params, x, v, learning_rate, optimizer, eps, max_steps, method, l2) -> Objective:
    """Every check of :func:`gradient_descent`'s arguments, before anything runs; the objective."""
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
    validate(net, objective.loss, params, x, v)
    check_params_finite(params)
    get_method(method)
    return objective


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _gd_loop(objective, method, max_steps, optimizer, params, opt_state, x, v, learning_rate, eps):
    grad_fn = get_method(method)
    value_and_grad = lambda p: grad_fn(objective, p, x, v)
    value0, grads0 = value_and_grad(params)
    history = jnp.full((max_steps + 1,), jnp.nan, value0.dtype).at[0].set(value0)

    def step(params, opt_state, grads):
        if optimizer is None:
            return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), opt_state
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # Carry: θ_t and its optimizer state with R(θ_t) and ∇R(θ_t) already computed, t,
    # R(θ_{t-1}), the history, and a stop code: 0 converged, 1 max_steps, 2 non-finite, 3 running.
    def body(c):
        params, opt_state, value, grads, t, _, history, _ = c
        new_params, new_opt_state = step(params, opt_state, grads)
        new_value, new_grads = value_and_grad(new_params)
        finite = jnp.isfinite(new_value)
        t = t + 1
        code = jnp.where(~finite, 2, jnp.where(jnp.abs(new_value - value) < eps, 0,
                                                jnp.where(t >= max_steps, 1, 3)))
        # On a non-finite risk keep θ_{t-1}: the last good parameters.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        return (keep(new_params, params), keep(new_opt_state, opt_state), keep(new_value, value),
                keep(new_grads, grads), jnp.where(finite, t, t - 1), value, history.at[t].set(new_value), code)

    init = (params, opt_state, value0, grads0, jnp.asarray(0), value0, history, jnp.asarray(3))
    params, _, _, _, t, _, history, code = jax.lax.while_loop(lambda c: c[-1] == 3, body, init)
    return params, history, t, code
