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
kinked when the function is not close to linear over the step: ``f(z₊) − f(z₋)`` differs from
``f'(z)(z₊ − z₋)`` (``f'`` by ``jax.jvp`` of the forward definition) by more than 1%.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.activations import Activation
from fnn.losses import Loss

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


def _not_linear(f_minus: Array, f_plus: Array, predicted: Array, scale: Array) -> Array:
    # f(+) − f(−) against the first-order prediction f'(mid)·Δ; the rounding of f itself
    # (a few ulps of |f|) is not taken for a kink.
    ulps = 16 * jnp.finfo(f_plus.dtype).eps * (jnp.abs(f_plus) + jnp.abs(f_minus))
    return jnp.abs(f_plus - f_minus - predicted) > LINEARITY_TOL * scale + ulps


def activation_kinks(act: Activation, z_minus: Array, z_mid: Array, z_plus: Array) -> Array:
    """Per unit ``(..., d)``: whether the pre-activation meets a kink of ``act`` over the step."""
    if act.kinks is not None:
        hit = jnp.zeros(jnp.shape(z_mid), bool)
        for point in act.kinks:
            hit = hit | straddles(z_minus - point, z_mid - point, z_plus - point)
        return hit
    slope = jax.jvp(act.fn, (z_mid,), (jnp.ones_like(z_mid),))[1]
    dz = z_plus - z_minus
    return _not_linear(act.fn(z_minus), act.fn(z_plus), slope * dz, jnp.abs(dz) * (1 + jnp.abs(slope)))


def loss_kinks(loss: Loss, v: Array, y_minus: Array, y_mid: Array, y_plus: Array) -> Array:
    """Per example (``y``'s batch shape): whether the outputs meet a kink of ``loss`` over the step."""
    batch = jnp.shape(y_mid)[:-1]
    if callable(loss.kinks):
        hit = straddles(*(jnp.asarray(loss.kinks(y, v)) for y in (y_minus, y_mid, y_plus)))
        return jnp.any(jnp.reshape(hit, (*batch, -1)), axis=-1)
    if loss.kinks is not None:  # () : smooth
        return jnp.zeros(batch, bool)
    grad = jax.grad(lambda y: jnp.sum(loss.value(y, v)))(y_mid)  # per example: the loss is a sum over them
    dy = y_plus - y_minus
    f_minus, f_plus = loss.value(y_minus, v), loss.value(y_plus, v)
    scale = jnp.abs(f_plus - f_minus) + jnp.linalg.norm(grad, axis=-1) * jnp.linalg.norm(dy, axis=-1)
    return _not_linear(f_minus, f_plus, jnp.sum(grad * dy, axis=-1), scale)


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
