"""The Lanczos algorithm with full reorthogonalisation on a symmetric operator given as a
function on flat vectors (what :mod:`fnn.analysis.spectrum` runs on the Hessian or GGN).

How a step is made cheap for a long vector (``n`` in the millions): the basis is held as at
most 8 segments of ``⌈m/8⌉`` rows, separate arrays, each a ``lax.fori_loop`` carry written
in place by ``dynamic_update_slice``, so no step copies the basis and each
reorthogonalisation is one GEMV pair per segment read straight from its buffer (a dynamic
slice of one big basis would be copied before every GEMV, and ``basis.at[i].set`` with a
traced ``i`` rewrites the whole basis through a bounds select). Only the filled segments
and the current one are read. The operator is traced once per segment.

Sources: C. Lanczos (1950); full reorthogonalisation by classical Gram-Schmidt, a second
pass where the Daniel-Gragg-Kaufman-Stewart test asks for it (Daniel et al., Math. Comp. 30,
1976; Giraud et al., "Rounding error analysis of the classical Gram-Schmidt
orthogonalization process", 2005); partial reorthogonalisation: H. D. Simon, "The Lanczos
algorithm with partial reorthogonalization", Math. Comp. 42 (1984); R. M. Larsen, PROPACK
(1998).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fnn.core.validation import check_key

Array = jax.Array


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


REORTHOGONALISE = ("full", "partial")


def lanczos(matvec: Callable[[Array], Array], v0: Array, num_iters: int, key: Array | None = None, *,
            reorthogonalise: str = "full") -> LanczosResult:
    """``num_iters`` steps of Lanczos with full or partial reorthogonalisation on a symmetric
    operator.

    Args:
      matvec: ``(n,) -> (n,)``, symmetric; traced once per basis segment (at most 8 times).
      v0: ``(n,)``, the start vector (any nonzero scale).
      num_iters: ``m``, ``1 ≤ m ≤ n``.
      key: where an invariant subspace is found (``beta ≈ 0``), the next vector is drawn
        from ``key`` and orthogonalised, and ``beta`` is set to zero (``T`` splits, its
        eigenvalues stay eigenvalues of the operator); defaults to ``jax.random.key(0)``.
      reorthogonalise: ``"full"``: every step is orthogonalised against the whole basis, which
        stays orthonormal to working precision. ``"partial"`` (Simon 1984): each step is
        orthogonalised against its own vector only, and against the whole basis only at the
        steps (and the step after) where Simon's recurrence on ``T`` estimates that some
        ``|q_{i+1}ᵀ q_k|`` exceeds ``√ε``; the basis stays semi-orthogonal (``|Q Qᵀ − I| ≲ √ε``),
        which keeps the eigenvalues of ``T`` accurate to working precision (no spurious
        copies) at a fraction of the basis reads. Under ``jax.vmap`` both branches of the
        test run, so partial costs what full does.

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
    if reorthogonalise not in REORTHOGONALISE:
        raise ValueError(f"reorthogonalise must be one of {REORTHOGONALISE}, got {reorthogonalise!r}.")
    alpha, beta, segments = lanczos_segments(matvec, v0, num_iters, key, reorthogonalise == "partial")
    return LanczosResult(alpha, beta, jnp.concatenate(segments))


def lanczos_segments(matvec: Callable[[Array], Array], v0: Array, m: int, key: Array, partial: bool = False) -> tuple:
    """:func:`lanczos` without checks: ``(alpha, beta, segments)``, the basis as a list of
    row blocks (``jnp.concatenate(segments)`` is ``(m, n)``); ``partial``: partial
    reorthogonalisation (see :func:`lanczos`)."""
    n, dtype = v0.shape[-1], v0.dtype
    tol = 100 * jnp.finfo(dtype).eps
    rows = -(-m // _SEGMENTS)
    segments, zero = [], jnp.zeros((), dtype)
    pro = None
    if partial:  # (ω_0 = e_0, ω_{−1} = 0, no forced pass)
        pro = (jnp.zeros((m + 1,), dtype).at[0].set(1), jnp.zeros((m + 1,), dtype), jnp.zeros((), bool))
    carry = (v0 / jnp.linalg.norm(v0), jnp.zeros_like(v0), zero, jnp.zeros((m,), dtype), jnp.zeros((m,), dtype),
             zero, pro)
    for lo in range(0, m, rows):
        hi = min(lo + rows, m)
        step = functools.partial(_step, matvec, tuple(segments), lo, key, tol)
        seg, *carry = jax.lax.fori_loop(lo, hi, step, (jnp.zeros((hi - lo, n), dtype), *carry))
        segments.append(seg)
    return carry[3], carry[4], segments


def _step(matvec, done, lo, key, tol, i, carry):
    """Lanczos step ``i`` with the basis's filled segments ``done`` and the current one ``seg``
    (rows from ``lo``); ``q``, ``q_prev`` and ``b_prev`` are carried, not read back. ``pro``
    is ``None`` (full reorthogonalisation) or partial reorthogonalisation's state."""
    seg, q, q_prev, b_prev, alpha, beta, scale, pro = carry
    seg = jax.lax.dynamic_update_slice_in_dim(seg, q[None], i - lo, 0)  # in place
    basis = [*done, seg]
    w = matvec(q)
    a = jnp.vdot(q, w)
    w = w - a * q - b_prev * q_prev  # the three-term recurrence
    if pro is None:
        w = _orthogonalise(basis, w)  # full reorthogonalisation
    else:
        w, a, pro = _partial(basis, q, w, a, (alpha, beta, b_prev, scale), pro, i)
    b = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.abs(a) + b)
    broke = b <= tol * scale

    def fresh(_):
        r = _orthogonalise(basis, jax.random.normal(jax.random.fold_in(key, i), q.shape, q.dtype))
        return r / jnp.maximum(jnp.linalg.norm(r), jnp.finfo(q.dtype).tiny)  # ~0 only past step n

    nxt = jax.lax.cond(broke, fresh, lambda _: w / jnp.where(broke, 1, b), None)
    if pro is not None:  # a fresh vector is orthogonal to the whole basis
        eps = jnp.finfo(q.dtype).eps
        pro = (jnp.where(broke & (jnp.arange(pro[0].size) <= i), eps, pro[0]), *pro[1:])
    b = jnp.where(broke, 0, b)
    return seg, nxt, q, b, alpha.at[i].set(a), beta.at[i].set(b), scale, pro


def _partial(basis, q, w, a, coefs, pro, i):
    """Partial reorthogonalisation (Simon 1984) of the three-term residual ``w`` at step ``i``:
    ``w`` is made orthogonal to ``q`` (a dot product; ``a`` corrected), then Simon's
    recurrence estimates ``ω_k ≈ q_{i+1}ᵀ q_k`` from ``T`` alone; where some ``|ω_k|`` exceeds
    ``√ε`` the residual is orthogonalised against the whole basis, at this step and the next,
    and the estimates are reset to ``ε``. ``pro = (ω_i, ω_{i−1}, force)``, ``ω`` of length
    ``m + 1``. Returns ``(w, a, pro)``."""
    alpha, beta, b_prev, scale = coefs
    om, om_prev, force = pro
    eps = jnp.finfo(w.dtype).eps
    c = jnp.vdot(q, w)
    w, a = w - c * q, a + c
    b = jnp.linalg.norm(w)
    zero = jnp.zeros((1,), w.dtype)
    beta_k = jnp.concatenate([beta, zero])  # β_k couples q_k and q_{k+1}
    alpha_k = jnp.concatenate([alpha, zero])
    raw = (beta_k * jnp.concatenate([om[1:], zero]) + (alpha_k - a) * om
           + jnp.concatenate([zero, beta_k[:-1] * om[:-1]]) - b_prev * om_prev)
    theta = eps * jnp.maximum(scale, jnp.abs(a) + b)  # Simon's rounding term ε‖A‖
    new = (raw + jnp.where(raw < 0, -theta, theta)) / jnp.maximum(b, jnp.finfo(w.dtype).tiny)
    k = jnp.arange(om.size)
    new = jnp.where(k < i, new, jnp.where(k == i, eps, jnp.where(k == i + 1, 1, 0)).astype(w.dtype))
    again = force | (jnp.max(jnp.where(k < i, jnp.abs(new), 0)) > jnp.sqrt(eps))
    w = jax.lax.cond(again, lambda u: _orthogonalise(basis, u), lambda u: u, w)
    new = jnp.where(again & (k < i), eps, new)
    return w, a, (new, om, again & ~force)


def tridiagonal(alpha: Array, beta: Array) -> Array:
    """The symmetric tridiagonal ``T`` ``(m, m)`` of a Lanczos run."""
    return jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
