"""The pieces of a layer, each a forward that keeps what its backward needs, beside that backward.

In the style of cs231n's ``layers.py``: ``X_forward`` returns its output and a
cache, ``X_backward`` takes the gradient at that output (the upstream message)
and the cache, and returns the gradient at the input (and at the piece's
parameters). A layer ``l`` of an MLP is affine, then activation, then (on
hidden layers, in training) dropout:

    z_l = y_{l-1} W_l + b_l          affine_forward      δy_{l-1} = δz_l W_lᵀ,
                                                         ∂R/∂W_l = y_{l-1}ᵀ δz_l, ∂R/∂b_l = Σ_b δz_l
    a_l = f_l(z_l)                   activation_forward  δz_l = δa_l ⊙ f_l'(z_l)
    y_l = a_l ⊙ m_l                  dropout_forward     δa_l = δy_l ⊙ m_l

Rows are examples; any leading axes are batch axes. Nothing here calls
``jax.grad``: these are the hand-written rules that :func:`fnn.backward` chains.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _rows(a: Array) -> Array:
    # All leading axes are batch axes: (..., d) -> (N, d).
    return jnp.reshape(a, (-1, a.shape[-1]))


def affine_forward(y: Array, w: Array, b: Array) -> tuple[Array, tuple[Array, Array]]:
    """``z = y W + b`` for ``y`` ``(..., d_in)``, ``W`` ``(d_in, d_out)``, ``b`` ``(d_out,)``.

    Returns ``(z, cache)`` with ``z`` ``(..., d_out)`` and ``cache = (y, W)``.
    """
    z = y @ w + jnp.reshape(b, (1,) * (jnp.ndim(y) - 1) + jnp.shape(b))
    return z, (y, w)


def affine_backward(dz: Array, cache: tuple[Array, Array], *, input_grad: bool = True
                    ) -> tuple[Array | None, Array, Array]:
    """From ``δz = ∂R/∂z`` ``(..., d_out)``: ``(δy, ∂R/∂W, ∂R/∂b)``.

        δy = δz Wᵀ  (..., d_in)      ∂R/∂W = yᵀ δz  (d_in, d_out)      ∂R/∂b = Σ_b δz  (d_out,)

    with the batch axes flattened. ``δy`` is ``None`` when ``input_grad`` is false
    (the input layer, whose ``∂R/∂x`` nobody needs: one GEMM fewer).
    """
    y, w = cache
    dw = _rows(y).T @ _rows(dz)
    db = jnp.sum(_rows(dz), axis=0)
    dy = dz @ w.T if input_grad else None
    return dy, dw, db


def activation_forward(act, z: Array) -> tuple[Array, tuple[Array, Array]]:
    """``a = f(z)`` element-wise for an :class:`fnn.Activation` ``act``; cache ``(z, a)``."""
    a = act.fn(z)
    return a, (z, a)


def activation_backward(act, da: Array, cache: tuple[Array, Array]) -> Array:
    """``δz = δa ⊙ f'(z)``, the derivative given ``z`` and the forward output ``a = f(z)``
    (so that ``σ' = a (1 − a)`` reuses the forward value)."""
    z, a = cache
    return da * act.grad(z, a)


def dropout_forward(a: Array, rate: float, key: Array | None) -> tuple[Array, Array | None]:
    """Inverted dropout: ``y = a ⊙ m`` with ``m = keep / (1 − rate)``, ``keep ~ Bernoulli(1 − rate)``,
    so that ``E[y] = a``. Returns ``(y, m)``; ``m`` is ``None`` (and ``y = a``) when ``rate == 0``.
    ``rate`` may be a (traced) array, as in a sweep over dropout rates: the mask is then always drawn."""
    if not isinstance(rate, jax.Array) and rate == 0.0:
        return a, None
    keep = jax.random.bernoulli(key, 1.0 - rate, a.shape)
    mask = keep.astype(a.dtype) / (1.0 - rate)
    return a * mask, mask


def dropout_backward(dy: Array, mask: Array | None) -> Array:
    """``δa = δy ⊙ m`` (``δy`` itself when no dropout was applied)."""
    return dy if mask is None else dy * mask
