"""Hessian- and GGN-vector products split into a part made once per point and a part made
per vector, for iterative methods that apply the same operator many times (Lanczos,
conjugate gradients).

:func:`fnn.analysis.quantities.hvp_cached` reuses the forward pass but still redoes, for
every vector, the primal backward pass (``δz_l``, one ``d_l × d_{l−1}`` GEMM per hidden
layer), the loss gradient and the activations' first and second derivatives, none of which
depends on the vector. :func:`linearise` makes them once; :func:`hvp_linear` and
:func:`ggn_vp_linear` then do only the R-operator's own work per vector:

    R{y_l} = g_l ⊙ R{z_l},   R{δz_l} = R{δy_l} ⊙ g_l + c_l ⊙ R{z_l}

with ``g_l = f'(z_l) ⊙ m_l`` (the slope, dropout mask folded in) and
``c_l = δy_l ⊙ m_l ⊙ f''(z_l)``, the same sums as :func:`fnn.hvp` in another order.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn.core.layers import affine_forward
from fnn.core.losses import Loss
from fnn.core.network import MLP, Cache, Params

Array = jax.Array


class Linearisation(NamedTuple):
    """What a curvature-vector product needs that does not depend on the vector.

    Attributes:
      slopes: per layer ``g_l = f'(z_l) ⊙ m_l`` ``(B, d_l)`` (no mask on the output layer).
      deltas: per layer ``δz_l`` ``(B, d_l)``, the primal backward messages of ``R``.
      curvatures: per layer ``c_l = δy_l ⊙ m_l ⊙ f''(z_l)`` ``(B, d_l)``, or ``None`` where the
        activation's second derivative is not needed (GGN) or not given.
    """

    slopes: tuple
    deltas: tuple
    curvatures: tuple


def linearise(net: MLP, loss: Loss, params: Params, out: Array, v: Array, cache: Cache,
              second_order: bool = True) -> Linearisation:
    """The vector-free part of :func:`fnn.hvp` (``second_order``) or :func:`fnn.ggn_vp` at the
    forward pass ``(out, cache)`` on targets ``v``, without checks."""
    slopes, deltas, curvatures = [None] * net.num_layers, [None] * net.num_layers, [None] * net.num_layers
    for l, act in enumerate(net.activations):
        z, a = cache.pre_activations[l], cache.outputs[l]
        mask = cache.masks[l] if l < net.num_layers - 1 else None
        slopes[l] = act.grad(z, a) if mask is None else act.grad(z, a) * mask
    if not second_order:
        return Linearisation(tuple(slopes), tuple(deltas), tuple(curvatures))
    delta_y = loss.grad(out, v) / out.shape[0]
    for l in reversed(range(net.num_layers)):
        act, z, a = net.activations[l], cache.pre_activations[l], cache.outputs[l]
        mask = cache.masks[l] if l < net.num_layers - 1 else None
        masked = delta_y if mask is None else delta_y * mask
        deltas[l], curvatures[l] = delta_y * slopes[l], masked * act.grad2(z, a)
        if l:
            delta_y = deltas[l] @ params[l]["W"].T
    return Linearisation(tuple(slopes), tuple(deltas), tuple(curvatures))


def _r_forward(params: Params, lin: Linearisation, vector: Params, cache: Cache) -> tuple[list, list]:
    """``(R{z_l}, R{y_l})`` per layer along ``vector`` (as quantities._r_forward)."""
    rz, ry = [], []
    for l, (layer, vec) in enumerate(zip(params, vector)):
        z = affine_forward(cache.inputs[l], vec["W"], vec["b"])[0]
        if ry:
            z = z + ry[-1] @ layer["W"]
        rz.append(z)
        ry.append(lin.slopes[l] * z)
    return rz, ry


def hvp_linear(loss: Loss, params: Params, out: Array, v: Array, cache: Cache, lin: Linearisation,
               vector: Params) -> Params:
    """``∇²R u`` as :func:`fnn.hvp`, from ``lin = linearise(...)``: per vector the R-operator's
    forward GEMMs and its backward ones (``R{y}ᵀ δz``, ``yᵀ R{δz}``, ``R{δz} Wᵀ``, ``δz Vᵀ``)."""
    rz, ry = _r_forward(params, lin, vector, cache)
    r_delta_y = loss.hessian_vp(out, v, ry[-1]) / out.shape[0]
    result = [None] * len(params)
    for l in reversed(range(len(params))):
        r_delta_z = r_delta_y * lin.slopes[l] + lin.curvatures[l] * rz[l]
        r_weight = cache.inputs[l].T @ r_delta_z
        if l:  # R{y_{l−1}} = 0 for the data
            r_weight = r_weight + ry[l - 1].T @ lin.deltas[l]
            r_delta_y = r_delta_z @ params[l]["W"].T + lin.deltas[l] @ vector[l]["W"].T
        result[l] = {"W": r_weight.astype(params[l]["W"].dtype), "b": jnp.sum(r_delta_z, 0).astype(params[l]["b"].dtype)}
    return result


def ggn_vp_linear(loss: Loss, params: Params, out: Array, v: Array, cache: Cache, lin: Linearisation,
                  vector: Params) -> Params:
    """``G u`` as :func:`fnn.ggn_vp`, from ``lin = linearise(..., second_order=False)``."""
    ry = _r_forward(params, lin, vector, cache)[1]
    delta_y = loss.hessian_vp(out, v, ry[-1]) / out.shape[0]
    result = [None] * len(params)
    for l in reversed(range(len(params))):
        delta_z = delta_y * lin.slopes[l]
        result[l] = {"W": (cache.inputs[l].T @ delta_z).astype(params[l]["W"].dtype),
                     "b": jnp.sum(delta_z, 0).astype(params[l]["b"].dtype)}
        if l:
            delta_y = delta_z @ params[l]["W"].T
    return result
