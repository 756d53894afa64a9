"""Losses, each paired with its hand-written gradient.

A :class:`Loss` works per example: ``value(y, v)`` maps network outputs ``y``
of shape ``(..., d)`` and targets ``v`` to instance losses of shape ``(...)``,
and ``grad(y, v)`` gives ``∂ℓ/∂y`` of shape ``(..., d)`` for each example. The
empirical risk is the (optionally weighted) batch mean,

    R = Σ_b w_b ℓ(y_b, v_b) / Σ_b w_b,    ∂R/∂y_b = w_b ∂ℓ/∂y_b / Σ_b w_b,

computed once for every loss by :func:`risk` and :func:`risk_grad`. The
weights default to one; zero weights mark padding examples that must not
change the gradient (see :mod:`fnn.training.parallel`).

Regression losses sum over output units. Cross-entropies take logits: the
sigmoid or softmax is fused into the loss, so its gradient is
``σ(z) − v`` or ``softmax(z) − onehot(v)``, the stable form the derivation gives.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fnn.core.registry import Registry
from fnn.core.validation import check_targets, check_weights

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
      hessian_factor: ``(y, v) -> S`` of shape ``(..., d, k)`` with ``S Sᵀ = ∂²ℓ/∂y²`` per
        example (for :func:`fnn.ggn_diagonal` and :func:`fnn.kfac_factors`, which backpropagate
        its ``k`` columns): ``k = d`` for mse, huber and binary cross-entropy, one zero column for
        mae and mape, ``k = d − 1`` for softmax cross-entropy, whose Hessian has rank ``d − 1``.
      hessian_vp: ``(y, v, u) -> (∂²ℓ/∂y²) u`` per example (for :func:`fnn.hvp`, :func:`fnn.ggn_vp`).
      sample: ``(key, y) -> v̂``, a target drawn from the predictive distribution the loss is
        the negative log-likelihood of (for the Monte-Carlo GGN); ``None`` when it is not one.
      kinks: where ``ℓ`` is not twice differentiable, as ``(y, v) -> k``: an array (e.g. shaped
        like ``y``) that is zero at the kinks and changes sign across them (``y − v`` for mae,
        ``|y − v| − δ`` for huber); ``()`` for a smooth loss; ``None`` (the default for losses
        of your own): unknown, so :func:`fnn.gradcheck` looks for kinks numerically. The
        gradient check leaves out of its finite differences the examples within the step of a kink.
    """

    name: str
    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    kind: str = "regression"
    nonzero_targets: bool = False
    hessian_factor: Callable | None = None
    hessian_vp: Callable | None = None
    sample: Callable | None = None
    kinks: Callable | tuple | None = None

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


# A static value to JAX (a pytree with no leaves, compared by ==): it passes through jax.jit,
# vmap and grad as part of the program, so jax.jit(fnn.per_example_grads)(net, loss, ...) works.
jax.tree_util.register_static(Loss)


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

    def inside(y, v):  # ∂²ℓ/∂y² = 1 where |r| ≤ δ, 0 beyond
        return (jnp.abs(y - _as_output_shape(y, v)) <= delta).astype(y.dtype)

    return Loss("huber" if delta == 1.0 else f"huber({delta!r})", value, grad,
                hessian_factor=lambda y, v: _diagonal(inside(y, v)),
                hessian_vp=lambda y, v, u: inside(y, v) * u,
                kinks=lambda y, v: jnp.abs(_residual(y, v)) - delta)


def _residual(y, v):
    # The kink coordinate of mae and mape (and, through |r| − δ, of huber).
    return y - _as_output_shape(y, v)


def _mape(y, v):
    v = _as_output_shape(y, v)
    return 100.0 * jnp.sum(jnp.abs((y - v) / v), axis=-1)


def _mape_grad(y, v):
    # d|r/v|/dy = sign(r/v) / v, with jax.grad's sign(0) = +1 at the kink r = 0 (whatever v's sign).
    v = _as_output_shape(y, v)
    return 100.0 * jnp.where((y - v) / v >= 0, 1.0, -1.0).astype(y.dtype) / v


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


# --- second order: the loss Hessian in output space, as a factor and as a product ----------------

def _eye(a: Array) -> Array:
    # The identity (d, d) broadcast to a's batch shape: (..., d, d).
    d = a.shape[-1]
    return jnp.broadcast_to(jnp.eye(d, dtype=a.dtype), (*a.shape, d))


def _diagonal(h):
    # S = diag(√h), (..., d, d), for a diagonal Hessian h ≥ 0.
    return jnp.sqrt(h)[..., :, None] * _eye(h)


def _zero_factor(y, v):
    return jnp.zeros((*y.shape, 1), y.dtype)


def _bce_curvature(z):
    s = jax.nn.sigmoid(z)
    return s * (1 - s)


def _ce_scale(z, v):
    # Σ_c t_c: 1 for integer labels and one-hot rows, the total mass for soft targets.
    if jnp.issubdtype(v.dtype, jnp.integer):
        return jnp.ones(z.shape[:-1], z.dtype)
    return jnp.sum(v.astype(z.dtype), axis=-1)


def _ce_factor(z, v):
    # H = s (diag(p) − p pᵀ) = s D (I − u uᵀ) D with u = √p = D 1 (‖u‖ = 1), D = diag(u): I − u uᵀ
    # projects onto u⊥ (rank C − 1). The Householder reflector P = I − w wᵀ/(1 + u_m), w = u + e_m,
    # sends e_m to −u, so its other C − 1 columns are an orthonormal basis of u⊥ and
    # S = √s D P[:, c ≠ m] is (..., C, C − 1): S_ic = √s u_i (δ_ic − w_i u_c / (1 + u_m)). The pivot
    # m = argmax p keeps every entry free of cancellation (p_i / (1 + u_m) ≤ ½ for i ≠ m).
    u = jnp.sqrt(jax.nn.softmax(z, axis=-1))
    classes, batch = z.shape[-1], z.shape[:-1]
    m = jnp.argmax(u, axis=-1)[..., None]  # (..., 1)
    kept = jnp.broadcast_to(jnp.arange(classes - 1), (*batch, classes - 1))
    kept = kept + (kept >= m).astype(kept.dtype)  # (..., C − 1): every class but m, in order
    w = u + (jnp.broadcast_to(jnp.arange(classes), z.shape) == m).astype(u.dtype)
    u_c = jnp.take_along_axis(u, kept, axis=-1)[..., None, :]
    delta = (jnp.broadcast_to(jnp.arange(classes)[:, None], (*batch, classes, 1)) == kept[..., None, :]).astype(u.dtype)
    u_m = jnp.take_along_axis(u, m, axis=-1)[..., None]  # (..., 1, 1)
    factor = u[..., :, None] * (delta - w[..., :, None] * u_c / (1 + u_m))
    return jnp.sqrt(_ce_scale(z, v))[..., None, None] * factor


def _ce_hvp(z, v, u):
    p = jax.nn.softmax(z, axis=-1)
    return _ce_scale(z, v)[..., None] * (p * u - p * jnp.sum(p * u, axis=-1, keepdims=True))


mse = Loss("mse", _mse, _mse_grad,
           hessian_factor=lambda y, v: _eye(y),
           hessian_vp=lambda y, v, u: u,
           sample=lambda key, y: y + jax.random.normal(key, y.shape, y.dtype), kinks=())  # −log N(v; y, I) + c
mae = Loss("mae", _mae, _mae_grad, hessian_factor=_zero_factor, hessian_vp=lambda y, v, u: jnp.zeros_like(u),
           kinks=_residual)
mape = Loss("mape", _mape, _mape_grad, nonzero_targets=True, hessian_factor=_zero_factor,
            hessian_vp=lambda y, v, u: jnp.zeros_like(u), kinks=_residual)
binary_cross_entropy = Loss(
    "binary_cross_entropy", _bce, _bce_grad, "binary",
    hessian_factor=lambda z, v: _diagonal(_bce_curvature(z)), hessian_vp=lambda z, v, u: _bce_curvature(z) * u,
    sample=lambda key, z: jax.random.bernoulli(key, jax.nn.sigmoid(z)).astype(z.dtype), kinks=())
softmax_cross_entropy = Loss(
    "softmax_cross_entropy", _softmax_ce, _softmax_ce_grad, "multiclass",
    hessian_factor=_ce_factor, hessian_vp=_ce_hvp, sample=lambda key, z: jax.random.categorical(key, z),
    kinks=())

LOSSES: Registry[Loss] = Registry(
    "loss", {l.name: l for l in (mse, mae, huber(), mape, binary_cross_entropy, softmax_cross_entropy)},
    factories={"huber": huber}, entry_type=Loss, hint="or an fnn.Loss(name, value, grad) of your own",
)
"""The built-in losses by name: mse, mae, ``huber(δ)``, mape, binary_cross_entropy and
softmax_cross_entropy (both on logits). :func:`get_loss` looks names up here; a
:class:`Loss` of your own needs no entry.

``mse`` is ``ℓ = ½‖y − v‖²`` per example (gradient ``y − v``), the same as deck 001's
``½‖y − a‖²₂``. Deck 003's single-neuron ``L = (y − t)²`` and PyTorch's ``MSELoss`` have no
½, so their gradient is twice fnn's (the minimum does not move; a learning rate tuned for
one is half the other's); ``MSELoss``'s default also averages over the output entries."""


def get_loss(spec: str | Loss) -> Loss:
    """Looks a loss up by name (``"mse"``, ``"huber(0.5)"``) or passes one through."""
    return LOSSES.lookup(spec)


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
      v: targets that fit ``loss`` (see :func:`fnn.core.validation.check_targets`).
      weights: optional per-example weights ``(B,)``; default all ones.
    """
    loss = get_loss(loss)
    _check(loss, y, v, weights)
    per_example = loss.value(y, v)
    w, total = _normaliser(weights, per_example.shape, y.dtype)
    return jnp.sum(w * per_example) / total


def risk_grad(loss: str | Loss, y: Array, v: Array, weights: Array | None = None) -> Array:
    """``∂R/∂y`` of shape ``(B, d_L)``: ``w_b ∂ℓ/∂y_b / Σ_b w_b``, the per-example
    gradients weighted and divided by the total weight (``B`` when unweighted).

    Example: softmax cross-entropy on logits gives ``(softmax(y) − onehot(v)) / B``.

      >>> import jax.numpy as jnp, fnn
      >>> logits, labels = jnp.array([[0.0, 0.0], [0.0, 0.0]]), jnp.array([0, 1])
      >>> fnn.risk_grad("softmax_cross_entropy", logits, labels).tolist()
      [[-0.25, 0.25], [0.25, -0.25]]
    """
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
