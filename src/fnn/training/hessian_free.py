"""Gauss-Newton by conjugate gradients (Hessian-free, Levenberg–Marquardt damping) and exact
Newton, as optax transformations fed by fnn's hand-written curvature products.

Both are ``optax.GradientTransformationExtraArgs`` whose ``update.curvature`` names what the
update step passes (see :mod:`fnn.analysis.curvature`): :func:`gauss_newton` takes ``ggn_vp``, ``value``
and ``value_fn`` (the names optax's line searches use for the last two), :func:`newton` takes
``hvp``. The risk is the mean loss over the batch, so ``damping`` is in the units of its
curvature and does not depend on the batch size.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from fnn.analysis.curvature import Curvature, attach, missing_curvature
from fnn.core import linalg
from fnn.core.validation import check_damping, check_number, check_positive_int, check_static, keyword_hints
from fnn.training.second_order import _check_layers, _learning_rate

Array = jax.Array


def _dot(a, b) -> Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _axpy(alpha, x, y):
    return jax.tree.map(lambda a, b: alpha * a + b, x, y)


def _cg(matvec, b, x0, tol, maxiter: int):
    """Conjugate gradients for ``matvec(x) = b`` on params-shaped vectors, from ``x0``, until
    ``‖r‖ ≤ tol·‖b‖`` or ``maxiter`` iterations: ``jax.scipy.sparse.linalg.cg``'s iteration, written
    out because that one's ``device_put`` fails under ``vmap`` when the leaves' batch axes differ
    (as in :func:`fnn.sweep`)."""
    bound = tol * tol * _dot(b, b)

    def body(value):
        x, r, gamma, p, k = value
        ap = matvec(p)
        alpha = gamma / _dot(p, ap)
        x, r = _axpy(alpha, p, x), _axpy(-alpha, ap, r)
        gamma_new = _dot(r, r)
        return x, r, gamma_new, _axpy(gamma_new / gamma, p, r), k + 1

    r0 = jax.tree.map(jnp.subtract, b, matvec(x0))
    start = (x0, r0, _dot(r0, r0), r0, 0)
    return jax.lax.while_loop(lambda v: (v[2] > bound) & (v[4] < maxiter), body, start)[0]


class GaussNewtonState(NamedTuple):
    """``count``; ``damping`` (the current λ); ``rho`` (the last step's reduction ratio, 1
    before the first); ``direction`` (the last CG solution, its warm start)."""

    count: Array
    damping: Array
    rho: Array
    direction: list


def _lm_damping(damping, rho, hyper: dict):
    """Levenberg–Marquardt's rule (Martens 2010, §4.1): λ·decay if ρ > 3/4, λ/decay if ρ < 1/4."""
    if not hyper["adaptive_damping"]:
        return damping
    decay = hyper["damping_adaptation_decay"]
    damping = jnp.where(rho > 0.75, damping * decay, jnp.where(rho < 0.25, damping / decay, damping))
    return jnp.clip(damping, hyper["min_damping"], hyper["max_damping"])  # min_damping: the initial λ by default


def _gn_update(grads, state: GaussNewtonState, params, extra: dict, hyper: dict):
    ggn_vp, value, value_fn = extra.get("ggn_vp"), extra.get("value"), extra.get("value_fn")
    if ggn_vp is None or value is None or value_fn is None or params is None:
        raise missing_curvature("fnn.gauss_newton", "params, ggn_vp=, value= and value_fn=")
    lam = state.damping
    start = jax.tree.map(lambda d: hyper["cg_warm_start"] * d, state.direction)
    direction = _cg(lambda u: _axpy(lam, u, ggn_vp(u)), jax.tree.map(jnp.negative, grads), start,
                    hyper["cg_tol"], hyper["cg_iterations"])
    rate = _learning_rate(hyper["learning_rate"], state.count)
    step = jax.tree.map(lambda d: rate * d, direction)
    # The quadratic model's change, m(s) − m(0) = gᵀs + ½ sᵀ G s (undamped GGN).
    model = _dot(grads, step) + 0.5 * _dot(step, ggn_vp(step))
    trial = value_fn(optax.apply_updates(params, step))
    actual = trial - value
    rho = jnp.where(model < 0, actual / jnp.where(model < 0, model, -1.0), 0.0)
    accept = jnp.isfinite(trial) & (rho > 0)
    rho = jnp.where(jnp.isfinite(rho), rho, 0.0)
    updates = jax.tree.map(lambda s: jnp.where(accept, s, jnp.zeros_like(s)), step)
    damping = _lm_damping(lam, rho, hyper)
    return updates, GaussNewtonState(state.count + 1, damping, rho, direction)


@keyword_hints
def gauss_newton(learning_rate=1.0, damping: float = 1.0, *, cg_iterations: int = 20, cg_tol: float = 1e-5,
                 adaptive_damping: bool = True, damping_adaptation_decay: float = 2 / 3,
                 min_damping: float | None = None,
                 max_damping: float = 1e6, cg_warm_start: float = 0.95) -> optax.GradientTransformationExtraArgs:
    """Gauss-Newton / Levenberg–Marquardt by conjugate gradients, Hessian-free (Martens 2010).

        update(grads, state, params, *, ggn_vp, value, value_fn) -> (updates, state)

    Each step solves ``(G + λI) d = −g`` by at most ``cg_iterations`` CG iterations (relative
    tolerance ``cg_tol``, started from ``cg_warm_start`` times the last solution), each one
    GGN-vector product by the hand-written R-operator, and proposes ``s = η d``. With the
    quadratic model ``m(s) − m(0) = gᵀs + ½ sᵀGs`` and one more forward pass for ``R(θ + s)``,

        ρ = (R(θ + s) − R(θ)) / (m(s) − m(0))

    the step is taken when ``ρ > 0`` (else the update is zero) and, with ``adaptive_damping``,
    ``λ`` is multiplied by ``damping_adaptation_decay`` when ``ρ > 3/4`` and divided by it when
    ``ρ < 1/4`` (clipped to ``[min_damping, max_damping]``). ``G`` includes weight decay.

    The floor ``min_damping`` is the initial ``damping`` unless given. On a minibatch ``ρ`` is
    measured on the batch the step was solved on, and the batch's risk is close to quadratic over
    the step, so ``ρ ≈ 1`` nearly always: without a floor the rule drives λ down step after step
    (notebook 06: ÷ 80 on batches of 64), the steps fit each batch's noise, and the risk stalls or
    rises (``tests/test_second_order.py`` reproduces it). Measuring ``ρ`` on the *next* batch does
    not help either: the step's predicted decrease includes the batch's gradient noise, so ``ρ``
    then tracks the gradient's signal-to-noise ratio, falls below 1/4 as training proceeds, and
    drives λ up to ``max_damping``. With the floor, λ rises when steps fail and comes back to
    ``damping``, never below it: a fixed λ that backs off. For full-batch training, where the
    batch is the risk, give a small ``min_damping`` (e.g. ``1e-6``) to let λ fall.

    Args:
      learning_rate: ``η`` (1 is the Gauss-Newton step), a number or an optax schedule.
      damping: the initial ``λ > 0`` (the rule multiplies it, so from 0 it could never rise).
      cg_iterations, cg_tol: CG's iteration cap and relative residual tolerance.
      adaptive_damping, damping_adaptation_decay, max_damping: the LM rule.
      min_damping: λ's floor, ``None`` for the initial ``damping``.
      cg_warm_start: the fraction of the last direction CG starts from, in [0, 1].
    """
    check_damping(damping, "fnn.gauss_newton", "Levenberg–Marquardt's rule multiplies λ, so from 0 it never "
                  "rises, and (G + λI) is singular where G is")
    check_static("fnn.gauss_newton", cg_iterations=cg_iterations)
    check_positive_int(cg_iterations, "cg_iterations")
    check_number(cg_tol, "cg_tol")
    check_number(damping_adaptation_decay, "damping_adaptation_decay", upper=1.0)
    check_number(cg_warm_start, "cg_warm_start", upper=1.0 + 1e-12)
    if not callable(learning_rate):
        check_number(learning_rate, "learning_rate")
    if min_damping is None:
        min_damping = damping
    check_number(min_damping, "min_damping")
    hyper = dict(learning_rate=learning_rate, cg_iterations=cg_iterations, cg_tol=cg_tol,
                 adaptive_damping=adaptive_damping, damping_adaptation_decay=damping_adaptation_decay,
                 min_damping=min_damping, max_damping=max_damping, cg_warm_start=cg_warm_start)

    def init(params):
        _check_layers(params, "fnn.gauss_newton")
        dtype = jax.tree.leaves(params)[0].dtype
        return GaussNewtonState(jnp.zeros((), jnp.int32), jnp.asarray(damping, dtype), jnp.ones((), dtype),
                                jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None, **extra):
        return _gn_update(grads, state, params, extra, hyper)

    return attach(optax.GradientTransformationExtraArgs(init, update), Curvature("ggn_vp"))


class NewtonState(NamedTuple):
    """``count``: steps taken."""

    count: Array


def dense_matrix(product, params) -> Array:
    """The dense ``(P, P)`` matrix of a linear map ``product`` on params-shaped vectors, one
    product per basis vector (``vmap``); rows and columns in ``ravel_pytree(params)`` order."""
    flat, unravel = ravel_pytree(params)
    columns = jax.vmap(lambda e: ravel_pytree(product(unravel(e)))[0])(jnp.eye(flat.shape[0], dtype=flat.dtype))
    return columns.T


def _check_size(params, max_parameters: int) -> None:
    """Raises, in one line, when the dense ``(P, P)`` Hessian of ``params`` is over the limit."""
    leaves = jax.tree.leaves(params)
    count = sum(int(jnp.size(a)) for a in leaves)
    if count > max_parameters:
        size = count * count * jnp.dtype(leaves[0].dtype).itemsize
        raise ValueError(f"fnn.newton forms the dense Hessian of all P = {count:,} parameters ({size:,} bytes, "
                         f"P Hessian-vector products per step), over max_parameters={max_parameters:,}: use a "
                         "smaller network, gauss_newton or kfac, or raise newton's max_parameters.")


@keyword_hints
def newton(learning_rate=1.0, damping: float = 1e-4, *,
           max_parameters: int = 5000) -> optax.GradientTransformationExtraArgs:
    """Exact (damped) Newton for networks small enough to form the Hessian (a few thousand
    parameters): the dense ``∇²R`` from ``P`` hand-written Hessian-vector products, then

        update(grads, state, params=None, *, hvp) -> (updates, state)
        u = −η (∇²R + λI)⁻¹ g        (jnp.linalg.solve, P = number of parameters)

    ``∇²R`` includes weight decay; it is of the risk without dropout. Far from a minimum the
    Hessian can be indefinite: then ``u`` need not descend unless ``λ`` exceeds its most
    negative eigenvalue.

    A step costs ``P`` Hessian-vector products, ``P² × itemsize`` bytes for ``∇²R`` and an
    ``O(P³)`` solve: at fnn's default 64-128-128-10 network (``P`` = 26,122) 2.7 GB in float32
    and minutes per step. So ``init`` (and ``update``, before any product) raise ``ValueError``,
    naming ``P`` and the Hessian's bytes, when ``P > max_parameters``.

    Args:
      learning_rate: ``η``, a number or an optax schedule.
      damping: ``λ ≥ 0``.
      max_parameters: the largest ``P`` accepted (default 5000: 100 MB in float32); raise it
        knowingly.
    """
    check_number(damping, "damping")
    check_static("fnn.newton", max_parameters=max_parameters)
    check_positive_int(max_parameters, "max_parameters")
    if not callable(learning_rate):
        check_number(learning_rate, "learning_rate")

    def init(params):
        _check_layers(params, "fnn.newton")
        _check_size(params, max_parameters)
        return NewtonState(jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, *, hvp=None, **extra):
        _check_size(grads, max_parameters)
        if hvp is None:
            raise missing_curvature("fnn.newton", "hvp=")
        flat, unravel = ravel_pytree(grads)
        hessian = dense_matrix(hvp, grads)
        hessian = 0.5 * (hessian + hessian.T) + damping * jnp.eye(flat.shape[0], dtype=flat.dtype)
        rate = _learning_rate(learning_rate, state.count)
        return unravel(-rate * linalg.solve(hessian, flat)), NewtonState(state.count + 1)

    return attach(optax.GradientTransformationExtraArgs(init, update), Curvature("hessian"))
