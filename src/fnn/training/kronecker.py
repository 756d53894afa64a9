"""One layer's gradient block multiplied by a Kronecker factor on each side, densely or from the
gradient's low-rank form: what :func:`fnn.kfac` spends most of a step on.

K-FAC needs, per layer, ``L Ḡ R`` with ``Ḡ = [∂W; ∂bᵀ]`` ``(n, m)``, ``n = d_{l−1}+1``,
``m = d_l``, and ``L``, ``R`` square: ``(A + π√λ I)⁻¹`` and ``(G + √λ/π I)⁻¹`` for π-damping,
``Q_Aᵀ`` and ``Q_G`` for the rotation into the Kronecker eigenbasis (exact damping, EKFAC; the
rotation back stays dense). fnn's backward pass has ``Ḡ`` as the product ``ȳᵀ δ`` of the layer's
inputs with a one appended, ``ȳ`` ``(B, n)``, and its backpropagated errors ``δ`` ``(B, m)``
(the factors' ``"gradient"`` entry, :mod:`fnn.analysis.curvature`), so

    L Ḡ R = (L ȳᵀ)(δ R):   2B(n² + m² + nm) FLOPs instead of 2nm(n + m),

fewer when the batch is small against the layer (at 1024×1024 with B = 256, 2.7× fewer; the
last layer of a classifier, 1024×10, is cheaper dense). :func:`order` picks, per layer and from
the static shapes alone, whichever of four association orders costs the fewest FLOPs
(:func:`flops`).

**When the low-rank form is used.** Only for the gradient it is the form of. The ``grads`` given
to ``update`` may be another one: weight decay (``l2``, ``l2_reg``), an
``optax.chain(optax.add_decayed_weights(...), fnn.kfac(...))``, clipping, noise, a sum across
devices, any change made between :func:`fnn.curvature_pass` and ``update``. So :func:`sandwich`
compares ``grads`` with the ``∂W``, ``∂b`` the backward pass returned beside its ``ȳ`` and
``δ``, element by element and exactly (``O(nm)``, no tolerance: the same value, not a close
one), and takes the low-rank product only where they are equal, by ``lax.cond``; otherwise the
dense product of ``grads``. The two branches differ by floating-point round-off only (the same
sums, associated differently). Under ``vmap`` (:func:`fnn.sweep`, a vmap over seeds) the
comparison is batched, and a ``lax.cond`` on a batched predicate becomes a select that runs
both branches; :func:`all_runs` reduces the predicate over the vmapped axes (``custom_vmap``),
so the cond stays a cond: low-rank when every run's ``grads`` is its own product, dense for all
runs otherwise. Each run gets the product of its own ``grads`` either way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

Array = jax.Array
ORDERS = ("dense", "both", "left", "right")


def flops(order: str, n: int, m: int, batch: int) -> int:
    """FLOPs (a multiply-add is 2) of ``L Ḡ R`` in ``order``, ``L`` ``(n, n)``, ``R`` ``(m, m)``:
    ``"dense"`` ``(L Ḡ) R``; ``"both"`` ``(L ȳᵀ)(δ R)``; ``"left"`` ``((L ȳᵀ) δ) R``;
    ``"right"`` ``L (ȳᵀ (δ R))``, with ``ȳ`` ``(batch, n)`` and ``δ`` ``(batch, m)``."""
    return {"dense": 2 * n * m * (n + m), "both": 2 * batch * (n * n + m * m + n * m),
            "left": 2 * batch * n * (n + m) + 2 * n * m * m,
            "right": 2 * batch * m * (m + n) + 2 * n * n * m}[order]


def order(n: int, m: int, batch: int) -> str:
    """The association order of :func:`flops` with the fewest FLOPs (``"dense"`` on a tie)."""
    return min(ORDERS, key=lambda o: flops(o, n, m, batch))


@custom_vmap
def all_runs(pred: Array) -> Array:
    """``pred`` (a boolean scalar) unchanged; under ``vmap``, ``all`` over the vmapped axis,
    *unbatched*, so a ``lax.cond`` on it stays a cond (nested ``vmap``: all axes)."""
    return pred


@all_runs.def_vmap
def _all_runs_batched(size, batched, pred):
    return all_runs(jnp.all(pred) if batched[0] else pred), False


def _product(left: Array, right: Array, how: str, pieces: tuple) -> Array:
    if how == "dense":
        return left @ pieces[0] @ right
    y, d = pieces
    if how == "both":
        return (left @ y.T) @ (d @ right)
    if how == "left":
        return ((left @ y.T) @ d) @ right
    return left @ (y.T @ (d @ right))


def _check_low_rank(grads: dict, low_rank: dict) -> None:
    (d_in, m), (batch, n) = grads["W"].shape, jnp.shape(low_rank["inputs"])
    if n != d_in + 1 or jnp.shape(low_rank["errors"]) != (batch, m) or jnp.shape(low_rank["W"]) != (d_in, m) \
            or jnp.shape(low_rank["b"]) != (m,):
        raise ValueError(f"factors' 'gradient' must hold inputs (B, {d_in + 1}), errors (B, {m}), W ({d_in}, {m}) "
                         f"and b ({m},) for this layer: pass the factors of fnn.curvature_pass unchanged.")


def sandwich(left: Array, right: Array, grads: dict, low_rank: dict | None = None) -> Array:
    """``L Ḡ R`` ``(n, m)`` with ``Ḡ = [grads["W"]; grads["b"]ᵀ]``.

    ``low_rank``: the layer's ``{"inputs": ȳ (B, n), "errors": δ (B, m), "W", "b"}`` from
    :func:`fnn.curvature_pass` (factors' ``"gradient"``), or ``None``. It is used (in the order
    :func:`order` picks) only where ``grads`` equals its ``"W"``, ``"b"`` exactly; see the module
    docstring. Raises ``ValueError`` for misshapen pieces.
    """
    def dense():
        return _product(left, right, "dense", (jnp.concatenate([grads["W"], grads["b"][None, :]], axis=0),))
    if low_rank is None:
        return dense()
    _check_low_rank(grads, low_rank)
    batch, n = jnp.shape(low_rank["inputs"])
    how = order(n, grads["W"].shape[1], batch)
    if how == "dense":
        return dense()
    dtype = grads["W"].dtype
    pieces = (low_rank["inputs"].astype(dtype), low_rank["errors"].astype(dtype))
    own = all_runs(jnp.all(grads["W"] == low_rank["W"]) & jnp.all(grads["b"] == low_rank["b"]))
    return jax.lax.cond(own, lambda: _product(left, right, how, pieces), dense)
