"""Where a finite difference cannot be trusted: kinks of activations and losses inside its step.

A central difference ``(R(θ + εu) − R(θ − εu)) / 2ε`` approximates ``⟨∇R, u⟩`` only where
``R`` is smooth along the whole step. When a pre-activation crosses (or sits on) a kink of
its activation (relu, leaky_relu and step at 0), or a network output crosses a kink of the
loss (mae and mape at ``y = v``, huber at ``|y − v| = δ``), the quotient mixes the slopes on
both sides and disagrees with any derivative, the correct one included. These functions
name the examples for which that happens along one step, from the three forward passes the
check makes anyway (at ``θ − εu``, ``θ``, ``θ + εu``), so that :func:`fnn.gradcheck` can
compare the finite differences and the hand-written gradient on the other examples only.

Kinks are taken from :attr:`fnn.Activation.kinks` and :attr:`fnn.Loss.kinks` where they are
declared; where they are ``None`` (activations and losses of your own), a point is taken as
kinked when the function is not smooth to within 1% over the step: its changes over the whole
step and over each half differ from what its derivatives (``jax.jvp`` and ``jax.grad`` of the
forward definition) at the three points predict.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.core.activations import Activation
from fnn.core.losses import Loss

Array = jax.Array

LINEARITY_TOL = 0.01  # relative departure from linearity over the step that counts as a kink


def straddles(k_minus: Array, k_mid: Array, k_plus: Array) -> Array:
    """Whether a kink coordinate (zero at the kinks) reaches zero over the step.

    The interval the coordinate sweeps (its values at ``θ − εu``, ``θ``, ``θ + εu``) is
    widened by its own width on both sides, since the path is only nearly straight: a point
    within the step of a kink counts as on it. Element-wise; returns booleans.
    """
    lo = jnp.minimum(jnp.minimum(k_minus, k_mid), k_plus)
    hi = jnp.maximum(jnp.maximum(k_minus, k_mid), k_plus)
    spread = hi - lo
    return (lo - spread <= 0) & (hi + spread >= 0)


def _not_linear(values: tuple, slope) -> Array:
    """Whether ``f`` departs from smoothness over the step, from its values at the three points
    and ``slope(i, Δ)``, its derivative at point ``i`` along ``Δ`` (by ``jax.jvp``/``jax.grad``).

    Three tests, each exact to third order for a smooth ``f``: the whole step against the
    midpoint slope, and each half against the trapezoid of its end slopes. A kink anywhere in
    the step, or one at the middle point whatever derivative convention it has there, fails
    at least one of them; a jump fails the first. The rounding of ``f`` itself (a few ulps) is
    not taken for a kink.
    """
    f_minus, f_mid, f_plus = values
    tests = ((f_plus - f_minus, slope(1, 2)), (f_mid - f_minus, 0.5 * (slope(0, 1) + slope(1, 1))),
             (f_plus - f_mid, 0.5 * (slope(1, 0) + slope(2, 0))))
    ulps = 16 * jnp.finfo(f_mid.dtype).eps * (jnp.abs(f_plus) + jnp.abs(f_mid) + jnp.abs(f_minus))
    hit = jnp.zeros(jnp.shape(f_mid), bool)
    for change, predicted in tests:
        hit = hit | (jnp.abs(change - predicted) > LINEARITY_TOL * (jnp.abs(change) + jnp.abs(predicted)) + ulps)
    return hit


def _steps(points: tuple) -> dict:
    # Δ by (i, j): 2 is the whole step, 1 the first half, 0 the second (indexed by what is left out).
    return {2: points[2] - points[0], 1: points[1] - points[0], 0: points[2] - points[1]}


def activation_kinks(act: Activation, z_minus: Array, z_mid: Array, z_plus: Array) -> Array:
    """Per unit ``(..., d)``: whether the pre-activation meets a kink of ``act`` over the step."""
    points = (z_minus, z_mid, z_plus)
    if act.kinks is not None:
        hit = jnp.zeros(jnp.shape(z_mid), bool)
        for point in act.kinks:
            hit = hit | straddles(*(z - point for z in points))
        return hit
    derivative = [jax.jvp(act.fn, (z,), (jnp.ones_like(z),))[1] for z in points]
    steps = _steps(points)
    return _not_linear(tuple(act.fn(z) for z in points), lambda i, k: derivative[i] * steps[k])


def loss_kinks(loss: Loss, v: Array, y_minus: Array, y_mid: Array, y_plus: Array) -> Array:
    """Per example (``y``'s batch shape): whether the outputs meet a kink of ``loss`` over the step."""
    points, batch = (y_minus, y_mid, y_plus), jnp.shape(y_mid)[:-1]
    if callable(loss.kinks):
        hit = straddles(*(jnp.asarray(loss.kinks(y, v)) for y in points))
        return jnp.any(jnp.reshape(hit, (*batch, -1)), axis=-1)
    if loss.kinks is not None:  # () : smooth
        return jnp.zeros(batch, bool)
    # ∂ℓ_b/∂y_b for every example at once: the summed loss separates over examples.
    grads = [jax.grad(lambda y: jnp.sum(loss.value(y, v)))(y) for y in points]
    steps = _steps(points)
    return _not_linear(tuple(loss.value(y, v) for y in points),
                       lambda i, k: jnp.sum(grads[i] * steps[k], axis=-1))


def kinked_examples(net, loss: Loss, v: Array, caches: tuple, outputs: tuple) -> Array:
    """Per example: whether any layer's pre-activations or the loss meet a kink over the step.

    Args:
      net: the :class:`fnn.MLP`; loss: the :class:`fnn.Loss`; v: the targets.
      caches: the forward caches at ``θ − εu``, ``θ``, ``θ + εu``.
      outputs: the network outputs ``(B, d_L)`` at the same three points.

    Returns:
      Booleans of shape ``(B,)`` (the outputs' batch shape).
    """
    batch = jnp.shape(outputs[1])[:-1]
    hit = loss_kinks(loss, v, *outputs)
    for l, act in enumerate(net.activations):
        units = activation_kinks(act, *(c.pre_activations[l] for c in caches))
        hit = hit | jnp.any(jnp.reshape(units, (*batch, -1)), axis=-1)
    return hit
