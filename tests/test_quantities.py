"""Per-example gradients, moments, GGN diagonal, KFAC factors and Hessian/GGN-vector products from the
hand-written backward pass, against jax.vmap(jax.grad), jax.jacfwd, jax.hessian and jax.jvp (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import fnn
from helpers import assert_rel_close, targets_for

HIDDEN = ("sigmoid", "tanh", "relu", "leaky_relu(0.2)", "softplus", "step")
LOSSES = ["mse", "mae", "huber(0.5)", "mape", "binary_cross_entropy", "softmax_cross_entropy"]


def _setup(loss_name, batch, seed=0, out_dim=3):
    """A 4-layer network whose three hidden activations rotate with the loss, so that the losses
    between them meet every activation (step last, as its zero derivative silences what is below)."""
    loss = fnn.get_loss(loss_name)
    i = LOSSES.index(loss_name)
    acts = sorted((HIDDEN[(i + k) % len(HIDDEN)] for k in range(3)), key=lambda a: a == "step")[::-1]
    sizes = (4, 5, 4, 5, out_dim)
    net = fnn.MLP(sizes, (*acts, "identity"))
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = fnn.init(k1, net, "glorot", dtype=jnp.float64)
    x = jax.random.normal(k2, (batch, sizes[0]), jnp.float64)
    v = targets_for(loss, k3, batch, out_dim, jnp.float64)
    return net, loss, params, x, v


def _instance(net, loss, xb, vb):
    return lambda p: loss.value(fnn.forward(net, p, xb[None]), vb[None])[0]


def _ggn_matrix(net, loss, params, x, v):
    flat, unravel = ravel_pytree(params)
    f = lambda fl: fnn.forward(net, unravel(fl), x)
    jac = jax.jacfwd(f)(flat)  # (B, d_L, P)
    hess = jax.vmap(jax.hessian(lambda y, vb: loss.value(y[None], vb[None])[0]))(f(flat), v)
    return jnp.einsum("bip,bij,bjq->pq", jac, hess, jac) / x.shape[0], unravel


@pytest.mark.parametrize("loss_name,batch", [(name, 5) for name in LOSSES] + [("mse", 1), ("softmax_cross_entropy", 1)])
def test_every_quantity_matches_autodiff(loss_name, batch, x64):
    net, loss, params, x, v = _setup(loss_name, batch)
    ref = jax.vmap(lambda xb, vb: jax.grad(_instance(net, loss, xb, vb))(params))(x, v)
    assert_rel_close(fnn.per_example_grads(net, loss, params, x, v), ref, 1e-12)

    norms = np.sqrt(sum(np.sum(np.asarray(a).reshape(batch, -1) ** 2, 1) for a in jax.tree.leaves(ref)))
    np.testing.assert_allclose(fnn.per_example_grad_norms(net, loss, params, x, v), norms, rtol=1e-12, atol=1e-300)
    per_layer = fnn.per_example_grad_norms(net, loss, params, x, v, per_layer=True)
    for got, want in zip(per_layer, ref):
        for k in ("W", "b"):
            np.testing.assert_allclose(got[k], np.linalg.norm(np.asarray(want[k]).reshape(batch, -1), axis=1),
                                       rtol=1e-12, atol=1e-300)

    moments = fnn.gradient_moments(net, loss, params, x, v)
    assert_rel_close(moments["mean"], jax.tree.map(lambda a: a.mean(0), ref), 1e-12)
    assert_rel_close(moments["sum_grad_squared"], jax.tree.map(lambda a: (a ** 2).sum(0), ref), 1e-12)
    # The variance is a difference of second moments: its rounding error scales with E[g²], not
    # with the variance itself (which is exactly 0 for one example).
    for got, want, second in zip(jax.tree.leaves(moments["variance"]), jax.tree.leaves(ref),
                                 jax.tree.leaves(moments["sum_grad_squared"])):
        np.testing.assert_allclose(got, np.asarray(want).var(0), rtol=0, atol=1e-13 * float(np.max(second)) / batch)
    assert_rel_close(moments["mean"], fnn.value_and_grad(net, loss, params, x, v)[1], 1e-12)

    ggn, unravel = _ggn_matrix(net, loss, params, x, v)
    assert_rel_close(fnn.ggn_diagonal(net, loss, params, x, v), unravel(jnp.diag(ggn)), 1e-12)
    vector = jax.tree.map(lambda a: jax.random.normal(jax.random.key(7), a.shape, a.dtype), params)
    u = ravel_pytree(vector)[0]
    assert_rel_close(fnn.ggn_vp(net, loss, params, x, v, vector), unravel(ggn @ u), 1e-11)
    risk = lambda p: fnn.risk(loss, fnn.forward(net, p, x), v)
    assert_rel_close(fnn.hvp(net, loss, params, x, v, vector), jax.jvp(jax.grad(risk), (params,), (vector,))[1],
                     1e-11)


@pytest.mark.parametrize("loss_name", ["mse", "softmax_cross_entropy", "binary_cross_entropy"])
def test_kflr_factors_are_their_definitions_and_exact_for_one_example(loss_name, x64):
    net, loss, params, x, v = _setup(loss_name, 5)
    factors = fnn.kfac_factors(net, loss, params, x, v)
    _, cache = fnn.forward_with_cache(net, params, x)
    out = fnn.forward(net, params, x)
    columns = jnp.moveaxis(loss.hessian_factor(out, v), -1, 0)  # (k, B, d_L): S S^T = H
    for l, f in enumerate(factors):
        y = cache.inputs[l]
        np.testing.assert_allclose(f["A"], y.T @ y / 5, rtol=1e-12)
        # G_l from the δz of each factor column, by jax.vjp of z_l -> output, then summed over columns.
        deltas = []
        for c in columns:
            def head(z, l=l):  # the network above z_l
                a = net.activations[l].fn(z)
                if l == net.num_layers - 1:
                    return a
                rest = fnn.MLP(net.sizes[l + 1:], net.activations[l + 1:])
                return fnn.forward(rest, params[l + 1:], a)
            _, vjp = jax.vjp(head, cache.pre_activations[l])
            deltas.append(vjp(c)[0])
        g = sum(d.T @ d for d in deltas) / 5
        np.testing.assert_allclose(f["G"], g, rtol=1e-10, atol=1e-14)
    # For one example the W-blocks of the GGN are exactly A ⊗ G.
    net, loss, params, x, v = _setup(loss_name, 1)
    ggn, _ = _ggn_matrix(net, loss, params, x, v)
    factors = fnn.kfac_factors(net, loss, params, x, v)
    start = 0
    for layer, f in zip(params, factors):
        n = layer["W"].size
        np.testing.assert_allclose(ggn[start:start + n, start:start + n], jnp.kron(f["A"], f["G"]),
                                   rtol=1e-10, atol=1e-14)
        start += n + layer["b"].size


@pytest.mark.parametrize("loss_name", ["mse", "softmax_cross_entropy", "binary_cross_entropy"])
def test_monte_carlo_ggn_is_unbiased_and_converges(loss_name, x64):
    net, loss, params, x, v = _setup(loss_name, 4)
    exact = ravel_pytree(fnn.ggn_diagonal(net, loss, params, x, v))[0]
    draw = lambda key: ravel_pytree(fnn.ggn_diagonal(net, loss, params, x, v, mc_samples=8, key=key))[0]
    draws = jax.vmap(draw)(jax.random.split(jax.random.key(0), 60))  # 60 independent estimates
    mean, se = draws.mean(0), draws.std(0, ddof=1) / np.sqrt(len(draws))
    live = se > 1e-12
    z = np.asarray((mean - exact)[live] / se[live])
    # Unbiased: the z-scores of the 60-draw means are standard normal-ish; a bias of a few
    # standard errors anywhere fails this (the chance of |z| > 5 somewhere by luck is tiny).
    assert np.abs(z).max() < 5, np.abs(z).max()
    err = lambda m: float(jnp.linalg.norm(ravel_pytree(fnn.ggn_diagonal(
        net, loss, params, x, v, mc_samples=m, key=jax.random.key(99)))[0] - exact))
    assert err(4000) < err(10) / 4  # error falls like 1/√M: 20× more accurate in expectation


def test_conventions_and_bad_input(x64):
    net, loss, params, x, v = _setup("mse", 3)
    with pytest.raises(ValueError, match="not a negative log-likelihood"):
        fnn.ggn_diagonal(net, "mae", params, x, v, mc_samples=3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="must be a JAX PRNG key"):
        fnn.ggn_diagonal(net, loss, params, x, v, mc_samples=3)
    with pytest.raises(ValueError, match="mc_samples must be a non-negative integer"):
        fnn.kfac_factors(net, loss, params, x, v, mc_samples=-1)
    with pytest.raises(ValueError, match="vector must be shaped like params"):
        fnn.hvp(net, loss, params, x, v, params[:-1])
    with pytest.raises(ValueError, match=r"shape \(B, d_0\)"):
        fnn.per_example_grads(net, loss, params, x[0], v[0])
    cube = fnn.Activation("cube", lambda z: z ** 3, lambda z, y: 3 * z ** 2)
    custom = fnn.MLP((4, 3, 3), (cube, "identity"))
    with pytest.raises(ValueError, match="second derivative of activation cube"):
        fnn.hvp(custom, loss, fnn.init(jax.random.key(0), custom), x, v, fnn.init(jax.random.key(1), custom))


def test_quantities_jit_and_vmap():
    net, loss, params, x, v = _setup("softmax_cross_entropy", 6, out_dim=3)
    f = jax.jit(fnn.per_example_grad_norms, static_argnums=(0, 1))
    np.testing.assert_allclose(f(net, loss, params, x, v), fnn.per_example_grad_norms(net, loss, params, x, v),
                               rtol=1e-6)
    # vmap over two batches gives each batch's norms.
    xs, vs = x.reshape(2, 3, -1), v.reshape(2, 3)
    both = jax.vmap(lambda a, b: fnn.per_example_grad_norms(net, loss, params, a, b))(xs, vs)
    np.testing.assert_allclose(both[1], fnn.per_example_grad_norms(net, loss, params, xs[1], vs[1]), rtol=1e-6)



def test_under_plain_jit_every_quantity_takes_a_loss_object_and_says_so(x64):
    """jax.jit(f) cannot take the loss's name (a str argument is JAX's TypeError): a Loss object
    (fnn.get_loss) or the name bound by functools.partial gives the eager values, and every
    docstring says so."""
    import functools

    net, loss, params, x, v = _setup("softmax_cross_entropy", 3, out_dim=3)
    vector = jax.tree.map(jnp.ones_like, params)
    calls = {fnn.per_example_grads: (), fnn.per_example_grad_norms: (), fnn.gradient_moments: (),
             fnn.ggn_diagonal: (), fnn.kfac_factors: (), fnn.ggn_vp: (vector,), fnn.hvp: (vector,),
             fnn.quantities.diagnostics: ()}
    for f, extra in calls.items():
        eager = f(net, "softmax_cross_entropy", params, x, v, *extra)
        jitted = jax.jit(f)(net, fnn.get_loss("softmax_cross_entropy"), params, x, v, *extra)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-12)
        assert "jax.jit" in f.__doc__ and "fnn.get_loss(name)" in f.__doc__, f.__name__
    bound = jax.jit(functools.partial(fnn.per_example_grad_norms, net, "softmax_cross_entropy"))(params, x, v)
    np.testing.assert_allclose(bound, fnn.per_example_grad_norms(net, loss, params, x, v), rtol=1e-12)
    with pytest.raises(TypeError):  # the limitation the docstrings name
        jax.jit(fnn.per_example_grad_norms)(net, "softmax_cross_entropy", params, x, v)


# --- DP-SGD: clipping from one backward pass -----------------------------------------------------

def _dp_setup(loss_name="softmax_cross_entropy", batch=8):
    net, loss, params, x, v = _setup(loss_name, batch)
    g = jax.vmap(lambda xb, vb: jax.grad(_instance(net, loss, xb, vb))(params))(x, v)
    norms = np.sqrt(sum(np.sum(np.asarray(a).reshape(batch, -1) ** 2, 1) for a in jax.tree.leaves(g)))
    return net, loss, params, x, v, g, norms


@pytest.mark.parametrize("loss_name", ["softmax_cross_entropy", "mse", "huber(0.5)"])
def test_dp_step_without_noise_equals_clipping_vmap_grad_by_hand(loss_name, x64):
    net, loss, params, x, v, g, norms = _dp_setup(loss_name)
    clip = float(np.median(norms))  # about half the examples are clipped
    weights = jnp.array([1.0, 1.0, 0.0, 1.0, 0.25, 1.0, 1.0, 0.5])  # DP weights lie in [0, 1]
    scale = np.asarray(weights) * np.minimum(1.0, clip / norms) / float(weights.sum())
    by_hand = jax.tree.map(lambda a: jnp.tensordot(scale, a, 1), g)
    by_hand = [{"W": b["W"] + 0.01 * p["W"], "b": b["b"]} for b, p in zip(by_hand, params)]  # L2, not clipped
    objective = fnn.Objective(net, loss, l2=0.01)
    value, grads, got_norms = fnn.privacy.clipped_value_and_grad(objective, params, x, v, weights, clip_norm=clip)
    np.testing.assert_allclose(got_norms, norms, rtol=1e-12)
    assert_rel_close(grads, by_hand, 1e-12)
    # Through the optimizer step, with the fraction of clipped examples reported.
    opt = optax.sgd(1.0)
    step = fnn.make_update_step(net, loss, opt, l2=0.01, clip_norm=clip, donate=False)
    new, _, metrics = step(params, opt.init(params), x, v, None, weights)
    assert_rel_close(jax.tree.map(lambda p, n: p - n, params, new), by_hand, 1e-12)
    live = np.asarray(weights) > 0
    assert float(metrics["clipped"]) == pytest.approx(np.mean(norms[live] > clip))
    # A clipping norm above every example's norm changes nothing.
    _, plain = fnn.value_and_grad(net, loss, params, x, v, weights=weights)
    _, unclipped, _ = fnn.privacy.clipped_value_and_grad(fnn.Objective(net, loss), params, x, v, weights,
                                                            clip_norm=10 * float(norms.max()))
    assert_rel_close(unclipped, plain, 1e-12)


def test_dp_noise_has_the_stated_scale(x64):
    net, loss, params, x, v, _, norms = _dp_setup()
    objective, clip, sigma = fnn.Objective(net, loss), 0.5, 1.3
    _, clean, _ = fnn.privacy.clipped_value_and_grad(objective, params, x, v, clip_norm=clip)
    _, noisy, _ = fnn.privacy.clipped_value_and_grad(objective, params, x, v, key=jax.random.key(3),
                                                        clip_norm=clip, noise_multiplier=sigma)
    z = (ravel_pytree(noisy)[0] - ravel_pytree(clean)[0]) * x.shape[0] / (sigma * clip)
    n = z.size  # standard normal: mean within 5/√n of 0, variance within 5·√(2/n) of 1
    assert abs(float(z.mean())) < 5 / np.sqrt(n) and abs(float(z.var()) - 1) < 5 * np.sqrt(2 / n)


def test_dp_training_runs_and_refuses_what_it_cannot_do():
    data = fnn.data.load("moons", seed=0)
    net = fnn.MLP((2, 16, 2), "relu")
    params = fnn.init(jax.random.key(0), net, "he")
    kwargs = dict(key=jax.random.key(1), optimizer=optax.adam(1e-2), epochs=8, batch_size=32,
                  test=(data.x_test, data.y_test), clip_norm=1.0, noise_multiplier=0.5)
    p1, h1 = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, **kwargs)
    p2, h2 = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, **kwargs)
    assert h1 == h2 and h1["test_accuracy"][-1] > 0.8
    with pytest.raises(ValueError, match="method='manual'"):
        fnn.make_update_step(net, "mse", optax.sgd(0.1), "autodiff", clip_norm=1.0)
    with pytest.raises(ValueError, match="noise_multiplier needs clip_norm"):
        fnn.make_update_step(net, "mse", optax.sgd(0.1), noise_multiplier=1.0)
    with pytest.raises(ValueError, match="clip_norm must be a positive finite number"):
        fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, key=jax.random.key(0),
                clip_norm=-1.0)


def test_diagnostics_are_their_definitions(x64):
    net, loss, params, x, v = _setup("mse", 6)  # relu, tanh, sigmoid: every layer has a gradient
    g = jax.vmap(lambda xb, vb: jax.grad(_instance(net, loss, xb, vb))(params))(x, v)
    d = fnn.quantities.diagnostics(net, loss, params, x, v)
    ggn, unravel = _ggn_matrix(net, loss, params, x, v)
    diag = unravel(jnp.diag(ggn))
    for k, layer in enumerate(g, 1):
        flat = np.concatenate([np.asarray(layer["W"]).reshape(6, -1), np.asarray(layer["b"])], axis=1)
        mean, var = flat.mean(0), flat.var(0)
        norms = np.linalg.norm(flat, axis=1)
        np.testing.assert_allclose(d[f"grad_norm_l{k}"], np.linalg.norm(mean), rtol=1e-10)
        np.testing.assert_allclose(d[f"snr_l{k}"], np.sum(mean ** 2) / np.sum(var), rtol=1e-8)
        np.testing.assert_allclose(d[f"norm_spread_l{k}"], norms.std() / norms.mean(), rtol=1e-8)
        np.testing.assert_allclose(d[f"ggn_trace_l{k}"], jnp.sum(diag[k - 1]["W"]) + jnp.sum(diag[k - 1]["b"]),
                                   rtol=1e-10)


def test_privacy_epsilon_from_dp_accounting():
    pytest.importorskip("dp_accounting")
    from fnn.analysis.privacy import epsilon

    # Abadi et al. (2016): q = 0.01, σ = 4, 10,000 steps (100 epochs) gives ε ≈ 1.26 at δ = 1e-5
    # with the moments accountant; an RDP accountant lands close to that.
    eps = epsilon(4.0, batch_size=600, examples=60000, steps=10000, delta=1e-5)
    assert 1.0 < eps < 1.6
    more_noise = epsilon(8.0, batch_size=600, examples=60000, steps=10000, delta=1e-5)
    longer = epsilon(4.0, batch_size=600, examples=60000, steps=40000, delta=1e-5)
    assert more_noise < eps < longer
    assert epsilon(0.0, batch_size=1, examples=10, steps=5) == float("inf")
    assert epsilon(1.0, batch_size=1, examples=10, steps=0) == 0.0
    with pytest.raises(ValueError, match="batch_size <= examples"):
        epsilon(1.0, batch_size=20, examples=10, steps=5)
