"""The curvature a second-order optimizer needs, from the same forward and backward pass as
the gradient.

A second-order transformation (:func:`fnn.kfac`, :func:`fnn.ggn_diag_precond`,
:func:`fnn.gauss_newton`, :func:`fnn.newton`) is an ``optax.GradientTransformationExtraArgs``
whose ``update`` takes, besides ``grads``, keyword arguments with curvature. Its ``update``
function carries a :class:`Curvature` (``opt.update.curvature``) that says which ones, and
:func:`value_grad_curvature` computes them with the gradient, from one forward cache:

- ``"kronecker"`` → ``factors=``: per layer ``{"A": (d_{l−1}+1, d_{l−1}+1), "G": (d_l, d_l)}``,
  the K-FAC factors of the layer's weights and bias together (the input ``ȳ = [y, 1]`` is
  augmented with a one, so ``[W; bᵀ]`` of shape ``(d_{l−1}+1, d_l)`` is one Kronecker block):

      A_l = Σ_b ŵ_b ȳ_{l−1,b} ȳ_{l−1,b}ᵀ,    G_l = Σ_b ŵ_b Σ_s δz^{(s)}_{l,b} δz^{(s)ᵀ}_{l,b}

  with ``ŵ_b = w_b / Σ w`` (``1/B`` unweighted) and ``δz^{(s)}`` the backpropagated columns
  of a factor of the loss Hessian (``mc_samples=0``: KFLR, exact) or ``M`` sampled output
  gradients scaled by ``1/√M`` (KFAC, Monte Carlo). So ``A_l ⊗ G_l`` approximates the
  block of the GGN of the *mean* risk (weight decay not included), whatever the batch size.
  With ``eigen_stats`` (EKFAC) each entry also holds ``"inputs"`` ``ȳ`` ``(B, d_{l−1}+1)``
  and ``"deltas"`` ``√ŵ_b δz^{(s)}`` ``(S, B, d_l)``. Unless ``l2`` is a nonzero number, each
  entry also holds ``"gradient"``: the layer's gradient in its low-rank form, ``{"inputs": ȳ
  (B, d_{l−1}+1), "errors": δz_l (B, d_l), "W", "b"}`` with ``δz_l`` the backpropagated errors
  of the risk (``ŵ_b`` included), so ``ȳᵀ δz_l = [∂W; ∂bᵀ]``, and ``"W"``, ``"b"`` that
  product as the backward pass returned it (weight decay not included). :func:`fnn.kfac`
  preconditions ``ȳ`` and ``δz_l`` in place of the dense block where that is cheaper, and only
  when the ``grads`` it is given equal ``"W"`` and ``"b"`` exactly
  (:mod:`fnn.training.kronecker`).
- ``"ggn_diagonal"`` → ``ggn_diag=``: the diagonal of that GGN, shaped like ``params``.
- ``"ggn_vp"`` → ``ggn_vp=`` (``u ↦ (G + λ_{l2} P_W) u`` by the hand-written R-operator),
  ``value=`` ``R(θ)`` and ``value_fn=`` (``θ' ↦ R(θ')`` on the same batch and dropout masks),
  as optax's line searches take ``value`` and ``value_fn``.
- ``"hessian"`` → ``hvp=`` (``u ↦ ∇²R u``, hand-written, without dropout).

Under ``jit`` with a batch sharded over a mesh (:mod:`fnn.training.parallel`) the sums over ``b`` are
global, so every device sees the factors of the whole batch (averaged over devices).
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import optax

from fnn.core.backprop import Objective, backward, backward_step
from fnn.core.losses import Loss, mae, risk_grad
from fnn.core.network import MLP, Params
from fnn.analysis.columns import column_deltas
from fnn.analysis.quantities import _r_forward, hvp as _hvp
from fnn.core.validation import check_key, validate

Array = jax.Array
KINDS = ("kronecker", "ggn_diagonal", "ggn_vp", "hessian")


@dataclasses.dataclass(frozen=True)
class Curvature:
    """Which curvature a transformation's ``update`` takes (see the module docstring).

    Attributes:
      kind: one of ``"kronecker"``, ``"ggn_diagonal"``, ``"ggn_vp"``, ``"hessian"``.
      mc_samples: 0 for the exact loss-Hessian factor (KFLR, exact GGN diagonal), ``M > 0``
        for ``M`` sampled targets (KFAC, MC GGN diagonal; the update step then needs a key).
      eigen_stats: also pass the per-example statistics EKFAC's scaling needs.
    """

    kind: str
    mc_samples: int = 0
    eigen_stats: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Unknown curvature kind {self.kind!r}: choose from {', '.join(KINDS)}.")
        m = self.mc_samples
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"mc_samples must be a non-negative integer (0: exact), got {m!r}.")

    @property
    def needs_key(self) -> bool:
        """Whether the update step must be given a PRNG key (Monte-Carlo sampling)."""
        return self.mc_samples > 0


def curvature_of(optimizer) -> Curvature | None:
    """The :class:`Curvature` an optimizer's ``update`` asks for, or ``None`` (first-order)."""
    found = getattr(getattr(optimizer, "update", None), "curvature", None)
    return found if isinstance(found, Curvature) else None


def attach(transformation, curvature: Curvature):
    """``transformation`` with ``curvature`` recorded on its ``update`` function (returned)."""
    transformation.update.curvature = curvature
    return transformation


def chain(*transforms, curvature: Curvature | None = None) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(*transforms)`` that asks for the curvature its second-order member needs, so
    :func:`fnn.fit`, :func:`fnn.make_update_fn` and :func:`fnn.curvature_pass` compute it::

        opt = fnn.chain(optax.clip_by_global_norm(1.0), fnn.kfac(0.1, 1.0))

    optax's own ``chain`` hides the member's ``update.curvature``, so the curvature would not
    be computed. ``optax.chain`` gives the curvature keywords (``factors=``, ...) to every
    member that takes extra arguments; optax's usual transformations (clipping, decay,
    scaling) ignore them. A member that changes the gradient before K-FAC makes it take the
    dense product (``fnn.training.kronecker``). ``curvature``: for a member that hides its own,
    e.g. ``optax.inject_hyperparams(fnn.kfac, static_args=("inverse_update_period",
    "mc_samples"))(learning_rate=0.1, damping=1.0)``, give ``fnn.kfac().update.curvature``
    (with the same ``mc_samples``/``ekfac``). Raises ``ValueError`` when members ask for
    different curvature (one pass computes one kind).
    """
    found = {c for c in map(curvature_of, transforms) if c is not None} | ({curvature} if curvature is not None else set())
    if len(found) > 1:
        raise ValueError(f"fnn.chain takes one kind of curvature, but its members ask for {sorted(found, key=str)}: "
                         "chain one second-order optimizer.")
    chained = optax.chain(*transforms)
    return attach(chained, found.pop()) if found else chained


def missing_curvature(what: str, keywords: str) -> ValueError:
    """The error of a second-order ``update`` called without its curvature keywords."""
    return ValueError(f"{what} got no {keywords}: fnn.fit, fnn.make_update_fn and fnn.curvature_pass(opt, ...) "
                      "compute it when opt.update.curvature asks for it; inside optax.chain build the chain "
                      "with fnn.chain(...), which keeps that request.")


def check_curvature_loss(loss: Loss, curvature: Curvature) -> None:
    """Warns (a ``UserWarning``, once per call site) when ``loss`` has no curvature in the output
    (mae, mape: their ``hessian_factor`` is zero), so the GGN that K-FAC, the GGN diagonal and
    Gauss-Newton use is zero and their step is the gradient divided by the damping."""
    if curvature.kind != "hessian" and loss.hessian_factor is mae.hessian_factor:
        warnings.warn(f"Loss {loss.name} has zero curvature in the output (its second derivative is 0 almost "
                      "everywhere), so the GGN is zero and this optimizer's step is the gradient divided by the "
                      "damping: use newton, a first-order optimizer, or a loss with curvature (mse, huber).",
                      UserWarning, stacklevel=3)


def _normalised(weights, out: Array) -> Array:
    """``ŵ_b = w_b / Σ w`` of shape ``(B,)`` (``1/B`` without weights)."""
    n = out.shape[0]
    if weights is None:
        return jnp.full((n,), 1.0 / n, out.dtype)
    w = jnp.asarray(weights).astype(out.dtype)
    return w / jnp.sum(w)


def _columns(net: MLP, loss: Loss, params, out, v, cache, mc_samples: int, key) -> list[Array]:
    """``δz^{(s)}_l`` ``(B, S, d_l)`` per layer: exact loss-Hessian factor columns, or ``M``
    sampled output gradients scaled by ``1/√M``, each example's ``S`` columns in adjacent rows
    of one GEMM per layer (:func:`fnn.analysis.columns.column_deltas`)."""
    if mc_samples == 0:
        if loss.hessian_factor is None:
            raise ValueError(f"Loss {loss.name} has no hand-written Hessian factor: give it hessian_factor.")
        douts = jnp.swapaxes(loss.hessian_factor(out, v), 1, 2)
    else:
        if loss.sample is None:
            raise ValueError(f"Loss {loss.name} is not a negative log-likelihood with a sampler: use "
                             "mc_samples=0 (exact curvature).")
        keys = jax.random.split(key, mc_samples)
        douts = jax.vmap(lambda k: loss.grad(out, loss.sample(k, out)), out_axes=1)(keys)
        douts = douts / jnp.sqrt(jnp.asarray(mc_samples, out.dtype))
    return column_deltas(net, params, cache, douts)


def kronecker_factors(net: MLP, params, cache, columns: list[Array], w: Array, eigen_stats: bool,
                      gradient: tuple[Params, list[Array]] | None = None) -> list[dict]:
    """Per layer ``{"A", "G"}`` (and EKFAC's ``"inputs"``, ``"deltas"``) from the forward
    cache, the backpropagated columns ``(B, S, d_l)`` and the normalised weights ``ŵ`` ``(B,)``:
    one GEMM each, ``G`` over the ``B·S`` rows ``√ŵ_b δz^{(s)}_b`` (a reshape, no transpose).
    ``gradient``: ``(grads, errors)`` of :func:`_backward_with_errors`, kept as ``"gradient"``."""
    out = []
    for l, (y, d) in enumerate(zip(cache.inputs, columns)):
        ybar = jnp.concatenate([y, jnp.ones((y.shape[0], 1), y.dtype)], axis=1)
        scaled = d * jnp.sqrt(w)[:, None, None]
        rows = jnp.reshape(scaled, (-1, d.shape[-1]))
        entry = {"A": (ybar * w[:, None]).T @ ybar, "G": rows.T @ rows}
        if eigen_stats:
            entry["inputs"], entry["deltas"] = ybar, jnp.swapaxes(scaled, 0, 1)
        if gradient is not None:
            entry["gradient"] = {"inputs": ybar, "errors": gradient[1][l], **gradient[0][l]}
        out.append(entry)
    return out


def _backward_with_errors(net: MLP, params, cache, dout: Array) -> tuple[Params, list[Array]]:
    """:func:`fnn.core.backprop.backward`'s gradients, and each layer's errors ``δz_l``
    ``(B, d_l)``, with ``ȳ_{l−1}ᵀ δz_l = [∂W_l; ∂b_lᵀ]`` (the same pass; nothing recomputed)."""
    grads, errors, delta_y = [None] * net.num_layers, [None] * net.num_layers, dout
    for l in reversed(range(net.num_layers)):
        step = backward_step(net, params, cache, l, delta_y, input_grad=l > 0)
        grads[l], errors[l], delta_y = step.grads, step.delta_z, step.delta_in
    return grads, errors


def _ggn_diag(cache, columns: list[Array], w: Array) -> Params:
    out = []
    for y, d in zip(cache.inputs, columns):
        d2 = jnp.sum(d * d, axis=1)
        out.append({"W": (y * y * w[:, None]).T @ d2, "b": jnp.sum(d2 * w[:, None], axis=0)})
    return out


def _with_l2(grads: Params, params: Params, l2) -> Params:
    if not isinstance(l2, jax.Array) and l2 == 0.0:
        return grads
    return [{"W": g["W"] + l2 * p["W"], "b": g["b"]} for g, p in zip(grads, params)]


def _ggn_vp_fn(objective: Objective, params, cache, out, v, w):
    def ggn_vp(u: Params) -> Params:
        j_u = _r_forward(objective.net, params, u, cache)[1][-1]
        if objective.loss.hessian_vp is None:
            raise ValueError(f"Loss {objective.loss.name} has no hand-written Hessian-vector product.")
        h_u = objective.loss.hessian_vp(out, v, j_u) * w[:, None]
        return _with_l2(backward(objective.net, params, cache, h_u), u, objective.l2)
    return ggn_vp


def _hvp_fn(objective: Objective, params, x, v, w):
    """``u ↦ ∇²R u`` of the weighted risk (without dropout), by :func:`fnn.hvp` on the loss
    with each example's derivatives scaled by ``B ŵ_b`` (fnn.hvp divides by ``B``)."""
    if not isinstance(objective.dropout, jax.Array) and objective.dropout > 0:
        raise ValueError("fnn.newton forms the Hessian of the risk without dropout: train it with dropout=0.")
    loss, scale = objective.loss, (w * w.shape[0])[:, None]
    if loss.hessian_vp is None:
        raise ValueError(f"Loss {loss.name} has no hand-written Hessian-vector product.")
    weighted = loss._replace(grad=lambda y, t: loss.grad(y, t) * scale,
                             hessian_vp=lambda y, t, u: loss.hessian_vp(y, t, u) * scale)

    def hessian_vp(u: Params) -> Params:
        return _with_l2(_hvp(objective.net, weighted, params, x, v, u), u, objective.l2)
    return hessian_vp


def value_grad_curvature(objective: Objective, curvature: Curvature, params: Params, x: Array, v: Array,
                         weights: Array | None = None, key: Array | None = None) -> tuple[Array, Params, dict]:
    """``(R, ∂R/∂θ, extra)`` from one forward and one backward pass (no input checks), where
    ``extra`` holds the keyword arguments ``curvature`` names (see the module docstring).

    ``key`` draws the dropout masks as in :func:`fnn.make_update_fn`; the Monte-Carlo targets
    come from ``fold_in(key, 1)``.
    """
    net, loss = objective.net, objective.loss
    value, out, cache = objective.evaluate(params, x, v, weights, key)
    raw, errors = _backward_with_errors(net, params, cache, risk_grad(loss, out, v, weights))
    grads, w = _with_l2(raw, params, objective.l2), _normalised(weights, out)
    if curvature.kind in ("kronecker", "ggn_diagonal"):
        mc_key = None
        if curvature.needs_key:
            check_key(key, "key (Monte-Carlo curvature samples targets)")
            mc_key = jax.random.fold_in(key, 1)
        cols = _columns(net, loss, params, out, v, cache, curvature.mc_samples, mc_key)
        if curvature.kind == "kronecker":
            # With weight decay the gradient is not ȳᵀδz: no low-rank form (a traced l2 is checked by kfac).
            low_rank = None if not isinstance(objective.l2, jax.Array) and objective.l2 else (raw, errors)
            return value, grads, {"factors": kronecker_factors(net, params, cache, cols, w, curvature.eigen_stats,
                                                               low_rank)}
        return value, grads, {"ggn_diag": _ggn_diag(cache, cols, w)}
    if curvature.kind == "ggn_vp":
        value_fn = lambda p: objective.evaluate(p, x, v, weights, key)[0]  # noqa: E731
        return value, grads, {"ggn_vp": _ggn_vp_fn(objective, params, cache, out, v, w), "value": value,
                              "value_fn": value_fn}
    return value, grads, {"hvp": _hvp_fn(objective, params, x, v, w)}


def curvature_pass(optimizer, net: MLP, loss, params: Params, x: Array, v: Array, *, weights=None, key=None,
                   l2: float = 0.0, dropout: float = 0.0) -> tuple[Array, Params, dict]:
    """For your own ``jit`` step: ``(R, grads, extra)`` with the curvature ``optimizer`` asks
    for, so that ``optimizer.update(grads, state, params, **extra)`` is one K-FAC (or
    Gauss-Newton, ...) step::

        value, grads, extra = fnn.curvature_pass(opt, net, "mse", params, x, v)
        updates, state = opt.update(grads, state, params, **extra)

    ``x`` ``(B, d_0)``, ``v`` targets, ``weights`` ``(B,)``; ``key`` is needed for dropout and
    for Monte-Carlo curvature. Raises ``ValueError`` for a first-order optimizer.
    """
    curvature = curvature_of(optimizer)
    if curvature is None:
        raise ValueError("This optimizer asks for no curvature (no opt.update.curvature): for a first-order one use "
                         "fnn.value_and_grad and optimizer.update; a second-order one inside optax.chain needs "
                         "fnn.chain(...) in place of optax.chain.")
    objective = Objective(net, loss, l2, dropout)
    validate(net, objective.loss, params, x, v, weights)
    check_curvature_loss(objective.loss, curvature)
    return value_grad_curvature(objective, curvature, params, x, v, weights, key)
