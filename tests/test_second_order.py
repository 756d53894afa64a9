"""K-FAC, EKFAC, the diagonal-GGN preconditioner, Gauss-Newton by CG and Newton against their dense
definitions (jax.jacfwd / jax.hessian, float64), and the same numbers under jit, vmap and the mesh."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend.core import Jaxpr
from jax.flatten_util import ravel_pytree

import fnn
from fnn.analysis.curvature import curvature_of
from fnn.training.schedules import learning_rates
from fnn.training.second_order import with_shared_step
from helpers import assert_rel_close, targets_for

CASES = [  # (hidden activations, loss): every activation meets a loss with curvature
    (("tanh", "relu"), "softmax_cross_entropy"),
    (("sigmoid", "softplus"), "mse"),
    (("leaky_relu(0.2)", "tanh"), "binary_cross_entropy"),
    (("relu", "sigmoid"), "huber(0.5)"),
]


def _setup(acts, loss_name, batch=6, sizes=(3, 4, 5, 3), seed=0):
    loss = fnn.get_loss(loss_name)
    net = fnn.MLP(sizes, (*acts, "identity"))
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = fnn.init(k1, net, "glorot", dtype=jnp.float64)
    x = jax.random.normal(k2, (batch, sizes[0]), jnp.float64)
    return net, loss, params, x, targets_for(loss, k3, batch, sizes[-1], jnp.float64)


def _dense_ggn(net, loss, params, x, v):
    """``(1/B) Σ_b J_bᵀ H_b J_b`` in ``ravel_pytree`` order, by jax.jacfwd and jax.hessian."""
    flat, unravel = ravel_pytree(params)
    jac = jax.jacfwd(lambda f: fnn.forward(net, unravel(f), x))(flat)  # (B, d_L, P)
    out = fnn.forward(net, params, x)
    hess = jax.vmap(jax.hessian(lambda y, t: loss.value(y[None], t[None])[0]))(out, v)  # (B, d_L, d_L)
    return jnp.einsum("bip,bij,bjq->pq", jac, hess, jac) / x.shape[0]


def _blocks(params):
    """Index ranges of each layer's [W; b] block in ravel_pytree order (W row-major, then b)."""
    out, start = [], 0
    for p in params:
        size = p["W"].size + p["b"].size
        out.append(slice(start, start + size))
        start += size
    return out


def _stacked(g):
    return jnp.concatenate([g["W"], g["b"][None, :]], axis=0)


def _one_step(opt, net, loss, params, x, v, key=None):
    state = opt.init(params)
    _, grads, extra = fnn.curvature_pass(opt, net, loss, params, x, v, key=key)
    updates, state = opt.update(grads, state, params, **extra)
    return grads, extra, updates, state


@pytest.mark.parametrize("acts,loss_name", CASES)
@pytest.mark.parametrize("mode", ["exact", "pi"])
def test_kfac_step_is_the_dense_damped_kronecker_solve(acts, loss_name, mode, x64):
    net, loss, params, x, v = _setup(acts, loss_name)
    lam = 0.3
    opt = fnn.kfac(learning_rate=1.0, damping=lam, damping_mode=mode, curvature_ema=0.0)
    grads, extra, updates, _ = _one_step(opt, net, loss, params, x, v)
    reference = fnn.kfac_factors(net, loss, params, x, v)  # the KFLR factors quantities.py computes
    cache = fnn.forward_with_cache(net, params, x)[1]
    for l, (f, ref, g, u) in enumerate(zip(extra["factors"], reference, grads, updates)):
        ybar = jnp.concatenate([cache.inputs[l], jnp.ones((x.shape[0], 1))], axis=1)
        np.testing.assert_allclose(f["A"], ybar.T @ ybar / x.shape[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(f["G"], ref["G"], rtol=1e-12, atol=1e-14)
        a, gg = f["A"], f["G"]
        if mode == "exact":
            matrix = jnp.kron(a, gg) + lam * jnp.eye(a.shape[0] * gg.shape[0])
        else:
            pi = jnp.sqrt((jnp.trace(a) / a.shape[0]) / (jnp.trace(gg) / gg.shape[0]))
            matrix = jnp.kron(a + pi * jnp.sqrt(lam) * jnp.eye(a.shape[0]), gg + jnp.sqrt(lam) / pi * jnp.eye(gg.shape[0]))
        expected = -jnp.linalg.solve(matrix, _stacked(g).ravel())  # vec row-major: kron(A, G)
        assert_rel_close(_stacked(u).ravel(), expected, 1e-10)


def test_kfac_is_the_exact_ggn_block_for_one_example_of_a_deep_linear_net(x64):
    net, loss, params, x, v = _setup(("identity", "identity"), "mse", batch=1)
    dense = _dense_ggn(net, loss, params, x, v)
    lam = 1e-2
    grads, extra, updates, _ = _one_step(fnn.kfac(1.0, lam, curvature_ema=0.0), net, loss, params, x, v)
    for block, f, g, u in zip(_blocks(params), extra["factors"], grads, updates):
        np.testing.assert_allclose(jnp.kron(f["A"], f["G"]), dense[block, block], rtol=1e-10, atol=1e-13)
        exact = -jnp.linalg.solve(dense[block, block] + lam * jnp.eye(block.stop - block.start), _stacked(g).ravel())
        assert_rel_close(_stacked(u).ravel(), exact, 1e-9)


@pytest.mark.parametrize("acts,loss_name", CASES[:2])
def test_ekfac_is_its_dense_definition(acts, loss_name, x64):
    """EKFAC: u = −U diag(s + λ)⁻¹ Uᵀ g with U = Q_A ⊗ Q_G and s = diag(Uᵀ G_block U), the true GGN
    block's diagonal in the Kronecker eigenbasis (George et al. 2018)."""
    net, loss, params, x, v = _setup(acts, loss_name, batch=12)
    lam = 0.05
    opt = fnn.kfac(1.0, lam, ekfac=True, curvature_ema=0.0)
    grads, extra, updates, state = _one_step(opt, net, loss, params, x, v)
    dense = _dense_ggn(net, loss, params, x, v)
    for block, f, g, u in zip(_blocks(params), extra["factors"], grads, updates):
        basis = jnp.kron(jnp.linalg.eigh(f["A"])[1], jnp.linalg.eigh(f["G"])[1])
        s = jnp.diag(basis.T @ dense[block, block] @ basis)
        expected = -basis @ ((basis.T @ _stacked(g).ravel()) / (s + lam))
        assert_rel_close(_stacked(u).ravel(), expected, 1e-9)


def test_running_averages_and_refresh_period(x64):
    net, loss, params, x, v = _setup(("tanh", "relu"), "softmax_cross_entropy")
    x2 = x[::-1] * 2.0
    opt = fnn.kfac(1.0, 0.1, curvature_ema=0.75, inverse_update_period=2)
    state = opt.init(params)
    seen = []
    for xb in (x, x2, x):
        _, grads, extra = fnn.curvature_pass(opt, net, loss, params, xb, v)
        seen.append(extra["factors"])
        _, state = opt.update(grads, state, params, **extra)
        if int(state.count) == 2:  # step 1 kept the preconditioner of step 0 (period 2)
            first_precond = state.precond
    a = [0.75 * (0.75 * 0 + 1.0 * s0["A"]) + 0.25 * s1["A"] for s0, s1 in zip(seen[0], seen[1])]
    a = [0.75 * ai + 0.25 * s2["A"] for ai, s2 in zip(a, seen[2])]
    assert_rel_close([f["A"] for f in state.factors], a, 1e-12)
    first = np.linalg.eigh(seen[0][0]["A"])[0]
    np.testing.assert_allclose(first_precond[0]["dA"], np.maximum(first, 0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("acts,loss_name", CASES[:2])
def test_gauss_newton_direction_solves_the_dense_ggn_system(acts, loss_name, x64):
    net, loss, params, x, v = _setup(acts, loss_name)
    lam, size = 0.2, ravel_pytree(params)[0].size
    opt = fnn.gauss_newton(1.0, lam, cg_iterations=4 * size, cg_tol=1e-13, adaptive_damping=False, cg_warm_start=0.0)
    grads, _, updates, state = _one_step(opt, net, loss, params, x, v)
    dense = _dense_ggn(net, loss, params, x, v)
    expected = -jnp.linalg.solve(dense + lam * jnp.eye(size), ravel_pytree(grads)[0])
    assert_rel_close(ravel_pytree(state.direction)[0], expected, 1e-8)
    assert float(state.rho) > 0  # the step was taken
    assert_rel_close(updates, state.direction, 1e-12)


def test_levenberg_marquardt_rule_on_a_quadratic(x64):
    """A linear model with MSE is quadratic: the model is exact, ρ = 1 and λ shrinks by the decay;
    a step that overshoots (η = 3, where the model itself predicts a rise) is refused, and λ grows."""
    net, loss, params, x, v = _setup((), "mse", sizes=(3, 2))
    opt = fnn.gauss_newton(1.0, 0.5, cg_iterations=50, cg_tol=1e-12, min_damping=1e-6)
    _, _, updates, state = _one_step(opt, net, loss, params, x, v)
    np.testing.assert_allclose(float(state.rho), 1.0, rtol=1e-8)
    np.testing.assert_allclose(float(state.damping), 0.5 * 2 / 3, rtol=1e-12)
    _, _, updates, state = _one_step(fnn.gauss_newton(3.0, 1e-6, cg_iterations=50, cg_tol=1e-12), net, loss,
                                     params, x, v)
    assert float(state.rho) < 0.25 and all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))
    np.testing.assert_allclose(float(state.damping), 1e-6 * 3 / 2, rtol=1e-12)


@pytest.mark.parametrize("acts,loss_name", CASES)
def test_newton_is_the_damped_solve_with_jax_hessian(acts, loss_name, x64):
    net, loss, params, x, v = _setup(acts, loss_name, sizes=(3, 4, 2))[0:5] if len(acts) == 1 else \
        _setup(acts, loss_name)
    lam = 0.1
    grads, _, updates, _ = _one_step(fnn.newton(1.0, lam), net, loss, params, x, v)
    flat, unravel = ravel_pytree(params)
    hessian = jax.hessian(lambda f: fnn.risk(loss, fnn.forward(net, unravel(f), x), v))(flat)
    expected = -jnp.linalg.solve(hessian + lam * jnp.eye(flat.size), ravel_pytree(grads)[0])
    assert_rel_close(ravel_pytree(updates)[0], expected, 1e-9)


def test_ggn_diag_precond_is_its_formula(x64):
    net, loss, params, x, v = _setup(("tanh", "relu"), "softmax_cross_entropy")
    opt = fnn.ggn_diag_precond(0.5, 1e-2, decay=0.9, power=0.5)
    grads, extra, updates, _ = _one_step(opt, net, loss, params, x, v)
    diag = fnn.ggn_diagonal(net, loss, params, x, v)
    assert_rel_close(extra["ggn_diag"], diag, 1e-12)
    # after one step the bias-corrected average is the batch's diagonal itself
    assert_rel_close(updates, jax.tree.map(lambda g, d: -0.5 * g / jnp.sqrt(d + 1e-2), grads, diag), 1e-12)


def test_monte_carlo_factors_need_a_key_and_estimate_the_exact_ones(x64):
    net, loss, params, x, v = _setup(("tanh", "relu"), "softmax_cross_entropy", batch=4)
    opt = fnn.kfac(1.0, 0.1, mc_samples=4000)
    assert curvature_of(opt).needs_key
    with pytest.raises(ValueError, match="key"):
        fnn.curvature_pass(opt, net, loss, params, x, v)
    sampled = fnn.curvature_pass(opt, net, loss, params, x, v, key=jax.random.key(3))[2]["factors"]
    exact = fnn.curvature_pass(fnn.kfac(), net, loss, params, x, v)[2]["factors"]
    for s, e in zip(sampled, exact):
        assert_rel_close(s["G"], e["G"], 0.1)  # 4000 samples: a few percent
        np.testing.assert_allclose(s["A"], e["A"], rtol=1e-12)


def test_bad_settings_and_missing_curvature_say_what_to_do():
    net, loss, params, x, v = _setup(("tanh",), "mse", sizes=(3, 4, 2))
    for bad, match in [(dict(damping=-1.0), "damping"), (dict(inverse_update_period=0), "inverse_update_period"),
                       (dict(damping_mode="tikhonov"), "damping_mode"), (dict(ekfac=True, damping_mode="pi"), "EKFAC"),
                       (dict(curvature_ema=1.0), "curvature_ema")]:
        with pytest.raises(ValueError, match=match):
            fnn.kfac(**bad)
    grads = jax.tree.map(jnp.zeros_like, params)
    for opt in (fnn.kfac(), fnn.ggn_diag_precond(), fnn.gauss_newton(), fnn.newton()):
        with pytest.raises(ValueError, match="curvature_pass"):
            opt.update(grads, opt.init(params), params)
    with pytest.raises(ValueError, match="asks for no curvature"):
        fnn.curvature_pass(optax.adam(1e-3), net, loss, params, x, v)
    opt = fnn.kfac()
    with pytest.raises(ValueError, match=r"factors\[0\]"):
        opt.update(grads, opt.init(params), params, factors=fnn.kfac_factors(net, loss, params, x, v))


BUILDERS = {  # name -> (settings giving a damping argument d, needs a key)
    "kfac": (lambda d: fnn.get_optimizer("kfac", 0.5, damping=d, mc_samples=2, inverse_update_period=2), True),
    "ekfac": (lambda d: fnn.get_optimizer("ekfac", 0.5, damping=d), False),
    "ggn_diag": (lambda d: fnn.get_optimizer("ggn_diag", 0.1, damping=d), False),
    "gauss_newton": (lambda d: fnn.get_optimizer("gauss_newton", 1.0, damping=d, cg_iterations=5), False),
    "newton": (lambda d: fnn.get_optimizer("newton", 0.5, damping=d), False),
}


def _step(opt, net, loss, params, x, v, key):
    update = fnn.make_update_fn(net, loss, opt)
    return update(params, opt.init(params), x, v, key)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_update_step_under_jit_vmap_and_the_mesh_equals_the_plain_call(name, x64):
    """The step inside fnn.make_update_fn: plain, jitted, vmapped over damping values (one program, as
    fnn.sweep runs it) and sharded over 4 devices with a batch of 6 (padded with zero-weight rows)."""
    build, keyed = BUILDERS[name]
    net, loss, params, x, v = _setup(("tanh", "softplus"), "softmax_cross_entropy")
    key = jax.random.key(1) if keyed else None
    assert fnn.make_update_fn(net, loss, build(0.1)).needs_key == keyed
    plain = [_step(build(d), net, loss, params, x, v, key) for d in (0.1, 1.0)]
    jitted = jax.jit(lambda p, k: _step(build(0.1), net, loss, p, x, v, k))(params, key)
    assert_rel_close(jitted[:2], plain[0][:2], 1e-10)
    lanes = jax.jit(jax.vmap(lambda d: _step(build(d), net, loss, params, x, v, key)))(jnp.array([0.1, 1.0]))
    for i in range(2):
        assert_rel_close(jax.tree.map(lambda a: a[i], lanes[:2]), plain[i][:2], 1e-10)
    opt = build(0.1)
    mesh = fnn.parallel.make_mesh(4)
    step = fnn.parallel.make_parallel_update_step(net, loss, opt, mesh)
    sharded = step(fnn.parallel.replicate(params, mesh), fnn.parallel.replicate(opt.init(params), mesh), x, v, key)
    assert_rel_close(sharded[:2], plain[0][:2], 1e-10)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_fit_with_each_second_order_optimizer_lowers_the_loss(name):
    net = fnn.MLP((4, 8, 3), ("tanh", "identity"))
    kx, kp = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (96, 4))
    v = jnp.argmax(x[:, :3] + 0.5 * x[:, 3:], axis=1)
    params = fnn.init(kp, net, "glorot")
    opt = BUILDERS[name][0](0.1 if name != "gauss_newton" else 1.0)
    _, history = fnn.fit(net, "softmax_cross_entropy", params, x, v, key=jax.random.key(1), optimizer=opt,
                         epochs=4, batch_size=32)
    start = float(fnn.risk("softmax_cross_entropy", fnn.forward(net, params, x), v))
    assert history["train_loss"][-1] < 0.8 * start, (start, history["train_loss"])


def test_a_schedule_keeps_the_curvature_and_settings_are_refused_where_unknown():
    schedule = fnn.make_schedule("cosine", 0.1, 10)
    opt = fnn.get_optimizer("kfac", schedule, damping=0.01, inverse_update_period=3)
    assert curvature_of(opt).kind == "kronecker"
    net, loss, params, x, v = _setup(("tanh", "relu"), "softmax_cross_entropy")
    for scheduled in (opt, fnn.get_optimizer("kfac", schedule)):  # with and without settings (the latter
        update = fnn.make_update_fn(net, loss, scheduled)        # failed at init: **settings became a hyperparameter)
        new, state, _ = update(params, scheduled.init(params), x, v)
        assert float(learning_rates(state)) == pytest.approx(0.1)
        assert float(jnp.abs(new[0]["W"] - params[0]["W"]).max()) > 0
    with pytest.raises(ValueError, match="takes no settings"):
        fnn.get_optimizer("adam", 1e-3, damping=0.1)


def test_cli_trains_with_kfac_and_gauss_newton_and_refuses_a_setting_in_one_line(tmp_path, capsys):
    from fnn.cli.main import main

    small = ["train", "--dataset", "moons", "--hidden", "8", "--epochs", "3", "--batch-size", "32", "--no-progress",
             "--no-plot", "--no-gradcheck"]
    for name, flags in [("kfac", ["--lr", "0.3", "--damping", "0.1", "--inverse-update-period", "3"]),
                        ("gauss_newton", ["--lr", "1", "--damping", "1", "--cg-iterations", "5"])]:
        assert main([*small, "--optimizer", name, *flags, "--out", str(tmp_path / name)]) == 0
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        losses = metrics["history"]["train_loss"]
        assert losses[-1] < losses[0] and losses[-1] < 0.6, (name, losses)
        config = json.loads((tmp_path / name / "config.json").read_text())["config"]
        assert config["optimizer"] == name and config["damping"] == float(flags[3])
    capsys.readouterr()
    assert main([*small, "--optimizer", "newton", "--inverse-update-period", "3", "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "newton takes no setting inverse_update_period" in err[0]


def test_norm_constraint_scales_the_step_to_its_bound(x64):
    """Ba et al.'s clipping: with κ below η² Pᵀg the step is P·√(κ / (η² Pᵀg)), so η² (cP)ᵀg = κ."""
    net, loss, params, x, v = _setup(("tanh", "relu"), "softmax_cross_entropy")
    grads, _, free, _ = _one_step(fnn.kfac(0.5, 0.1, curvature_ema=0.0), net, loss, params, x, v)
    quadratic = float(_dot_tree(free, grads)) / -0.5  # Pᵀg from u = −η P
    kappa = 0.1 * 0.25 * quadratic
    _, _, clipped, _ = _one_step(fnn.kfac(0.5, 0.1, curvature_ema=0.0, norm_constraint=kappa), net, loss, params, x, v)
    assert_rel_close(clipped, jax.tree.map(lambda a: a * np.sqrt(0.1), free), 1e-10)
    _, _, loose, _ = _one_step(fnn.kfac(0.5, 0.1, curvature_ema=0.0, norm_constraint=10 * kappa / 0.1), net, loss,
                               params, x, v)
    assert_rel_close(loose, free, 1e-12)


def _dot_tree(a, b):
    return sum(jnp.vdot(p, q) for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_step_cost_experiment_quick(tmp_path):
    """experiments/second_order_step_cost.py --quick: every arm timed and finite; kfac-jax's rows iff installed."""
    import importlib.util
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from common import main

    import second_order_step_cost

    # kfac-jax's dense-layer pattern is x @ W + b with b broadcast, which this suite's strict
    # rank promotion refuses; the experiment runs under JAX's default ("allow").
    with jax.numpy_rank_promotion("allow"):
        cost = main(second_order_step_cost, argv=["--quick", "--out", str(tmp_path)])["step_cost"][0]
    expected = {"adam", "kfac MC-1 pi"} | ({"kfac-jax fisher-1 pi", "kfac-jax GGN exact pi"}
                                          if importlib.util.find_spec("kfac_jax") else set())
    assert set(cost["seconds"]) == expected and all(cost["params_finite"].values())
    assert cost["ratio_to_adam"]["adam"] == 1.0 and all(s > 0 for s in cost["seconds"].values())
    one = cost["one_blas_thread"]  # the same arms, each round also with OpenBLAS limited to one thread
    assert set(one["seconds"]) == expected and one["ratio_to_adam"]["adam"] == 1.0
    assert all(len(t) == cost["rounds"] and min(t) > 0 for t in one["seconds_all"].values())
    flops = cost["gflop"]  # 64-64-10, B = 64: the gradient is 4·64·(64·64 + 64·10) + 2·64·64·10 flops
    assert flops["forward + backward (the gradient)"] == pytest.approx((4 * 64 * 4736 + 2 * 64 * 640) / 1e9)
    assert flops["precondition, pi: A⁻¹ Ḡ G⁻¹"] == pytest.approx(2 * (65 * 64 * 129 + 65 * 10 * 75) / 1e9)


def _eigh_places(jaxpr, in_cond=False) -> list[bool]:
    """For every eigh in ``jaxpr``, nested jaxprs included: whether it sits in a branch of a cond."""
    places = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "eigh":
            places.append(in_cond)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                sub = getattr(sub, "jaxpr", sub)
                if isinstance(sub, Jaxpr):
                    places += _eigh_places(sub, in_cond or eqn.primitive.name == "cond")
    return places


def test_kfac_refresh_stays_a_cond_under_vmap_given_the_shared_step(x64):
    """With the runs' states batched, the refresh predicate from state.count is batched and the cond
    becomes a select (eigh outside any cond: it would run every step); given the unbatched step
    (fnn.training.second_order.with_shared_step) every eigh is inside the cond's branches."""
    net, loss, params, x, v = _setup(("tanh", "relu"), "softmax_cross_entropy")
    opt = fnn.kfac(0.5, 0.1, inverse_update_period=3)
    _, grads, extra = fnn.curvature_pass(opt, net, loss, params, x, v)
    lanes = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), (grads, opt.init(params), extra["factors"]))

    def places(step):
        def one(g, s, f):
            return with_shared_step(opt, step).update(g, s, params, factors=f) \
                if step is not None else opt.update(g, s, params, factors=f)
        return _eigh_places(jax.make_jaxpr(jax.vmap(one))(*lanes).jaxpr)

    assert places(None) and not any(places(None))  # the failure this guards against
    shared = places(jnp.int32(4))
    assert len(shared) == 2 * len(params) and all(shared)


def _kfac_sweep_program_places(net, loss, x, v):
    """The eigh places in the jaxpr of fnn.sweep's epoch program for K-FAC over 2 seeds × 2 damping values."""
    from fnn.training.sweep import DEFAULTS
    from fnn.training.sweepprograms import Recipe, epoch_program

    point = {**DEFAULTS, "optimizer": "kfac", "lr": 0.3, "batch_size": 8, "damping": 0.1}
    recipe = Recipe.of(net, loss, point, ("damping",), None, 0.0, x.shape[0] // 8)
    hyper = {"damping": jnp.asarray([0.1, 1.0])}
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (2, 2, *a.shape)), fnn.init(jax.random.key(0), net, "glorot"))
    states = jax.vmap(jax.vmap(lambda p, d: recipe.optimizer({"damping": d}).init(p)), in_axes=(0, None))(
        params, hyper["damping"])
    keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
    return _eigh_places(jax.make_jaxpr(epoch_program(recipe, None))(params, states, hyper, x, v, keys, 0).jaxpr)


def test_sweep_runs_kfac_over_seeds_and_damping_as_one_program_equal_to_fit(x64):
    """fnn.sweep over 2 seeds × 2 damping values: each run equals its own fnn.fit (float64), and in the
    one program the refresh (every eigh) is inside a cond, so it runs every T steps, not every step."""
    from fnn.training.sweep import sweep

    net = fnn.MLP((4, 6, 3), ("tanh", "identity"))
    x = np.asarray(jax.random.normal(jax.random.key(0), (48, 4), jnp.float64))
    v = np.asarray(jnp.argmax(x[:, :3] + 0.5 * x[:, 3:], axis=1))
    places = _kfac_sweep_program_places(net, fnn.get_loss("softmax_cross_entropy"), x, v)
    assert len(places) == 2 * 2 and all(places), places
    result = sweep(net, "softmax_cross_entropy", x, v, seeds=[0, 3], grid={"damping": [0.1, 1.0]},
                   optimizer="kfac", lr=0.3, epochs=2, batch_size=16, inverse_update_period=4, init="glorot")
    assert [(c["seed"], c["damping"]) for c in result.configs] == [(0, 0.1), (3, 0.1), (0, 1.0), (3, 1.0)]
    for i, c in enumerate(result.configs):
        k_init, k_run, _ = jax.random.split(jax.random.key(c["seed"]), 3)
        opt = fnn.get_optimizer("kfac", 0.3, damping=c["damping"], inverse_update_period=4)
        params, history = fnn.fit(net, "softmax_cross_entropy", fnn.init(k_init, net, "glorot"), x, v, key=k_run,
                                  optimizer=opt, epochs=2, batch_size=16)
        assert_rel_close(result.run_params(i), params, 1e-12)
        np.testing.assert_allclose(result.history["train_loss"][i], history["train_loss"], rtol=1e-12)
    assert result.history["train_loss"][0, -1] != result.history["train_loss"][2, -1]  # damping matters


@pytest.mark.parametrize("optimizer,settings", [("gauss_newton", dict(lr=1.0, cg_iterations=3)),
                                                ("kfac", dict(lr=0.3, schedule="cosine", mc_samples=1))])
def test_sweep_runs_gauss_newton_and_scheduled_monte_carlo_kfac_as_fit_does(optimizer, settings, x64):
    """Gauss-Newton's CG under the sweep's vmap (jax.scipy's cg failed there), and a scheduled K-FAC
    with sampled factors (its settings and its key), each run equal to its fit run."""
    from fnn.training.sweep import sweep

    net = fnn.MLP((4, 6, 3), ("tanh", "identity"))
    x = np.asarray(jax.random.normal(jax.random.key(0), (32, 4), jnp.float64))
    v = np.asarray(jnp.argmax(x[:, :3] + 0.5 * x[:, 3:], axis=1))
    result = sweep(net, "softmax_cross_entropy", x, v, seeds=[2], grid={"damping": [0.5, 2.0]}, optimizer=optimizer,
                   epochs=2, batch_size=16, init="glorot", **settings)
    own = {k: a for k, a in settings.items() if k not in ("lr", "schedule")}
    for i, c in enumerate(result.configs):
        k_init, k_run, _ = jax.random.split(jax.random.key(c["seed"]), 3)
        lr = fnn.make_schedule("cosine", c["lr"], 4) if c["schedule"] == "cosine" else c["lr"]
        opt = fnn.get_optimizer(optimizer, lr, damping=c["damping"], **own)
        params, history = fnn.fit(net, "softmax_cross_entropy", fnn.init(k_init, net, "glorot"), x, v, key=k_run,
                                  optimizer=opt, epochs=2, batch_size=16)
        assert_rel_close(result.run_params(i), params, 1e-12)
        np.testing.assert_allclose(result.history["train_loss"][i], history["train_loss"], rtol=1e-12)


def test_fnn_sweep_over_damping_equals_fnn_train_and_refuses_it_for_adam(tmp_path, capsys):
    from fnn.cli.main import main
    from fnn.io import checkpoint

    small = ["--dataset", "moons", "--hidden", "4", "--epochs", "1", "--no-progress", "--optimizer", "kfac", "--lr",
             "0.3", "--inverse-update-period", "3"]
    assert main(["sweep", *small, "--damping", "0.1", "1.0", "--seeds", "2", "--no-plot", "--out",
                 str(tmp_path / "sw")]) == 0
    assert "4 runs (2 seeds × --damping 0.1 1.0)" in capsys.readouterr().out
    doc = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [(r["config"]["seed"], r["config"]["damping"]) for r in doc["runs"]] == [(0, 0.1), (1, 0.1), (0, 1.0),
                                                                                    (1, 1.0)]
    swept = np.load(tmp_path / "sw" / "params.npz")
    assert main(["train", *small, "--damping", "1.0", "--seed", "1", "--no-gradcheck", "--no-plot", "--out",
                 str(tmp_path / "solo")]) == 0
    for l, layer in enumerate(checkpoint.load(tmp_path / "solo" / "checkpoint.npz").params, 1):
        np.testing.assert_allclose(swept[f"relu/W{l}"][3], layer["W"], rtol=1e-4, atol=1e-6)
    capsys.readouterr()
    assert main(["sweep", "--dataset", "xor", "--epochs", "1", "--no-progress", "--damping", "0.1", "1.0",
                 "--out", str(tmp_path / "adam")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damping is a setting of the second-order optimizers" in err[0], err
    assert not (tmp_path / "adam").exists()


def _gauss_newton_on_minibatches(opt, steps=120, batch=16, n=512):
    """Minibatch Gauss-Newton on a 8-32-4 tanh classifier of a linear teacher with 20% label noise:
    (training risk before, after, final λ)."""
    net = fnn.MLP((8, 32, 4), ("tanh", "identity"))
    kx, kt, kn, kp = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (n, 8), jnp.float64)
    v = jnp.where(jax.random.uniform(kn, (n,)) < 0.2, jax.random.randint(kn, (n,), 0, 4),
                  jnp.argmax(x @ jax.random.normal(kt, (8, 4), jnp.float64), 1))
    params = fnn.init(kp, net, "glorot", dtype=jnp.float64)
    step, state = fnn.make_update_step(net, "softmax_cross_entropy", opt, donate=False), opt.init(params)
    order = np.random.default_rng(0).permutation(n)
    risk = jax.jit(lambda p: fnn.risk("softmax_cross_entropy", fnn.forward(net, p, x), v))
    start = float(risk(params))
    for t in range(steps):
        rows = order[(t * batch) % (n - batch):][:batch]
        params, state, _ = step(params, state, x[rows], v[rows])
    return start, float(risk(params)), float(state.damping)


def test_gauss_newton_default_damping_floor_prevents_the_minibatch_stall(x64):
    """Notebook 06's stall on a toy problem: on minibatches of 16 the reduction ratio on the step's own
    batch stays near 1, so the Levenberg–Marquardt rule without a floor (min_damping=1e-6, the old
    default) drives λ down and the training risk ends above where it started; the default floor (the
    initial λ) keeps λ ≥ 1 and the risk falls by more than a third, as with a fixed λ."""
    settings = dict(cg_iterations=10)
    old = _gauss_newton_on_minibatches(fnn.gauss_newton(1.0, 1.0, min_damping=1e-6, **settings))
    new = _gauss_newton_on_minibatches(fnn.gauss_newton(1.0, 1.0, **settings))
    fixed = _gauss_newton_on_minibatches(fnn.gauss_newton(1.0, 1.0, adaptive_damping=False, **settings))
    assert old[2] < 0.25 and old[1] > old[0], old  # λ fell 4x or more and the risk rose
    assert new[2] >= 1.0 and new[1] < 0.67 * new[0], new
    assert new[1] <= 1.05 * fixed[1], (new, fixed)


# The gradient's low-rank form (fnn.training.kronecker): K-FAC's products with the gradient block from
# ȳᵀδ where that is cheaper, only for the gradient it is the form of. Wide layers and a small batch, so
# the first two layers take the low-rank order and the last (16→3) the dense one.
WIDE, LOW_RANK_LAYERS = (12, 16, 16, 3), 2
KFAC_MODES = [dict(damping_mode="pi"), dict(damping_mode="exact"), dict(ekfac=True)]


def _dense_only(factors):
    """The factors without their low-rank gradient: the dense path."""
    return [{k: a for k, a in f.items() if k != "gradient"} for f in factors]


def _wide_step(acts, loss_name, settings, mc_samples=0, **pass_settings):
    net, loss, params, x, v = _setup(acts, loss_name, batch=3, sizes=WIDE)
    opt = fnn.kfac(1.0, 0.1, curvature_ema=0.0, mc_samples=mc_samples, **settings)
    key = jax.random.key(5) if mc_samples else None
    _, grads, extra = fnn.curvature_pass(opt, net, loss, params, x, v, key=key, **pass_settings)
    return opt, params, grads, extra["factors"]


def test_the_low_rank_order_is_picked_by_flops():
    from fnn.training.kronecker import flops, order
    assert order(785, 1024, 256) == "both" and order(1025, 1024, 256) == "both"  # MNIST's hidden layers
    assert order(1025, 10, 256) == "dense" and order(1025, 1024, 4096) == "dense"
    ratio = flops("dense", 1025, 1024, 256) / flops("both", 1025, 1024, 256)
    assert 2.6 < ratio < 2.8
    assert [order(n, 16, 3) for n in (13, 17)] == ["both", "both"] and order(17, 3, 3) == "dense"  # WIDE


LOW_RANK_CASES = [(CASES[0], 0, 0), (CASES[0], 2, 1), (CASES[1], 1, 1), (CASES[1], 0, 1), (CASES[2], 2, 0),
                  (CASES[2], 0, 1), (CASES[3], 1, 0), (CASES[3], 0, 0)]  # (case, mode, mc_samples): each meets each


@pytest.mark.parametrize("case,mode,mc_samples", LOW_RANK_CASES)
def test_low_rank_step_equals_the_dense_step(case, mode, mc_samples, x64):
    """Every activation and loss, π and exact damping, EKFAC, KFLR and MC factors, with example weights:
    the jitted step from ȳᵀδ equals the dense one to float64 round-off; and the low-rank products are the
    ones taken (errors doubled with the gradient's W, b kept double the low-rank layers' steps)."""
    weights = jnp.asarray([0.5, 2.0, 1.0])
    opt, params, grads, factors = _wide_step(*case, KFAC_MODES[mode], mc_samples, weights=weights)
    assert all("gradient" in f for f in factors)
    update = jax.jit(opt.update)
    state = opt.init(params)
    low, _ = update(grads, state, params, factors=factors)
    dense, _ = update(grads, state, params, factors=_dense_only(factors))
    assert_rel_close(low, dense, 1e-12)
    doubled = [dict(f, gradient=dict(f["gradient"], errors=2 * f["gradient"]["errors"])) for f in factors]
    twice, _ = update(grads, state, params, factors=doubled)
    assert_rel_close(twice[:LOW_RANK_LAYERS], jax.tree.map(lambda a: 2 * a, dense[:LOW_RANK_LAYERS]), 1e-12)
    assert_rel_close(twice[LOW_RANK_LAYERS:], dense[LOW_RANK_LAYERS:], 1e-12)


def _changed(grads, params, how):
    if how == "decay":
        return jax.tree.map(lambda g, p: g + 1e-3 * p, grads, params)
    if how == "noise":  # as DP noise or any user change between curvature_pass and update
        return jax.tree.map(lambda g: g + 1e-6 * jnp.cos(jnp.arange(g.size).reshape(g.shape)), grads)
    return jax.tree.map(lambda g: g * 0.5, grads)  # as clipping would scale it


@pytest.mark.parametrize("how,settings", list(zip(["decay", "noise", "scaled"], KFAC_MODES)))
def test_low_rank_form_is_not_used_for_another_gradient(settings, how, x64):
    """grads changed after the pass (weight decay, noise, clipping): the step is the dense step of the
    changed grads, not the low-rank step of the pass's own gradient (which differs)."""
    opt, params, grads, factors = _wide_step(("tanh", "relu"), "softmax_cross_entropy", settings)
    update, state = jax.jit(opt.update), opt.init(params)
    other = _changed(grads, params, how)
    got, _ = update(other, state, params, factors=factors)
    assert_rel_close(got, update(other, state, params, factors=_dense_only(factors))[0], 1e-12)
    own = update(grads, state, params, factors=factors)[0]
    assert ravel_pytree(jax.tree.map(lambda a, b: a - b, got, own))[0].std() > 1e-9


@pytest.mark.parametrize("settings", KFAC_MODES[:2])
def test_weight_decay_l2_reg_and_a_decay_chain_precondition_their_own_gradient(settings, x64):
    """l2 in the pass (no low-rank form then, or a traced l2 that the check refuses), kfac's l2_reg, and
    optax.chain(add_decayed_weights, kfac): each equals its dense step."""
    net, loss, params, x, v = _setup(("tanh", "relu"), "softmax_cross_entropy", batch=3, sizes=WIDE)
    opt = fnn.kfac(1.0, 0.1, curvature_ema=0.0, **settings)
    state = opt.init(params)
    _, grads, extra = fnn.curvature_pass(opt, net, loss, params, x, v, l2=1e-3)
    assert not any("gradient" in f for f in extra["factors"])

    @functools.partial(jax.jit, static_argnums=1)
    def traced_l2(l2, dense):
        _, g, e = fnn.curvature_pass(opt, net, loss, params, x, v, l2=l2)
        return opt.update(g, state, params, factors=_dense_only(e["factors"]) if dense else e["factors"])[0]
    for l2 in (0.0, 1e-3):
        assert_rel_close(traced_l2(jnp.asarray(l2), False), traced_l2(jnp.asarray(l2), True), 1e-12)
    _, grads, extra = fnn.curvature_pass(opt, net, loss, params, x, v)
    decayed = fnn.kfac(1.0, 0.1, curvature_ema=0.0, l2_reg=1e-3, **settings)
    chain = optax.chain(optax.add_decayed_weights(1e-3), opt)
    for o in (decayed, chain):
        low = o.update(grads, o.init(params), params, factors=extra["factors"])[0]
        assert_rel_close(low, o.update(grads, o.init(params), params, factors=_dense_only(extra["factors"]))[0], 1e-12)
    assert_rel_close(chain.update(grads, chain.init(params), params, factors=extra["factors"])[0],
                     opt.update(_changed(grads, params, "decay"), state, params, factors=extra["factors"])[0], 1e-12)


def _conds(jaxpr) -> int:
    """The number of cond equations in ``jaxpr``, nested jaxprs included."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "cond"
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                sub = getattr(sub, "jaxpr", sub)
                if isinstance(sub, Jaxpr):
                    count += _conds(sub)
    return count


def test_low_rank_stays_a_cond_under_vmap_and_each_run_steps_on_its_own_gradient(x64):
    """Two runs vmapped with the shared step: the low-rank choice stays a cond (one per low-rank layer,
    beside the refresh's), and each run's step is its own dense step, whether both gradients are their
    pass's own (low-rank for both) or one was changed (dense for both)."""
    from fnn.training.kronecker import all_runs
    net, loss, params, x, v = _setup(("tanh", "relu"), "softmax_cross_entropy", batch=3, sizes=WIDE)
    opt = fnn.kfac(1.0, 0.1, curvature_ema=0.0, damping_mode="pi")
    state = opt.init(params)
    passes = [fnn.curvature_pass(opt, net, loss, params, xb, v)[1:] for xb in (x, 1.5 * x[::-1])]
    lanes = jax.tree.map(lambda a, b: jnp.stack([a, b]), *[(g, e["factors"]) for g, e in passes])

    def run(g, f):
        return with_shared_step(opt, jnp.int32(0)).update(g, state, params, factors=f)[0]
    assert _conds(jax.make_jaxpr(jax.vmap(run))(*lanes).jaxpr) == 1 + LOW_RANK_LAYERS
    for changed in (False, True):
        g = jax.tree.map(lambda a: a.at[1].multiply(1.0 + 1e-3 * changed), lanes[0])
        got = jax.jit(jax.vmap(run))(g, lanes[1])
        for i in range(2):
            one = jax.tree.map(lambda a: a[i], (g, lanes[1]))
            assert_rel_close(jax.tree.map(lambda a: a[i], got), jax.jit(run)(one[0], _dense_only(one[1])), 1e-12)
    nested = jax.vmap(jax.vmap(all_runs))
    assert bool(jnp.all(nested(jnp.ones((2, 3), bool)))) and not bool(jnp.any(nested(jnp.eye(2, 3, dtype=bool))))
