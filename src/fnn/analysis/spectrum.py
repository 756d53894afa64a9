"""Curvature spectra of the empirical risk from the hand-written Hessian- and GGN-vector
products: Lanczos for the top eigenpairs, stochastic Lanczos quadrature for the spectral
density, and Hutchinson / Hutch++ trace estimates (these two in :mod:`fnn.analysis.traces`).

The operator is the Hessian ``∇²R`` (``curvature="hessian"``, by :func:`fnn.hvp`'s
R-operator) or the generalized Gauss-Newton matrix ``G`` (``curvature="ggn"``, by
:func:`fnn.ggn_vp`) of ``R = (1/B) Σ_b ℓ_b`` on the batch ``(x, v)``, over all ``P``
parameters flattened in ``jax.flatten_util.ravel_pytree`` order. One forward pass is
made per call and shared by every product. Eigenvalues are in the units of ``R`` per
parameter unit squared.

Everything is jitted (the network, loss and sizes are static: repeated calls with equal
shapes do not recompile), loops are ``lax.fori_loop``/``lax.map``, and every function
can be ``jax.vmap``-ed over a stacked params pytree (many seeds in one program).

Sources: C. Lanczos (1950); full reorthogonalisation by classical Gram-Schmidt applied
twice (Giraud et al., "Rounding error analysis of the classical Gram-Schmidt
orthogonalization process", 2005); stochastic Lanczos quadrature: Golub & Meurant,
"Matrices, Moments and Quadrature" (2010), Ubaru, Chen & Saad, SIAM J. Matrix Anal.
Appl. 38 (2017), Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net
Optimization via Hessian Eigenvalue Density", ICML 2019 (PyHessian and curvlinops name
the same things ``eigenvalues``/``density``/``trace`` and ``lanczos``).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fnn.core.losses import Loss, get_loss
from fnn.core.network import MLP, Params
from fnn.analysis.quantities import _prepare, check_grad2, ggn_vp_cached, hvp_cached
from fnn.core.validation import check_key, validate

Array = jax.Array
CURVATURES = ("hessian", "ggn")
WHICH = ("LA", "SA", "LM")


class LanczosResult(NamedTuple):
    """The Lanczos decomposition ``A Q_mᵀ ≈ Q_mᵀ T`` after ``m`` steps.

    Attributes:
      alpha: ``(m,)``, the diagonal of the tridiagonal ``T``.
      beta: ``(m,)``, its off-diagonal: ``beta[i]`` couples steps ``i`` and ``i + 1``;
        ``beta[m − 1]`` is the residual norm that bounds the Ritz pairs' residuals.
      basis: ``(m, n)``, the orthonormal Lanczos vectors ``Q_m`` (rows).
    """

    alpha: Array
    beta: Array
    basis: Array


class Eigenpairs(NamedTuple):
    """Ritz pairs of the curvature operator.

    Attributes:
      eigenvalues: ``(k,)``, in the order asked for (``"LA"``: largest first).
      eigenvectors: params' structure with a leading axis ``k``; unit norm over all leaves.
      residuals: ``(k,)``, ``‖A u − λ u‖`` for each pair from the Lanczos bound
        ``|beta_m s_{m,j}|``: small means converged.
    """

    eigenvalues: Array
    eigenvectors: Params
    residuals: Array


class SpectralDensity(NamedTuple):
    """A Gaussian-broadened spectral density from stochastic Lanczos quadrature.

    Attributes:
      grid: ``(num_points,)`` eigenvalue axis.
      density: ``(num_points,)``, ``φ(t) = Σ_probes Σ_j τ_j N(t; θ_j, σ²) / num_probes``,
        which integrates to one (to the Gaussian's tails beyond the grid, ``< 1e-6``).
      nodes: ``(num_probes, m)``, the Gauss quadrature nodes ``θ_j`` (Ritz values) per probe.
      weights: ``(num_probes, m)``, their weights ``τ_j ≥ 0``, summing to one per probe, so
        that ``Σ_j τ_j θ_j^p = qᵀ A^p q`` for the probe's unit start ``q`` and ``p < 2m``,
        whose mean over probes estimates ``tr(A^p) / P``.
      sigma: the broadening ``σ`` (eigenvalue units).
    """

    grid: Array
    density: Array
    nodes: Array
    weights: Array
    sigma: Array


def check_operator(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, curvature: str) -> int:
    """Every check :func:`curvature_matvec` makes, without running the network; returns ``P``."""
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}.")
    loss = get_loss(loss)
    validate(net, loss, params, x, v)
    if jnp.ndim(x) != 2:
        raise ValueError(f"Curvature spectra need inputs of shape (B, d_0), got {jnp.shape(x)}.")
    if curvature == "hessian":
        check_grad2(net)
    if loss.hessian_vp is None:
        raise ValueError(f"Loss {loss.name} has no hand-written Hessian-vector product: give it hessian_vp.")
    return sum(int(jnp.size(a)) for a in jax.tree.leaves(params))


def curvature_matvec(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array,
                     curvature: str = "hessian") -> tuple[Callable[[Array], Array], Array]:
    """The curvature operator of ``R`` on flat vectors, with one forward pass made now.

    Returns ``(matvec, theta)``: ``matvec(u)`` maps ``u`` of shape ``(P,)`` to ``A u`` of
    shape ``(P,)`` in ``ravel_pytree(params)`` order, ``A`` being ``∇²R``
    (``"hessian"``) or ``G`` (``"ggn"``); ``theta`` is ``ravel_pytree(params)[0]``.

    Raises:
      ValueError: an unknown ``curvature``; an activation without ``grad2`` (Hessian) or a
        loss without ``hessian_vp``; params or data that do not fit the network.
    """
    check_operator(net, loss, params, x, v, curvature)
    loss, out, cache = _prepare(net, loss, params, x, v)
    theta, unravel = ravel_pytree(params)
    product = hvp_cached if curvature == "hessian" else ggn_vp_cached

    def matvec(u: Array) -> Array:
        return ravel_pytree(product(net, loss, params, out, v, cache, unravel(u.astype(theta.dtype))))[0]

    return matvec, theta


_SEGMENTS = 8  # the basis is kept as at most this many separate row blocks (see lanczos)


def _project_out(segments: list[Array], w: Array) -> Array:
    """``w − Q Qᵀ w`` (one classical Gram-Schmidt pass) for the rows ``Q`` of ``segments``: one
    GEMV pair per segment, each segment a whole array (no slice of it is copied first). Rows
    not yet filled are zero and contribute nothing."""
    coefs = [s @ w for s in segments]
    for s, c in zip(segments, coefs):
        w = w - c @ s
    return w


def _orthogonalise(segments: list[Array], w: Array) -> Array:
    """One Gram-Schmidt pass against the basis, and a second one only where the first removed
    most of ``w`` (the Daniel-Gragg-Kaufman-Stewart test, ``‖w'‖ < ‖w‖/√2``), which keeps the
    basis orthonormal to working precision ("twice is enough")."""
    once = _project_out(segments, w)
    again = jnp.linalg.norm(once) < jnp.linalg.norm(w) / jnp.sqrt(2).astype(w.dtype)
    return jax.lax.cond(again, lambda u: _project_out(segments, u), lambda u: u, once)


def lanczos(matvec: Callable[[Array], Array], v0: Array, num_iters: int, key: Array | None = None) -> LanczosResult:
    """``num_iters`` steps of Lanczos with full reorthogonalisation on a symmetric operator.

    Args:
      matvec: ``(n,) -> (n,)``, symmetric; traced once per basis segment (at most 8 times).
      v0: ``(n,)``, the start vector (any nonzero scale).
      num_iters: ``m``, ``1 ≤ m ≤ n``.
      key: where an invariant subspace is found (``beta ≈ 0``), the next vector is drawn
        from ``key`` and orthogonalised, and ``beta`` is set to zero (``T`` splits, its
        eigenvalues stay eigenvalues of the operator); defaults to ``jax.random.key(0)``.

    Returns:
      :class:`LanczosResult` with ``alpha``, ``beta`` ``(m,)`` and ``basis`` ``(m, n)``.
      Each step costs one ``matvec``, the three-term recurrence, and one classical
      Gram-Schmidt pass (two GEMVs) against the basis so far (a second pass where the first
      loses more than half of the vector's norm). The basis is held as at most 8 segments of
      ``⌈m/8⌉`` rows, each a loop-carried buffer written in place; a pass reads the filled
      segments and the current one, about ``i + m/16`` rows of ``n`` at step ``i``, so for
      large ``n`` the reorthogonalisation reads about ``m² n`` numbers in all.
    """
    n = v0.shape[-1]
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or not 1 <= num_iters <= n:
        raise ValueError(f"num_iters must be an integer from 1 to the dimension {n}, got {num_iters!r}.")
    if key is None:
        key = jax.random.key(0)
    check_key(key)
    alpha, beta, segments = _lanczos(matvec, v0, num_iters, key)
    return LanczosResult(alpha, beta, jnp.concatenate(segments))


def _lanczos(matvec, v0, m, key):
    """:func:`lanczos` without checks: ``(alpha, beta, segments)``, the basis as a list of
    row blocks (``jnp.concatenate(segments)`` is ``(m, n)``)."""
    n, dtype = v0.shape[-1], v0.dtype
    tol = 100 * jnp.finfo(dtype).eps
    rows = -(-m // _SEGMENTS)
    segments, zero = [], jnp.zeros((), dtype)
    carry = (v0 / jnp.linalg.norm(v0), jnp.zeros_like(v0), zero, jnp.zeros((m,), dtype), jnp.zeros((m,), dtype), zero)
    for lo in range(0, m, rows):
        hi = min(lo + rows, m)
        step = functools.partial(_step, matvec, segments, lo, key, tol)
        seg, *carry = jax.lax.fori_loop(lo, hi, step, (jnp.zeros((hi - lo, n), dtype), *carry))
        segments.append(seg)
    return carry[3], carry[4], segments


def _step(matvec, done, lo, key, tol, i, carry):
    """Lanczos step ``i`` with the basis's filled segments ``done`` and the current one ``seg``
    (rows from ``lo``); ``q``, ``q_prev`` and ``b_prev`` are carried, not read back."""
    seg, q, q_prev, b_prev, alpha, beta, scale = carry
    seg = jax.lax.dynamic_update_slice_in_dim(seg, q[None], i - lo, 0)  # in place
    basis = done + [seg]
    w = matvec(q)
    a = jnp.vdot(q, w)
    w = _orthogonalise(basis, w - a * q - b_prev * q_prev)  # three-term recurrence, then full reorthogonalisation
    b = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.abs(a) + b)
    broke = b <= tol * scale

    def fresh(_):
        r = _orthogonalise(basis, jax.random.normal(jax.random.fold_in(key, i), q.shape, q.dtype))
        return r / jnp.maximum(jnp.linalg.norm(r), jnp.finfo(q.dtype).tiny)  # ~0 only past step n

    nxt = jax.lax.cond(broke, fresh, lambda _: w / jnp.where(broke, 1, b), None)
    b = jnp.where(broke, 0, b)
    return seg, nxt, q, b, alpha.at[i].set(a), beta.at[i].set(b), scale


def _tridiagonal(alpha: Array, beta: Array) -> Array:
    return jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)


def _check_sizes(k: int, num_iters: int, n: int) -> None:
    for name, value in (("k", k), ("num_iters", num_iters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not k <= num_iters <= n:
        raise ValueError(f"Need k ≤ num_iters ≤ the number of parameters: k={k}, num_iters={num_iters}, "
                         f"parameters={n}; lower k or num_iters.")


def top_eigenpairs(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, key: Array, *, k: int = 20,
                   curvature: str = "hessian", num_iters: int | None = None, which: str = "LA") -> Eigenpairs:
    """The ``k`` extreme eigenpairs of the Hessian or GGN of ``R`` on ``(x, v)``, by Lanczos
    with full reorthogonalisation from a Rademacher start drawn from ``key``.

    Args:
      net, loss, params, x, v: the network, loss, parameters and batch (``x`` ``(B, d_0)``).
      key: a JAX PRNG key for the start vector.
      k: how many pairs.
      curvature: ``"hessian"`` (``∇²R``) or ``"ggn"`` (``G``).
      num_iters: Lanczos steps ``m`` (one operator product each), ``k ≤ m ≤ P``; default
        ``min(P, 2k + 10)``. The pairs' ``residuals`` tell whether ``m`` was enough.
      which: ``"LA"`` largest algebraic (the sharpness; default), ``"SA"`` smallest
        algebraic (the most negative curvature), ``"LM"`` largest magnitude.

    Returns:
      :class:`Eigenpairs`: eigenvalues ``(k,)``, eigenvectors (params with a leading axis
      ``k``), residuals ``(k,)``.

    Raises:
      ValueError: a ``k``/``num_iters`` out of range, an unknown ``which`` or
        ``curvature``, a bad key, or what :func:`curvature_matvec` raises.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}.")
    check_key(key)
    n = check_operator(net, loss, params, x, v, curvature)  # outside the jit, without running anything
    num_iters = min(n, 2 * k + 10) if num_iters is None else num_iters
    _check_sizes(k, num_iters, n)
    return _top_eigenpairs(net, loss, curvature, k, num_iters, WHICH.index(which), params, x, v, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _top_eigenpairs(net, loss, curvature, k, num_iters, which, params, x, v, key) -> Eigenpairs:
    matvec, theta = curvature_matvec(net, loss, params, x, v, curvature)
    start_key, restart_key = jax.random.split(key)
    v0 = jax.random.rademacher(start_key, theta.shape, theta.dtype)
    alpha, beta, segments = _lanczos(matvec, v0, num_iters, restart_key)
    ritz, s = jnp.linalg.eigh(_tridiagonal(alpha, beta))
    order = jnp.select([which == 0, which == 1], [-ritz, ritz], -jnp.abs(ritz))  # WHICH's order, traced
    idx = jnp.argsort(order)[:k]
    coef, lo = s[:, idx].T, 0
    vectors = jnp.zeros((k, theta.size), theta.dtype)
    for seg in segments:  # (k, P), segment by segment (the basis is never concatenated)
        vectors, lo = vectors + coef[:, lo:lo + seg.shape[0]] @ seg, lo + seg.shape[0]
    unravel = ravel_pytree(params)[1]
    return Eigenpairs(ritz[idx], jax.vmap(unravel)(vectors), jnp.abs(beta[-1] * s[-1, idx]))


def spectral_density(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, key: Array, *,
                     num_probes: int = 8, num_iters: int = 40, curvature: str = "hessian",
                     num_points: int = 1000, sigma: float | None = None) -> SpectralDensity:
    """The eigenvalue density of the Hessian or GGN of ``R`` by stochastic Lanczos quadrature.

    Each of ``num_probes`` Rademacher probes ``q`` (unit norm, from ``key``) runs
    ``num_iters`` Lanczos steps; the eigen-decomposition ``T = S diag(θ) Sᵀ`` gives Gauss
    quadrature nodes ``θ_j`` and weights ``τ_j = S_{0j}²`` for the probe's spectral measure
    ``Σ_i (u_iᵀq)² δ(t − λ_i)``, whose mean over probes estimates ``(1/P) Σ_i δ(t − λ_i)``.
    The density broadens each node by a Gaussian of width ``sigma`` on ``num_points``
    points from ``min θ − 6σ`` to ``max θ + 6σ``.

    Args:
      key: a JAX PRNG key for the probes.
      num_probes, num_iters: probes and Lanczos steps per probe (``num_probes ×
        num_iters`` operator products in all; ``num_iters ≤ P``).
      sigma: the broadening in eigenvalue units; default ``(max θ − min θ) / 100``.

    Returns:
      :class:`SpectralDensity` (grid, density, nodes, weights, sigma).

    Raises:
      ValueError: counts out of range, a non-positive ``sigma``, or what
        :func:`curvature_matvec` raises.
    """
    check_key(key)
    n = check_operator(net, loss, params, x, v, curvature)
    _check_sizes(num_probes, num_probes, num_probes)
    _check_sizes(2, num_points, num_points)
    _check_sizes(1, num_iters, n)
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be positive (eigenvalue units), got {sigma!r}.")
    return _spectral_density(net, loss, curvature, num_probes, num_iters, num_points, params, x, v, key, sigma)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _spectral_density(net, loss, curvature, num_probes, num_iters, num_points, params, x, v, key, sigma):
    matvec, theta = curvature_matvec(net, loss, params, x, v, curvature)

    def probe(k):
        start, restart = jax.random.split(k)
        alpha, beta, _ = _lanczos(matvec, jax.random.rademacher(start, theta.shape, theta.dtype), num_iters, restart)
        nodes, s = jnp.linalg.eigh(_tridiagonal(alpha, beta))
        return nodes, s[0] ** 2

    nodes, weights = jax.lax.map(probe, jax.random.split(key, num_probes))
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    tiny = jnp.finfo(theta.dtype).tiny
    width = jnp.maximum(hi - lo, jnp.maximum(jnp.abs(hi), tiny) * 1e-3)
    sigma = width / 100 if sigma is None else jnp.asarray(sigma, theta.dtype)
    grid = jnp.linspace(lo - 6 * sigma, hi + 6 * sigma, num_points)
    z = (grid[:, None] - nodes.reshape(-1)[None, :]) / sigma
    kernel = jnp.exp(-0.5 * z * z) / (sigma * jnp.sqrt(2 * jnp.pi))
    density = kernel @ weights.reshape(-1) / num_probes
    return SpectralDensity(grid, density, nodes, weights, sigma)
