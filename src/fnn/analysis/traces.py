"""Stochastic trace estimates of the Hessian or GGN of the empirical risk, from the
hand-written operator products of :func:`fnn.analysis.spectrum.curvature_matvec` (one forward
pass per call, shared by every product; jitted, ``lax.map`` inside, vmappable over
params).

- :func:`hutchinson_trace`: ``tr(A) ≈ (1/m) Σ_i z_iᵀ A z_i`` with ``m`` Rademacher
  vectors ``z_i`` (Hutchinson, 1989). Unbiased; one sample's variance is
  ``2 (‖A‖_F² − Σ_i a_ii²)``, so the error shrinks like ``1/√m``.
- :func:`hutchpp_trace`: Hutch++ (Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal
  Stochastic Trace Estimation", SOSA 2021): the trace of ``A`` on the range ``Q`` of
  ``A S`` exactly, plus Hutchinson on what ``Q`` leaves out, ``m/3`` products each. Unbiased;
  for a positive semi-definite ``A`` (the GGN) its error shrinks like ``1/m``, and it is
  exact once ``m/3`` reaches the rank.

The trace is in the units of ``R`` per parameter unit squared, summed over all ``P``
parameters (``tr(A)/P`` is the mean eigenvalue).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fnn.core.losses import Loss
from fnn.core.network import MLP, Params
from fnn.analysis.spectrum import check_operator, curvature_matvec
from fnn.core.validation import check_key

Array = jax.Array


def _check_count(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer ≥ {least}, got {value!r}.")


def hutchinson_trace(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, key: Array, *,
                     num_samples: int = 100, curvature: str = "hessian") -> Array:
    """Hutchinson's estimate of ``tr(A)``, ``A`` the Hessian (``"hessian"``) or GGN
    (``"ggn"``) of ``R`` on ``(x, v)``, from ``num_samples`` Rademacher probes drawn from
    ``key`` (one operator product each).

    Returns:
      a scalar of params' dtype. Its standard error is ``√(2 (‖A‖_F² − Σ a_ii²) / m)``.

    Raises:
      ValueError: ``num_samples < 1``, a bad key, or what :func:`fnn.analysis.spectrum.curvature_matvec`
        raises.
    """
    _check_count("num_samples", num_samples, 1)
    check_key(key)
    check_operator(net, loss, params, x, v, curvature)  # outside the jit, without running anything
    return _hutchinson(net, loss, curvature, num_samples, params, x, v, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _hutchinson(net, loss, curvature, num_samples, params, x, v, key):
    matvec, theta = curvature_matvec(net, loss, params, x, v, curvature)

    def sample(k):
        z = jax.random.rademacher(k, theta.shape, theta.dtype)
        return jnp.vdot(z, matvec(z))

    return jnp.mean(jax.lax.map(sample, jax.random.split(key, num_samples)))


def hutchpp_trace(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, key: Array, *,
                  num_matvecs: int = 99, curvature: str = "hessian") -> Array:
    """The Hutch++ estimate of ``tr(A)`` from ``num_matvecs`` operator products
    (``k = num_matvecs // 3`` each for ``A S``, ``A Q`` and the residual probes; Rademacher
    ``S`` and ``G`` of ``k`` columns drawn from ``key``):

        Q = orth(A S),   tr(A) ≈ tr(Qᵀ A Q) + (1/k) tr(Gᵀ (I − QQᵀ) A (I − QQᵀ) G)

    Returns:
      a scalar of params' dtype.

    Raises:
      ValueError: ``num_matvecs < 3`` or more than ``3 P``, a bad key, or what
        :func:`fnn.analysis.spectrum.curvature_matvec` raises.
    """
    _check_count("num_matvecs", num_matvecs, 3)
    check_key(key)
    n = check_operator(net, loss, params, x, v, curvature)
    if num_matvecs // 3 > n:
        raise ValueError(f"num_matvecs // 3 = {num_matvecs // 3} exceeds the {n} parameters: "
                         "lower num_matvecs.")
    return _hutchpp(net, loss, curvature, num_matvecs // 3, params, x, v, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _hutchpp(net, loss, curvature, k, params, x, v, key):
    matvec, theta = curvature_matvec(net, loss, params, x, v, curvature)
    k1, k2 = jax.random.split(key)
    sketch = jax.lax.map(matvec, jax.random.rademacher(k1, (k, theta.shape[0]), theta.dtype))
    q = jnp.linalg.qr(sketch.T)[0]  # (P, k), orthonormal columns
    low_rank = jnp.vdot(q.T, jax.lax.map(matvec, q.T))
    g = jax.random.rademacher(k2, (k, theta.shape[0]), theta.dtype)
    g = g - (g @ q) @ q.T
    return low_rank + jnp.vdot(g, jax.lax.map(matvec, g)) / k
