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

The Lanczos algorithm itself (full reorthogonalisation, the basis in loop-carried segments)
is :func:`fnn.analysis.krylov.lanczos`, re-exported here and as :func:`fnn.lanczos`.

Sources: C. Lanczos (1950); stochastic Lanczos quadrature: Golub & Meurant,
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
from fnn.analysis.quantities import _prepare, check_grad2
from fnn.analysis.linearised import ggn_vp_linear, hvp_linear, linearise
from fnn.analysis.krylov import LanczosResult, lanczos, lanczos_segments, tridiagonal  # noqa: F401
from fnn.core import linalg
from fnn.core.validation import check_key, validate

Array = jax.Array
CURVATURES = ("hessian", "ggn")
WHICH = ("LA", "SA", "LM")


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

    def broaden(self, sigma: float | None = None, num_points: int = 1000) -> SpectralDensity:
        """The same quadrature (``nodes``, ``weights``) broadened by another Gaussian width.

        Args:
          sigma: ``σ`` in eigenvalue units; default ``(max θ − min θ) / 100``, what
            :func:`spectral_density` returns.
          num_points: grid points, from ``min θ − 6σ`` to ``max θ + 6σ``.

        Raises:
          ValueError: a non-positive ``sigma``, or ``num_points`` not an integer ``≥ 2``.
        """
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
            raise ValueError(f"num_points must be an integer ≥ 2, got {num_points!r}.")
        if sigma is not None and not sigma > 0:
            raise ValueError(f"sigma must be positive (eigenvalue units), got {sigma!r}.")
        return _broaden(self.nodes, self.weights, sigma, num_points)


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
    """The curvature operator of ``R`` on flat vectors, with one forward pass and the
    vector-free part of the product (:func:`fnn.analysis.linearised.linearise`: the primal
    backward messages and the activations' derivatives) made now.

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
    hessian = curvature == "hessian"
    lin = linearise(net, loss, params, out, v, cache, second_order=hessian)
    product = hvp_linear if hessian else ggn_vp_linear

    def matvec(u: Array) -> Array:
        return _ravel(product(loss, params, out, v, cache, lin, unravel(u.astype(theta.dtype))), theta)

    return matvec, theta


def _ravel(tree: Params, like: Array) -> Array:
    """``ravel_pytree(tree)[0]``, written leaf by leaf into one buffer by in-place
    ``dynamic_update_slice``. XLA on CPU fuses a ``concatenate`` with its producers (the
    weight-gradient sums, the bias's column sum) into one loop fusion that took 5-7 times the
    whole Hessian-vector product inside a ``fori_loop`` (measured at 784-512-512-10, B = 256)."""
    flat, offset = jnp.zeros_like(like), 0
    for leaf in jax.tree.leaves(tree):
        flat = jax.lax.dynamic_update_slice(flat, jnp.ravel(leaf).astype(like.dtype), (offset,))
        offset += leaf.size
    return flat


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
    with partial reorthogonalisation (:func:`fnn.lanczos` with ``reorthogonalise="partial"``:
    the basis semi-orthogonal, the eigenvalues as accurate as with full reorthogonalisation,
    far fewer passes over the basis) from a Rademacher start drawn from ``key``.

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
    return _top_eigenpairs(net, loss, curvature, (k, num_iters, True), WHICH.index(which), params, x, v, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _top_eigenpairs(net, loss, curvature, sizes, which, params, x, v, key) -> Eigenpairs:
    k, num_iters, partial = sizes
    matvec, theta = curvature_matvec(net, loss, params, x, v, curvature)
    start_key, restart_key = jax.random.split(key)
    v0 = jax.random.rademacher(start_key, theta.shape, theta.dtype)
    alpha, beta, segments = lanczos_segments(matvec, v0, num_iters, restart_key, partial)
    ritz, s = linalg.eigh(tridiagonal(alpha, beta))
    order = jnp.select([which == 0, which == 1], [-ritz, ritz], -jnp.abs(ritz))  # WHICH's order, traced
    idx = jnp.argsort(order)[:k]
    coef, lo = s[:, idx].T, 0
    vectors = jnp.zeros((k, theta.size), theta.dtype)
    for seg in segments:  # (k, P), segment by segment (the basis is never concatenated)
        vectors, lo = vectors + coef[:, lo:lo + seg.shape[0]] @ seg, lo + seg.shape[0]
    vectors = vectors / jnp.linalg.norm(vectors, axis=1, keepdims=True)  # unit (a semi-orthogonal basis: ~1)
    unravel = ravel_pytree(params)[1]
    return Eigenpairs(ritz[idx], jax.vmap(unravel)(vectors), jnp.abs(beta[-1] * s[-1, idx]))


def spectral_density(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, key: Array, *,
                     num_probes: int = 8, num_iters: int = 40, curvature: str = "hessian") -> SpectralDensity:
    """The eigenvalue density of the Hessian or GGN of ``R`` by stochastic Lanczos quadrature.

    Each of ``num_probes`` Rademacher probes ``q`` (unit norm, from ``key``) runs
    ``num_iters`` Lanczos steps; the eigen-decomposition ``T = S diag(θ) Sᵀ`` gives Gauss
    quadrature nodes ``θ_j`` and weights ``τ_j = S_{0j}²`` for the probe's spectral measure
    ``Σ_i (u_iᵀq)² δ(t − λ_i)``, whose mean over probes estimates ``(1/P) Σ_i δ(t − λ_i)``.
    The density broadens each node by a Gaussian of width ``σ = (max θ − min θ) / 100`` on
    1000 points from ``min θ − 6σ`` to ``max θ + 6σ``; :meth:`SpectralDensity.broaden` redraws
    it with another ``σ`` or grid from the same nodes and weights, without operator products.

    Args:
      key: a JAX PRNG key for the probes.
      num_probes, num_iters: probes and Lanczos steps per probe (``num_probes ×
        num_iters`` operator products in all; ``num_iters ≤ P``).

    Returns:
      :class:`SpectralDensity` (grid, density, nodes, weights, sigma).

    Raises:
      ValueError: counts out of range, or what :func:`curvature_matvec` raises.

    Example: ``fnn.spectral_density(net, loss, params, x, v, key).broaden(sigma=0.05)``.
    """
    check_key(key)
    n = check_operator(net, loss, params, x, v, curvature)
    _check_sizes(num_probes, num_probes, num_probes)
    _check_sizes(1, num_iters, n)
    nodes, weights = _quadrature(net, loss, curvature, num_probes, num_iters, params, x, v, key)
    return _broaden(nodes, weights, None, 1000)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _quadrature(net, loss, curvature, num_probes, num_iters, params, x, v, key):
    """Gauss quadrature nodes and weights ``(num_probes, num_iters)`` of each probe's measure."""
    matvec, theta = curvature_matvec(net, loss, params, x, v, curvature)

    def probe(k):
        start, restart = jax.random.split(k)
        alpha, beta, _ = lanczos_segments(matvec, jax.random.rademacher(start, theta.shape, theta.dtype), num_iters, restart)
        nodes, s = linalg.eigh(tridiagonal(alpha, beta))
        return nodes, s[0] ** 2

    return jax.lax.map(probe, jax.random.split(key, num_probes))


@functools.partial(jax.jit, static_argnums=(3,))
def _broaden(nodes, weights, sigma, num_points) -> SpectralDensity:
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    tiny = jnp.finfo(nodes.dtype).tiny
    width = jnp.maximum(hi - lo, jnp.maximum(jnp.abs(hi), tiny) * 1e-3)
    sigma = width / 100 if sigma is None else jnp.asarray(sigma, nodes.dtype)
    grid = jnp.linspace(lo - 6 * sigma, hi + 6 * sigma, num_points)
    z = (grid[:, None] - nodes.reshape(-1)[None, :]) / sigma
    kernel = jnp.exp(-0.5 * z * z) / (sigma * jnp.sqrt(2 * jnp.pi))
    density = kernel @ weights.reshape(-1) / nodes.shape[0]
    return SpectralDensity(grid, density, nodes, weights, sigma)
