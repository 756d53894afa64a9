"""Losses, each paired with its hand-written gradient.

A :class:`Loss` works per example: ``value(y, v)`` maps network outputs ``y``
of shape ``(..., d)`` and targets ``v`` to instance losses of shape ``(...)``,
and ``grad(y, v)`` gives ``∂ℓ/∂y`` of shape ``(..., d)`` for each example. The
empirical risk is the (optionally weighted) batch mean,

    R = Σ_b w_b ℓ(y_b, v_b) / Σ_b w_b,    ∂R/∂y_b = w_b ∂ℓ/∂y_b / Σ_b w_b,

computed once for every loss by :func:`risk` and :func:`risk_grad`. The
weights default to one; zero weights mark padding examples that must not
change the gradient (see :mod:`fnn.parallel`).

Regression losses sum over output units. Cross-entropies take logits: the
sigmoid or softmax is fused into the loss, so its gradient is
``σ(z) − v`` or ``softmax(z) − onehot(v)``, the stable form the derivation gives.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fnn.registry import Registry
from fnn.validation import check_targets, check_weights

Array = jax.Array


class Loss(NamedTuple):
    """A named instance loss and its gradient with respect to the network output.

    Attributes:
      name: the name it is looked up and serialised by.
      value: ``(y, v) -> ℓ`` with ``y`` of shape ``(..., d)``, ``ℓ`` of shape ``(...)``.
      grad: ``(y, v) -> ∂ℓ/∂y`` of shape ``(..., d)``.
      kind: ``"regression"``, ``"binary"`` or ``"multiclass"``: how targets are
        checked and what accuracy means.
      nonzero_targets: the loss divides by the target (``mape``), so targets
        must not be zero.
    """

    name: str
    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    kind: str = "regression"
    nonzero_targets: bool = False

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


def _as_output_shape(y: Array, v: Array) -> Array:
    # A single-output network may be given targets of shape (B,) instead of (B, 1).
    return jnp.reshape(v, y.shape).astype(y.dtype)


def _mse(y, v):
    r = y - _as_output_shape(y, v)
    return 0.5 * jnp.sum(r * r, axis=-1)


def _mse_grad(y, v):
    return y - _as_output_shape(y, v)


def _mae(y, v):
    return jnp.sum(jnp.abs(y - _as_output_shape(y, v)), axis=-1)


def _mae_grad(y, v):
    # jax.grad(jnp.abs)(0.0) == 1.0, so the kink takes the right-hand slope.
    return jnp.where(y - _as_output_shape(y, v) >= 0, 1.0, -1.0).astype(y.dtype)


def huber(delta: float = 1.0) -> Loss:
    """Huber loss: ``½ r²`` for ``|r| ≤ δ``, ``δ (|r| − ½ δ)`` beyond; gradient ``clip(r, −δ, δ)``.

    Losses are values: ``huber(0.5) == huber(0.5)`` (one object per δ), and the
    name carries the exact δ, so :func:`get_loss` rebuilds it from the name.
    """
    delta = float(delta)
    if not delta > 0:
        raise ValueError(f"huber delta must be positive, got {delta}.")
    return _huber(delta)


@functools.lru_cache(maxsize=None)
def _huber(delta: float) -> Loss:
    def value(y, v):
        r = jnp.abs(y - _as_output_shape(y, v))
        return jnp.sum(jnp.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)), axis=-1)

    def grad(y, v):
        return jnp.clip(y - _as_output_shape(y, v), -delta, delta)

    return Loss("huber" if delta == 1.0 else f"huber({delta!r})", value, grad)


def _mape(y, v):
    v = _as_output_shape(y, v)
    return 100.0 * jnp.sum(jnp.abs((y - v) / v), axis=-1)


def _mape_grad(y, v):
    v = _as_output_shape(y, v)
    return 100.0 * jnp.where(y - v >= 0, 1.0, -1.0).astype(y.dtype) / jnp.abs(v)


def _bce(z, v):
    # ℓ = −v log σ(z) − (1−v) log(1−σ(z)) = softplus(z) − v z, stable for |z| large.
    return jnp.sum(jnp.logaddexp(z, 0.0) - _as_output_shape(z, v) * z, axis=-1)


def _bce_grad(z, v):
    return jax.nn.sigmoid(z) - _as_output_shape(z, v)


def _soft_targets(z: Array, v: Array) -> Array:
    if jnp.issubdtype(v.dtype, jnp.integer):
        return jax.nn.one_hot(v, z.shape[-1], dtype=z.dtype)
    return v.astype(z.dtype)


def _softmax_ce(z, v):
    if jnp.issubdtype(v.dtype, jnp.integer):
        picked = jnp.take_along_axis(z, v[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return jax.nn.logsumexp(z, axis=-1) - picked
    v = v.astype(z.dtype)
    return jax.nn.logsumexp(z, axis=-1) * jnp.sum(v, axis=-1) - jnp.sum(v * z, axis=-1)


def _softmax_ce_grad(z, v):
    t = _soft_targets(z, v)
    if jnp.issubdtype(v.dtype, jnp.integer):  # one-hot rows sum to one
        return jax.nn.softmax(z, axis=-1) - t
    return jax.nn.softmax(z, axis=-1) * jnp.sum(t, axis=-1, keepdims=True) - t


mse = Loss("mse", _mse, _mse_grad)
mae = Loss("mae", _mae, _mae_grad)
mape = Loss("mape", _mape, _mape_grad, nonzero_targets=True)
binary_cross_entropy = Loss("binary_cross_entropy", _bce, _bce_grad, "binary")
softmax_cross_entropy = Loss(
    "softmax_cross_entropy", _softmax_ce, _softmax_ce_grad, "multiclass"
)

LOSSES: Registry[Loss] = Registry(
    "loss", {l.name: l for l in (mse, mae, huber(), mape, binary_cross_entropy, softmax_cross_entropy)},
    factories={"huber": huber}, entry_type=Loss, hint="or an fnn.Loss(name, value, grad) of your own",
)


def get_loss(spec: str | Loss) -> Loss:
    """Looks a loss up by name (``"mse"``, ``"huber(0.5)"``) or passes one through."""
    return LOSSES.get(spec)


def _normaliser(weights: Array | None, batch_shape: tuple[int, ...], dtype) -> tuple[Array, Array]:
    if weights is None:
        w = jnp.ones(batch_shape, dtype)
    else:
        w = jnp.broadcast_to(jnp.asarray(weights, dtype), batch_shape)
    return w, jnp.maximum(jnp.sum(w), jnp.finfo(dtype).tiny)


def risk(loss: str | Loss, y: Array, v: Array, weights: Array | None = None) -> Array:
    """Empirical risk ``R = Σ_b w_b ℓ(y_b, v_b) / Σ_b w_b`` (a scalar).

    Args:
      loss: a loss name or :class:`Loss`.
      y: network outputs ``(B, d_L)`` (any leading batch axes).
      v: targets that fit ``loss`` (see :func:`fnn.validation.check_targets`).
      weights: optional per-example weights ``(B,)``; default all ones.
    """
    loss = get_loss(loss)
    _check(loss, y, v, weights)
    per_example = loss.value(y, v)
    w, total = _normaliser(weights, per_example.shape, y.dtype)
    return jnp.sum(w * per_example) / total


def risk_grad(loss: str | Loss, y: Array, v: Array, weights: Array | None = None) -> Array:
    """``∂R/∂y`` of shape ``(B, d_L)``: ``w_b ∂ℓ/∂y_b / Σ_b w_b``, the per-example
    gradients weighted and divided by the total weight (``B`` when unweighted)."""
    loss = get_loss(loss)
    _check(loss, y, v, weights)
    w, total = _normaliser(weights, y.shape[:-1], y.dtype)
    return loss.grad(y, v) * (w / total)[..., None]


def _check(loss: Loss, y, v, weights) -> None:
    shape = jnp.shape(y)
    if len(shape) == 0:
        raise ValueError("Network outputs y must have shape (..., d_L), got a scalar.")
    check_targets(loss, v, shape[-1], shape[:-1])
    check_weights(weights, shape[:-1])
