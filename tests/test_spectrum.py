"""Curvature spectra (fnn.spectrum, fnn.traces) against dense Hessians and GGNs from jax.hessian
and jax.jacfwd on small networks (float64): Lanczos eigenpairs, the quadrature behind the
spectral density, the trace estimators' convergence rates, and jit/vmap equal to the plain call."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import fnn
from helpers import targets_for


def _setup(loss_name="softmax_cross_entropy", batch=7, seed=0):
    net = fnn.MLP((4, 6, 5, 3), ("tanh", "softplus", "identity"))
    loss = fnn.get_loss(loss_name)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = fnn.init(k1, net, "glorot", dtype=jnp.float64)
    x = jax.random.normal(k2, (batch, 4), jnp.float64)
    return net, loss, params, x, targets_for(loss, k3, batch, 3, jnp.float64)


@functools.partial(jax.jit, static_argnums=(0, 1, 5))
def _dense(net, loss, params, x, v, curvature):
    """The dense Hessian (jax.hessian of R) or GGN (Jᵀ H J / B from jax.jacfwd and jax.hessian)."""
    flat, unravel = ravel_pytree(params)
    f = lambda fl: fnn.forward(net, unravel(fl), x)
    if curvature == "hessian":
        return jax.hessian(lambda fl: jnp.mean(loss.value(f(fl), v)))(flat)
    jac = jax.jacfwd(f)(flat)
    hess = jax.vmap(jax.hessian(lambda y, vb: loss.value(y[None], vb[None])[0]))(f(flat), v)
    return jnp.einsum("bip,bij,bjq->pq", jac, hess, jac) / x.shape[0]


@pytest.mark.parametrize("loss_name", ["mse", "softmax_cross_entropy"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_lanczos_eigenpairs_match_the_dense_eigendecomposition(loss_name, curvature, x64):
    net, loss, params, x, v = _setup(loss_name)
    a = np.asarray(_dense(net, loss, params, x, v, curvature))
    want, vecs = np.linalg.eigh(a)
    n = a.shape[0]
    res = fnn.top_eigenpairs(net, loss, params, x, v, jax.random.key(1), k=6, curvature=curvature, num_iters=n)
    got = np.asarray(res.eigenvalues)
    np.testing.assert_allclose(got, want[::-1][:6], rtol=1e-6)
    u = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(res.eigenvectors))  # (k, P)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-10)
    residual = np.linalg.norm(u @ a - got[:, None] * u, axis=1)
    assert np.all(residual <= 1e-8 * np.abs(want).max()), residual
    # Eigenvectors of simple, well-separated eigenvalues are the dense ones up to sign.
    gaps = np.minimum(np.abs(np.diff(want[::-1][:7]))[:6], np.abs(np.diff(want[::-1][:7], prepend=np.inf))[:6])
    separated = gaps > 1e-3 * np.abs(want).max()
    overlap = np.abs(np.sum(u * vecs[:, ::-1][:, :6].T, axis=1))
    np.testing.assert_allclose(overlap[separated], 1.0, atol=1e-8)


def test_which_picks_the_other_ends_and_residuals_are_honest(x64):
    net, loss, params, x, v = _setup()
    a = np.asarray(_dense(net, loss, params, x, v, "hessian"))
    want = np.linalg.eigvalsh(a)
    n = a.shape[0]
    smallest = fnn.top_eigenpairs(net, loss, params, x, v, jax.random.key(1), k=3, num_iters=n, which="SA")
    np.testing.assert_allclose(smallest.eigenvalues, want[:3], rtol=1e-6)
    assert want[0] < 0  # the Hessian is indefinite here, so "SA" and "LA" differ
    magnitude = fnn.top_eigenpairs(net, loss, params, x, v, jax.random.key(1), k=3, num_iters=n, which="LM")
    np.testing.assert_allclose(magnitude.eigenvalues, want[np.argsort(-np.abs(want))][:3], rtol=1e-6)
    # Fewer steps than parameters: the reported residual is the true ‖A u − λ u‖.
    part = fnn.top_eigenpairs(net, loss, params, x, v, jax.random.key(1), k=4, num_iters=20)
    u = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(part.eigenvectors))
    true = np.linalg.norm(u @ a - np.asarray(part.eigenvalues)[:, None] * u, axis=1)
    np.testing.assert_allclose(part.residuals, true, rtol=1e-6, atol=1e-12)
    assert true[0] < 1e-6 < true[-1]  # the top pair has converged in 20 steps, the 4th not yet


def test_lanczos_is_gauss_quadrature_for_the_start_vector(x64):
    """Σ_j τ_j θ_j^p = q̂ᵀ A^p q̂ for p < 2m (Golub & Meurant), the identity SLQ rests on."""
    net, loss, params, x, v = _setup()
    matvec, theta = fnn.spectrum.curvature_matvec(net, loss, params, x, v, "hessian")
    q = jax.random.normal(jax.random.key(3), theta.shape, theta.dtype)
    m = 5
    res = fnn.lanczos(matvec, q, m)
    np.testing.assert_allclose(res.basis @ res.basis.T, np.eye(m), atol=1e-12)
    # m = P: the basis (8 segments of 11 rows, the last one partly filled) is orthonormal and
    # reduces A to T, Q A Qᵀ = T, to working precision.
    full = fnn.lanczos(matvec, q, theta.size)
    qa = np.asarray(jax.vmap(matvec)(full.basis))
    np.testing.assert_allclose(full.basis @ full.basis.T, np.eye(theta.size), atol=1e-12)
    t_full = np.diag(full.alpha) + np.diag(full.beta[:-1], 1) + np.diag(full.beta[:-1], -1)
    np.testing.assert_allclose(np.asarray(full.basis) @ qa.T, t_full, atol=1e-12 * np.abs(full.alpha).max())
    t = np.diag(res.alpha) + np.diag(res.beta[:-1], 1) + np.diag(res.beta[:-1], -1)
    nodes, s = np.linalg.eigh(t)
    a = np.asarray(_dense(net, loss, params, x, v, "hessian"))
    qh = np.asarray(q) / np.linalg.norm(q)
    for p in range(2 * m):
        np.testing.assert_allclose(np.sum(s[0] ** 2 * nodes ** p), qh @ np.linalg.matrix_power(a, p) @ qh,
                                   rtol=1e-9, atol=1e-14)


def test_spectral_density_integrates_to_one_and_has_the_dense_moments(x64):
    net, loss, params, x, v = _setup()
    a = np.asarray(_dense(net, loss, params, x, v, "hessian"))
    lam = np.linalg.eigvalsh(a)
    n = a.shape[0]
    probes = 64
    d = fnn.spectral_density(net, loss, params, x, v, jax.random.key(4), num_probes=probes, num_iters=n)
    grid, phi, sigma = np.asarray(d.grid), np.asarray(d.density), float(d.sigma)
    np.testing.assert_allclose(np.trapezoid(phi, grid), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sum(d.weights, axis=1), 1.0, rtol=1e-12)
    # With m = P steps, every node that carries weight is an eigenvalue.
    heavy = np.asarray(d.nodes)[np.asarray(d.weights) > 1e-8]
    assert np.max(np.min(np.abs(heavy[:, None] - lam[None, :]), axis=1)) < 1e-8 * np.abs(lam).max()
    # Moments of the broadened density are the quadrature's, plus σ² for the second.
    m1 = np.mean(np.sum(d.weights * d.nodes, 1))
    m2 = np.mean(np.sum(d.weights * d.nodes ** 2, 1))
    np.testing.assert_allclose(np.trapezoid(grid * phi, grid), m1, atol=1e-6 * np.abs(lam).max())
    np.testing.assert_allclose(np.trapezoid(grid ** 2 * phi, grid), m2 + sigma ** 2, rtol=1e-6)
    # Broadened again from the same quadrature: its own σ, the defaults give the same density back.
    wide = d.broaden(sigma=4 * sigma, num_points=3000)
    assert wide.grid.shape == (3000,) and float(wide.sigma) == 4 * sigma
    np.testing.assert_allclose(np.trapezoid(wide.grid ** 2 * wide.density, wide.grid), m2 + 16 * sigma ** 2, rtol=1e-6)
    np.testing.assert_array_equal(wide.nodes, d.nodes)
    np.testing.assert_allclose(d.broaden().density, phi, rtol=1e-12)
    # ... and they estimate tr(A^p)/P, within 4 standard errors of the Rademacher estimator.
    for p, got in ((1, m1), (2, m2)):
        ap = np.linalg.matrix_power(a, p)
        stderr = np.sqrt(2 * (np.sum(ap ** 2) - np.sum(np.diag(ap) ** 2)) / probes) / n
        assert abs(got - np.trace(ap) / n) < 4 * stderr, (p, got, np.trace(ap) / n, stderr)


def _rmse(estimates, exact):
    return float(np.sqrt(np.mean((np.asarray(estimates) - exact) ** 2)))


def test_trace_estimates_converge_at_their_theoretical_rates(x64):
    net, loss, params, x, v = _setup(batch=32)
    keys = jax.random.split(jax.random.key(5), 300)
    ggn = np.asarray(_dense(net, loss, params, x, v, "ggn"))
    tr = np.trace(ggn)
    variance = 2 * (np.sum(ggn ** 2) - np.sum(np.diag(ggn) ** 2))  # one Rademacher sample's
    plain, pp = {}, {}
    for m in (12, 48):
        est = jax.vmap(lambda k: fnn.hutchinson_trace(net, loss, params, x, v, k, num_samples=m,
                                                      curvature="ggn"))(keys)
        # Unbiased, and the error is √(variance/m): 1/√m. 300 repeats measure it to about ±5%.
        assert abs(float(np.mean(est)) - tr) < 4 * np.sqrt(variance / m / len(keys))
        plain[m] = _rmse(est, tr)
        assert 0.85 < plain[m] / np.sqrt(variance / m) < 1.15, (m, plain[m], np.sqrt(variance / m))
        pp[m] = _rmse(jax.vmap(lambda k: fnn.hutchpp_trace(net, loss, params, x, v, k, num_matvecs=m,
                                                           curvature="ggn"))(keys), tr)
    # Hutch++ on the positive semi-definite GGN: at least 1/m (4× the products, ≤ 1/4 the error)
    # where Hutchinson's 1/√m gives 1/2, and far ahead of Hutchinson at equal products.
    assert pp[48] < pp[12] / 4, pp
    assert pp[48] < plain[48] / 10, (pp, plain)


def test_hutchpp_is_exact_once_the_sketch_spans_the_range(x64):
    net, loss, params, x, v = _setup(batch=4)  # GGN rank ≤ B (C − 1) = 8
    tr = np.trace(np.asarray(_dense(net, loss, params, x, v, "ggn")))
    got = fnn.hutchpp_trace(net, loss, params, x, v, jax.random.key(6), num_matvecs=3 * 8, curvature="ggn")
    np.testing.assert_allclose(got, tr, rtol=1e-10)


def test_jit_and_vmap_over_seeds_equal_the_plain_calls(x64):
    net, loss, _, x, v = _setup()
    seeds = [fnn.init(jax.random.key(s), net, "glorot", dtype=jnp.float64) for s in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *seeds)
    key = jax.random.key(7)
    calls = {
        "eigs": lambda p: fnn.top_eigenpairs(net, loss, p, x, v, key, k=3, num_iters=12),
        "density": lambda p: fnn.spectral_density(net, loss, p, x, v, key, num_probes=2, num_iters=10).broaden(
            num_points=50),
        "hutchinson": lambda p: fnn.hutchinson_trace(net, loss, p, x, v, key, num_samples=5, curvature="ggn"),
        "hutch++": lambda p: fnn.hutchpp_trace(net, loss, p, x, v, key, num_matvecs=9),
    }
    for name, call in calls.items():
        loop = [call(p) for p in seeds]
        together = jax.vmap(call)(stacked)
        for i, one in enumerate(loop):
            for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(jax.tree.map(lambda t: t[i], together))):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)
    jitted = jax.jit(calls["eigs"])(seeds[1])  # inside the user's own jit
    for a, b in zip(jax.tree.leaves(calls["eigs"](seeds[1])), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_repeated_equal_calls_do_not_recompile(x64):
    net, loss, params, x, v = _setup()
    call = lambda p, k: fnn.top_eigenpairs(net, loss, p, x, v, k, k=2, num_iters=8)
    call(params, jax.random.key(0))
    before = fnn.spectrum._top_eigenpairs._cache_size()
    other = jax.tree.map(lambda a: a + 1, params)
    call(other, jax.random.key(1))
    assert fnn.spectrum._top_eigenpairs._cache_size() == before


@pytest.mark.parametrize("call,message", [
    (lambda a: fnn.top_eigenpairs(*a, k=3, curvature="fisher"), "curvature must be one of"),
    (lambda a: fnn.top_eigenpairs(*a, k=5, num_iters=4), "k ≤ num_iters"),
    (lambda a: fnn.top_eigenpairs(*a, k=2, num_iters=10_000), "number of parameters"),
    (lambda a: fnn.top_eigenpairs(*a, k=0), "k must be a positive integer"),
    (lambda a: fnn.top_eigenpairs(*a, which="BE"), "which must be one of"),
    (lambda a: fnn.spectral_density(*a, num_probes=1, num_iters=3).broaden(sigma=0.0), "sigma must be positive"),
    (lambda a: fnn.spectral_density(*a, num_probes=1, num_iters=3).broaden(num_points=1), "num_points must be an integer"),
    (lambda a: fnn.hutchinson_trace(*a, num_samples=0), "num_samples must be an integer"),
    (lambda a: fnn.hutchpp_trace(*a, num_matvecs=2), "num_matvecs must be an integer"),
    (lambda a: fnn.hutchpp_trace(*a[:5], 0), "PRNG key"),
])
def test_bad_arguments_get_one_clear_line(call, message, x64):
    net, loss, params, x, v = _setup()
    with pytest.raises(ValueError, match=message):
        call((net, loss, params, x, v, jax.random.key(0)))


def test_hessian_needs_second_derivatives_and_the_ggn_does_not():
    cube = fnn.Activation("cube", lambda z: z ** 3, lambda z, y: 3 * z ** 2)
    net = fnn.MLP((2, 3, 1), (cube, "identity"))
    params = fnn.init(jax.random.key(0), net, "glorot")
    x, v = jnp.ones((4, 2)), jnp.ones((4, 1))
    with pytest.raises(ValueError, match="second derivative of activation cube"):
        fnn.top_eigenpairs(net, "mse", params, x, v, jax.random.key(0), k=1)
    assert np.isfinite(fnn.hutchinson_trace(net, "mse", params, x, v, jax.random.key(0), num_samples=2,
                                            curvature="ggn"))


def test_partial_reorthogonalisation_keeps_the_basis_semi_orthogonal_and_the_top_eigenvalues(x64):
    # A spectrum with well-separated large eigenvalues (they converge first and make plain
    # Lanczos lose orthogonality) above a cluster: partial reorthogonalisation must keep
    # |QᵀQ − I| ≤ √ε and give the top 20 as full reorthogonalisation does.
    rng = np.random.default_rng(0)
    n, m = 300, 120
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    lam = np.concatenate([np.linspace(100, 10, 10), np.linspace(5, 4.5, 20), rng.normal(size=n - 30)])
    a = jnp.asarray((q * lam) @ q.T)
    v0 = jnp.asarray(rng.normal(size=n))
    top = {}
    for mode in ("full", "partial"):
        res = fnn.lanczos(lambda u: a @ u, v0, m, reorthogonalise=mode)
        gram = np.asarray(res.basis @ res.basis.T)
        assert np.abs(gram - np.eye(m)).max() <= np.sqrt(np.finfo(np.float64).eps)
        top[mode] = np.sort(np.linalg.eigvalsh(np.asarray(fnn.spectrum.tridiagonal(res.alpha, res.beta))))[::-1][:20]
    np.testing.assert_allclose(top["partial"], np.sort(lam)[::-1][:20], rtol=1e-10)
    np.testing.assert_allclose(top["partial"], top["full"], rtol=1e-10)
    with pytest.raises(ValueError, match="reorthogonalise must be one of"):
        fnn.lanczos(lambda u: a @ u, v0, m, reorthogonalise="none")
