"""K-FAC, EKFAC and a diagonal-GGN preconditioner as optax transformations.

Each is an ``optax.GradientTransformationExtraArgs``: ``update(grads, state, params, **curvature)``
with the curvature keyword its ``update.curvature`` names (:mod:`fnn.analysis.curvature`), which
:func:`fnn.make_update_fn` (so :func:`fnn.fit`, ``fnn train``, ``fnn sweep``) computes in the same
forward and backward pass as the gradient. In your own ``jit`` step::

    opt = fnn.kfac(learning_rate=0.1, damping=1.0)
    state = opt.init(params)
    value, grads, extra = fnn.curvature_pass(opt, net, "softmax_cross_entropy", params, x, v)
    updates, state = opt.update(grads, state, params, **extra)      # extra = {"factors": [...]}

Conventions (named as kfac-jax and curvlinops name theirs). The risk is the *mean* loss over
the batch, so the factors, and the curvature they approximate, do not grow with the batch
size, and ``damping`` is in the units of that mean-risk curvature. ``l2_reg`` adds
``l2_reg·θ`` to the gradient and ``l2_reg`` to the damping (as kfac-jax's ``l2_reg``); weight
decay given to the update step (``l2``) is in the gradient but not in the factors. Running
averages are exponential with weight ``curvature_ema`` on the old value, the first step taking
the batch's factors as they are. The preconditioner (inverses or eigendecompositions) is
refreshed when ``count % inverse_update_period == 0``, by ``lax.cond`` inside ``jit``. Under
``vmap`` the state's ``count`` is batched, and a ``lax.cond`` on a batched predicate becomes a
select that runs both branches, the eigendecompositions every step; so ``update`` takes
``step=``, the step count every run shares, unbatched (:func:`with_shared_step`), and
:func:`fnn.sweep` passes it: the refresh stays conditional and runs every ``T`` steps. Each
layer's weights and bias form one block ``[W; bᵀ]`` ``(d_{l−1}+1, d_l)`` with ``vec`` row-major,
so its curvature is ``A ⊗ G``. ``update`` multiplies the gradient by the factors from its low-rank
form ``ȳᵀδ`` (in the factors) where cheaper, only when ``grads`` is exactly that product
(:mod:`fnn.training.kronecker` says why this is safe; π-damping at MNIST size: 2.9, not 7.2 GFLOP).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fnn.analysis.curvature import Curvature, attach, curvature_of, missing_curvature
from fnn.core.linalg import one_matrix_at_a_time
from fnn.core.validation import (check_choice, check_damping, check_number, check_positive_int, check_static,
                                 keyword_hints)
from fnn.training.kronecker import sandwich

Array = jax.Array
DAMPING_MODES = ("exact", "pi")


class KFACState(NamedTuple):
    """``count`` (steps taken), ``factors`` (running ``{"A", "G"}`` per layer), ``precond``
    (per layer ``{"A_inv", "G_inv"}`` for π-damping, ``{"QA", "dA", "QG", "dG"}`` and EKFAC's
    ``"scale"`` ``(d_{l−1}+1, d_l)`` for the eigenbasis modes) and ``momentum`` (like params)."""

    count: Array
    factors: list
    precond: list
    momentum: list


def _learning_rate(learning_rate, count):
    return learning_rate(count) if callable(learning_rate) else learning_rate


def _check_layers(params, what: str) -> None:
    if not isinstance(params, (list, tuple)) or not all(isinstance(p, dict) and set(p) == {"W", "b"}
                                                        for p in params):
        raise ValueError(f"{what} works on fnn's params, a list of {{'W', 'b'}} dicts (one per layer).")


def _check_factors(factors, params, ekfac: bool) -> list:
    if factors is None:
        raise missing_curvature("fnn.kfac", "factors=")
    factors = factors() if callable(factors) else factors
    if len(factors) != len(params):
        raise ValueError(f"factors has {len(factors)} layers but params has {len(params)}.")
    for l, (f, p) in enumerate(zip(factors, params)):
        d_in, d_out = p["W"].shape
        if jnp.shape(f["A"]) != (d_in + 1, d_in + 1) or jnp.shape(f["G"]) != (d_out, d_out):
            raise ValueError(f"factors[{l}] must hold A ({d_in + 1}, {d_in + 1}) (input with a one appended) "
                             f"and G ({d_out}, {d_out}), got {jnp.shape(f['A'])} and {jnp.shape(f['G'])}.")
        if ekfac and not {"inputs", "deltas"} <= set(f):
            raise ValueError("EKFAC needs factors with 'inputs' and 'deltas' (Curvature eigen_stats=True).")
    return factors


@one_matrix_at_a_time
def _eigh(m: Array) -> tuple[Array, Array]:
    d, q = jnp.linalg.eigh(m)
    return jnp.maximum(d, 0.0), q


@one_matrix_at_a_time
def _spd_inverse(m: Array) -> Array:
    """``m⁻¹`` of a symmetric positive-definite ``m`` by Cholesky: ``m = L Lᵀ``, ``L⁻¹`` by one
    triangular solve, ``m⁻¹ = L⁻ᵀ L⁻¹`` (one GEMM): no pivoting, and NaN (not a wrong finite
    inverse) where ``m`` is not positive definite."""
    inv_low = jax.lax.linalg.triangular_solve(jnp.linalg.cholesky(m), jnp.eye(m.shape[0], dtype=m.dtype),
                                              left_side=True, lower=True)
    return inv_low.T @ inv_low


def _refresh(factors: list, damping, damping_mode: str) -> list:
    """The preconditioner of every layer from the averaged factors."""
    out = []
    for f in factors:
        a, g = f["A"], f["G"]
        if damping_mode == "pi":
            tiny = jnp.finfo(a.dtype).tiny
            ta, tg = jnp.trace(a) / a.shape[0], jnp.trace(g) / g.shape[0]
            pi = jnp.where((ta > tiny) & (tg > tiny), jnp.sqrt(ta / jnp.maximum(tg, tiny)), 1.0)
            root = jnp.sqrt(damping)
            out.append({"A_inv": _spd_inverse(a + pi * root * jnp.eye(a.shape[0], dtype=a.dtype)),
                        "G_inv": _spd_inverse(g + root / pi * jnp.eye(g.shape[0], dtype=g.dtype))})
        else:
            (da, qa), (dg, qg) = _eigh(a), _eigh(g)
            out.append({"QA": qa, "dA": da, "QG": qg, "dG": dg})
    return out


def _ekfac_scale(f: dict, pre: dict) -> Array:
    """``Σ_b (Q_Aᵀ ȳ_b)² ⊗ Σ_s ŵ_b (Q_Gᵀ δz^{(s)}_b)²``: the diagonal of the layer's GGN block in
    the Kronecker eigenbasis, ``(d_{l−1}+1, d_l)`` (George et al. 2018)."""
    y = f["inputs"] @ pre["QA"]
    d = jnp.einsum("sbj,jk->sbk", f["deltas"], pre["QG"])
    return (y * y).T @ jnp.sum(d * d, axis=0)


def _precondition(g: dict, low_rank: dict | None, pre: dict, damping, damping_mode: str, ekfac: bool) -> Array:
    """The preconditioned block ``(d_{l−1}+1, d_l)`` of one layer's ``g`` (``{"W", "b"}``); the
    products with ``g`` from its low-rank form where that is cheaper (:func:`sandwich`)."""
    if damping_mode == "pi":
        return sandwich(pre["A_inv"], pre["G_inv"], g, low_rank)
    rotated = sandwich(pre["QA"].T, pre["QG"], g, low_rank)
    curvature = pre["scale"] if ekfac else pre["dA"][:, None] * pre["dG"][None, :]
    return pre["QA"] @ (rotated / (curvature + damping)) @ pre["QG"].T


def _init(params, damping_mode: str, ekfac: bool) -> KFACState:
    _check_layers(params, "fnn.kfac")
    factors, precond = [], []
    for p in params:
        (d_in, d_out), dt = p["W"].shape, p["W"].dtype
        factors.append({"A": jnp.zeros((d_in + 1, d_in + 1), dt), "G": jnp.zeros((d_out, d_out), dt)})
        if damping_mode == "pi":
            precond.append({"A_inv": jnp.eye(d_in + 1, dtype=dt), "G_inv": jnp.eye(d_out, dtype=dt)})
        else:
            precond.append({"QA": jnp.eye(d_in + 1, dtype=dt), "dA": jnp.zeros(d_in + 1, dt),
                            "QG": jnp.eye(d_out, dtype=dt), "dG": jnp.zeros(d_out, dt)})
            if ekfac:
                precond[-1]["scale"] = jnp.zeros((d_in + 1, d_out), dt)
    return KFACState(jnp.zeros((), jnp.int32), factors, precond, jax.tree.map(jnp.zeros_like, params))


def _averaged(state: KFACState, factors: list, curvature_ema) -> list:
    new = 1.0 - jnp.where(state.count == 0, 0.0, curvature_ema)
    return [{k: old[k] + new * (f[k] - old[k]) for k in ("A", "G")} for old, f in zip(state.factors, factors)]


def _new_precond(state, factors, averaged, hyper: dict, step=None) -> list:
    damping, mode, ekfac = hyper["damping"], hyper["damping_mode"], hyper["ekfac"]
    refresh = (state.count if step is None else step) % hyper["inverse_update_period"] == 0
    fresh = lambda: _refresh(averaged, damping, mode)  # noqa: E731
    stale = lambda: [{k: p[k] for k in p if k != "scale"} for p in state.precond]  # noqa: E731
    precond = jax.lax.cond(refresh, fresh, stale)
    if ekfac:
        new = 1.0 - jnp.where(refresh, 0.0, hyper["curvature_ema"])  # a new basis starts its average anew
        for pre, old, f in zip(precond, state.precond, factors):
            batch = _ekfac_scale(f, pre)
            pre["scale"] = jnp.where(refresh, batch, old["scale"] + new * (batch - old["scale"]))
    return precond


def _kfac_update(grads, state: KFACState, params, factors, hyper: dict, step=None):
    ekfac, mode, l2_reg = hyper["ekfac"], hyper["damping_mode"], hyper["l2_reg"]
    factors = _check_factors(factors, grads, ekfac)
    damping, low_rank = hyper["damping"] + l2_reg, [f.get("gradient") for f in factors]
    if not isinstance(l2_reg, jax.Array) and l2_reg == 0:
        damping = hyper["damping"]
    elif params is None:
        raise ValueError("fnn.kfac with l2_reg > 0 needs params in update(grads, state, params, ...).")
    else:
        grads = jax.tree.map(lambda g, p: g + l2_reg * p, grads, params)
        low_rank = low_rank if isinstance(l2_reg, jax.Array) else [None] * len(factors)  # traced: checked
    averaged = _averaged(state, factors, hyper["curvature_ema"])
    precond = _new_precond(state, factors, averaged, dict(hyper, damping=damping), step)
    rate = _learning_rate(hyper["learning_rate"], state.count)
    steps = []
    for g, pieces, pre in zip(grads, low_rank, precond):
        p = _precondition(g, pieces, pre, damping, mode, ekfac)
        steps.append({"W": p[:-1], "b": p[-1]})
    if hyper["norm_constraint"] is not None:  # Ba et al. 2017: η² Pᵀg ≤ κ
        quadratic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(steps), jax.tree.leaves(grads)))
        steps = jax.tree.map(lambda a: a * jnp.minimum(1.0, jnp.sqrt(
            hyper["norm_constraint"] / jnp.maximum(rate * rate * quadratic, jnp.finfo(a.dtype).tiny))), steps)
    momentum, updates = [], []
    for step, m in zip(steps, state.momentum):
        m = jax.tree.map(lambda old, new: hyper["momentum"] * old + new, m, step)
        momentum.append(m)
        updates.append(jax.tree.map(lambda a: -rate * a, m))
    return updates, KFACState(state.count + 1, averaged, precond, momentum)


@keyword_hints
def kfac(learning_rate=0.1, damping: float = 1.0, *, curvature_ema: float = 0.95,
         inverse_update_period: int = 5, damping_mode: str = "exact", ekfac: bool = False, mc_samples: int = 0,
         l2_reg: float = 0.0, momentum: float = 0.0, norm_constraint: float | None = None
         ) -> optax.GradientTransformationExtraArgs:
    """K-FAC (Martens & Grosse 2015) and EKFAC (George et al. 2018) as an optax transformation.

        update(grads, state, params=None, *, factors, step=None) -> (updates, state)

    ``step`` (an unbatched integer scalar, equal to ``state.count``) decides the refresh in
    place of ``state.count``: give it under ``vmap`` (see :func:`with_shared_step`).

    Per layer, with ``Ḡ = [∂W; ∂bᵀ]`` ``(d_{l−1}+1, d_l)`` and averaged factors ``A``, ``G``:

    - ``damping_mode="exact"``: ``(A ⊗ G + λI)⁻¹ vec Ḡ = Q_A [(Q_Aᵀ Ḡ Q_G) / (a gᵀ + λ)] Q_Gᵀ``
      from the eigendecompositions ``A = Q_A diag(a) Q_Aᵀ``, ``G = Q_G diag(g) Q_Gᵀ``;
    - ``damping_mode="pi"``: factored (π-)damping, ``(A + π√λ I)⁻¹ Ḡ (G + √λ/π I)⁻¹`` with
      ``π² = (tr A / dim A) / (tr G / dim G)`` (Martens & Grosse 2015, §6.3);
    - ``ekfac=True`` (exact mode only): ``a gᵀ`` is replaced by the running average of
      ``s = Σ_b (Q_Aᵀ ȳ_b)² ⊗ ŵ_b Σ_s (Q_Gᵀ δz^{(s)}_b)²``, the diagonal of the layer's GGN block
      in the Kronecker eigenbasis, restarted from the batch's value when the basis is refreshed.

    and the update is ``−η m`` with ``m ← μ m + c P`` (``μ = momentum``, ``P`` the preconditioned
    gradient, ``c = min(1, √(κ / (η² Pᵀg)))`` with ``κ = norm_constraint``, Ba et al. 2017's
    KL clipping, as kfac-jax's ``norm_constraint``; ``c = 1`` without one). Against kfac-jax
    (``tests/test_kfac_jax.py``, to 1e-12): KFLR is its ``"ggn_exact"``; ``"pi"``/``"exact"`` its
    default/``use_exact_inverses``; its ``l2_reg`` only damps; fnn's ``mse`` is its squared error
    with ``weight=0.5``; its running average is normalised (``Σ ρ^{t−i}F_i / Σ ρ^{t−i}``), fnn's
    starts at the first batch. See the module docstring and the guide for the scaling conventions.

    Cost: the products with the gradient block (``A⁻¹ Ḡ G⁻¹``, or ``Q_Aᵀ Ḡ Q_G``) are taken from
    the factors' low-rank form ``Ḡ = ȳᵀδ`` ``((B, d_{l−1}+1), (B, d_l))`` where that is cheaper
    for the layer's static shapes, and only where ``grads`` equals the pass's own ``Ḡ`` exactly
    (checked each step, ``O(d_{l−1} d_l)``; weight decay, ``l2_reg``, a chain that changes the
    gradient, clipping or noise get the dense product of ``grads``). The two agree to round-off.

    Args:
      learning_rate: ``η``, a number or an optax schedule ``count -> η``.
      damping: ``λ`` (Tikhonov), in mean-risk curvature units, ``λ + l2_reg > 0``; the default 1
        trains digits and moons where 1e-3 diverged (the guide's second-order section).
      curvature_ema: weight of the old factors in their exponential average, in [0, 1).
      inverse_update_period: ``T``: eigendecompose / invert every ``T`` steps.
      damping_mode: ``"exact"`` or ``"pi"``.
      ekfac: the eigenvalue-corrected variant (needs ``damping_mode="exact"``).
      mc_samples: 0 for KFLR factors (the exact loss-Hessian factor), ``M ≥ 1`` for KFAC
        factors from ``M`` sampled targets (the update step then needs a key).
      l2_reg: added to the gradient as ``l2_reg·θ`` and to the damping.
      momentum: ``μ`` in [0, 1).
      norm_constraint: ``κ > 0`` or ``None`` (no clipping).

    Raises ``ValueError`` for a bad setting, and from ``update`` for missing or misshapen factors.
    On a CPU run with ``OPENBLAS_NUM_THREADS=1``: a refresh's Cholesky/``eigh`` are OpenBLAS calls
    whose threads compete with XLA's (see the manual's Benchmarks page, "K-FAC step cost").
    """
    for value, name in [(damping, "damping"), (l2_reg, "l2_reg"), (norm_constraint or 1.0, "norm_constraint")]:
        check_number(value, name)
    check_damping(damping if isinstance(l2_reg, jax.Array) else damping + l2_reg, "fnn.kfac",
                  "the damping (plus l2_reg) is all that keeps (A ⊗ G + λI) invertible where A ⊗ G is singular")
    check_number(curvature_ema, "curvature_ema", upper=1.0)
    check_number(momentum, "momentum", upper=1.0)
    check_static("fnn.kfac", inverse_update_period=inverse_update_period, mc_samples=mc_samples)
    check_positive_int(inverse_update_period, "inverse_update_period")
    check_choice(damping_mode, "damping_mode", DAMPING_MODES)
    if ekfac and damping_mode != "exact":
        raise ValueError("EKFAC rescales in the eigenbasis: use damping_mode='exact' with ekfac=True.")
    if not callable(learning_rate):
        check_number(learning_rate, "learning_rate")
    hyper = dict(learning_rate=learning_rate, damping=damping, curvature_ema=curvature_ema, l2_reg=l2_reg,
                 inverse_update_period=inverse_update_period, damping_mode=damping_mode, ekfac=ekfac,
                 momentum=momentum, norm_constraint=norm_constraint)

    def update(grads, state, params=None, *, factors=None, step=None, **extra):
        return _kfac_update(grads, state, params, factors, hyper, step)

    transformation = optax.GradientTransformationExtraArgs(lambda p: _init(p, damping_mode, ekfac), update)
    return attach(transformation, Curvature("kronecker", mc_samples, eigen_stats=ekfac))


def with_shared_step(optimizer: optax.GradientTransformation, step) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` whose ``update`` is also given ``step=step``, with its curvature kept.

    ``step`` is the number of steps every run has taken, an integer scalar that is *not*
    batched under ``vmap`` (a loop index of the surrounding ``scan``, not a state's ``count``),
    so :func:`kfac`'s refresh every ``inverse_update_period`` steps stays a ``lax.cond``: the
    eigendecompositions run on refresh steps only, for all runs at once. It must equal each
    run's own ``count``, as in :func:`fnn.sweep`, whose runs step together. Raises
    ``ValueError`` for an optimizer that takes no curvature (first-order optax ones take no
    extra keywords).
    """
    curvature = curvature_of(optimizer)
    if curvature is None:
        raise ValueError("with_shared_step is for fnn's second-order optimizers (their update takes step=).")

    def update(grads, state, params=None, **extra):
        return optimizer.update(grads, state, params, step=step, **extra)

    return attach(optax.GradientTransformationExtraArgs(optimizer.init, update), curvature)


class GGNDiagState(NamedTuple):
    """``count`` (steps taken) and ``diag``, the running average of the GGN diagonal."""

    count: Array
    diag: list


@keyword_hints
def ggn_diag_precond(learning_rate=1e-2, damping: float = 0.1, *, decay: float = 0.95, power: float = 1.0,
                     mc_samples: int = 0) -> optax.GradientTransformationExtraArgs:
    """Gradient descent preconditioned by the diagonal of the GGN, an optax transformation.

        update(grads, state, params=None, *, ggn_diag) -> (updates, state)
        D ← decay·D + (1 − decay)·diag G,   D̂ = D / (1 − decay^t),   u = −η g / (D̂ + λ)^power

    element-wise (``D`` starts at zero; ``D̂`` is its bias-corrected value, as Adam's).
    ``diag G`` is the exact GGN diagonal of the mean risk (``mc_samples=0``) or its Monte-Carlo
    estimate from ``M`` sampled targets; weight decay is in ``g`` but not in ``diag G``.
    ``power=1`` is a diagonal Gauss-Newton step, ``power=0.5`` an Adam-like one.

    Args:
      learning_rate: ``η``, a number or an optax schedule.
      damping: ``λ > 0`` keeps the division finite where the curvature vanishes (1e-3 diverged on digits).
      decay: weight of the old average, in [0, 1).
      power: the exponent, ``> 0``.
      mc_samples: 0 (exact) or ``M ≥ 1`` (sampled; the update step then needs a key).
    """
    check_damping(damping, "fnn.ggn_diag_precond", "it divides by D̂ + λ, and D̂ is 0 where the GGN diagonal is")
    check_number(decay, "decay", upper=1.0)
    check_static("fnn.ggn_diag_precond", mc_samples=mc_samples)
    check_number(power, "power")
    if not callable(learning_rate):
        check_number(learning_rate, "learning_rate")

    def init(params):
        _check_layers(params, "fnn.ggn_diag_precond")
        return GGNDiagState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None, *, ggn_diag=None, **extra):
        if ggn_diag is None:
            raise missing_curvature("fnn.ggn_diag_precond", "ggn_diag=")
        count = state.count + 1
        diag = jax.tree.map(lambda old, new: decay * old + (1.0 - decay) * new, state.diag, ggn_diag)
        correction = 1.0 - decay ** count.astype(jax.tree.leaves(grads)[0].dtype)
        rate = _learning_rate(learning_rate, state.count)
        updates = jax.tree.map(lambda g, d: -rate * g / (d / correction + damping) ** power, grads, diag)
        return updates, GGNDiagState(count, diag)

    return attach(optax.GradientTransformationExtraArgs(init, update), Curvature("ggn_diagonal", mc_samples))
