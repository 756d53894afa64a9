"""What a new user of the second-order optimizers meets: Newton's size limit, K-FAC's default damping,
damping 0 refused, the divergence advice, losses without output curvature, and K-FAC inside
optax.chain / optax.inject_hyperparams."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.analysis.curvature import curvature_of


def _moons(hidden=16):
    data = fnn.data.load("moons", seed=0)
    net = fnn.MLP((2, hidden, 2), ("relu", "identity"))
    return data, net, fnn.init(jax.random.key(0), net, "he")


def test_newton_refuses_a_network_too_big_for_its_dense_hessian_before_any_product():
    net = fnn.MLP((64, 128, 128, 10), ("relu", "relu", "identity"))  # fnn train's default: P = 26,122
    params = fnn.init(jax.random.key(0), net, "he")
    with pytest.raises(ValueError, match=r"P = 26,122 parameters \(2,729,435,536 bytes.*smaller network, "
                                         r"gauss_newton or kfac") as err:
        fnn.newton().init(params)
    assert "\n" not in str(err.value)

    def hvp(u):
        raise AssertionError("no Hessian-vector product may run")
    with pytest.raises(ValueError, match="max_parameters=5,000"):
        fnn.newton().update(params, None, params, hvp=hvp)
    assert fnn.newton(max_parameters=30_000).init(params).count == 0  # raised knowingly
    with pytest.raises(ValueError, match="max_parameters"):
        fnn.newton(max_parameters=0)


def test_fnn_train_newton_on_the_default_network_is_one_line_exit_2(tmp_path, capsys):
    from fnn.cli.main import main

    assert main(["train", "--optimizer", "newton", "--epochs", "1", "--no-progress", "--no-plot",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "P = 26,122" in err[0] and "gauss_newton or kfac" in err[0], err


@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_kfac_default_damping_trains_moons_where_the_old_one_diverged(name):
    """The default damping (1) trains moons with 16 hidden units at η = 0.1 (test accuracy 0.945 in
    30 epochs); 1e-3, the old default, reached a test loss of 165,331 (K-FAC) or non-finite (EKFAC)."""
    data, net, params = _moons()
    assert curvature_of(fnn.get_optimizer(name, 0.1)) is not None
    assert inspect.signature(fnn.kfac).parameters["damping"].default == 1.0

    def run(**settings):
        _, history = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, key=jax.random.key(1),
                             optimizer=fnn.get_optimizer(name, 0.1, **settings), epochs=30, batch_size=32,
                             test=(data.x_test, data.y_test), progress=False)
        return history
    history = run()
    assert history["test_accuracy"][-1] >= 0.92 and history["test_loss"][-1] < 0.25, history["test_loss"]
    try:
        old = run(damping=1e-3)["test_loss"][-1]
    except fnn.NonFiniteLossError:
        old = np.inf
    assert not old < 1.0, old


def test_damping_zero_is_refused_where_the_method_needs_it():
    for build, match in [(lambda: fnn.kfac(damping=0.0), "fnn.kfac needs damping > 0"),
                         (lambda: fnn.kfac(damping=0.0, ekfac=True), "fnn.kfac needs damping > 0"),
                         (lambda: fnn.ggn_diag_precond(damping=0.0), "fnn.ggn_diag_precond needs damping > 0"),
                         (lambda: fnn.gauss_newton(damping=0.0), "fnn.gauss_newton needs damping > 0: Levenberg"),
                         (lambda: fnn.get_optimizer("kfac", 0.1, damping=0), "damping > 0")]:
        with pytest.raises(ValueError, match=match):
            build()
    fnn.kfac(damping=0.0, l2_reg=1e-3)  # l2_reg adds to the damping
    fnn.newton(damping=0.0)  # the true Hessian, positive definite near a minimum
    with pytest.raises(ValueError, match="damping must be a finite number >= 0"):
        fnn.kfac(damping=-1.0, l2_reg=2.0)


def test_a_diverging_second_order_run_says_raise_the_damping():
    net = fnn.MLP((2, 16, 1), ("tanh", "identity"))
    params = fnn.init(jax.random.key(0), net, "he")
    x = jax.random.normal(jax.random.key(1), (128, 2))
    v = 3 * jnp.sin(x[:, :1])
    kwargs = dict(key=jax.random.key(1), epochs=3, batch_size=32, progress=False)
    for opt in (fnn.kfac(1e3, 1e-6), fnn.ggn_diag_precond(1e3, 1e-6)):
        with pytest.raises(fnn.NonFiniteLossError, match="Raise the damping or lower the learning rate"):
            fnn.fit(net, "mse", params, x, v, optimizer=opt, **kwargs)
    with pytest.raises(fnn.NonFiniteLossError, match="Lower the learning rate or check the data") as err:
        fnn.fit(net, "mse", params, x, v, optimizer=optax.sgd(1e6), **kwargs)
    assert "damping" not in str(err.value)


@pytest.mark.parametrize("loss", ["mae", "mape"])
def test_a_loss_without_output_curvature_warns_for_ggn_methods_not_newton(loss):
    net = fnn.MLP((3, 4, 2), ("tanh", "identity"))
    params = fnn.init(jax.random.key(0), net, "glorot")
    x, v = jax.random.normal(jax.random.key(1), (8, 3)), jax.random.normal(jax.random.key(2), (8, 2)) + 3.0
    for opt in (fnn.kfac(), fnn.ggn_diag_precond(), fnn.gauss_newton()):
        with pytest.warns(UserWarning, match=f"Loss {loss} has zero curvature.*gradient divided by the damping"):
            fnn.make_update_fn(net, loss, opt)
        with pytest.warns(UserWarning, match=f"Loss {loss} has zero curvature"):
            fnn.curvature_pass(opt, net, loss, params, x, v)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fnn.make_update_fn(net, loss, fnn.newton())
        fnn.make_update_fn(net, "mse", fnn.kfac())


def _batch():
    net = fnn.MLP((3, 5, 3), ("tanh", "identity"))
    params = fnn.init(jax.random.key(0), net, "glorot")
    x = jax.random.normal(jax.random.key(1), (16, 3))
    return net, params, x, jnp.argmax(x, axis=1)


def test_fnn_chain_keeps_the_curvature_and_equals_clipping_then_kfac():
    net, params, x, v = _batch()
    loss = "softmax_cross_entropy"
    clip, kfac = optax.clip_by_global_norm(0.1), fnn.kfac(0.1, 0.3)
    opt = fnn.chain(clip, kfac)
    assert curvature_of(opt) == curvature_of(kfac)
    _, grads, extra = fnn.curvature_pass(opt, net, loss, params, x, v)
    updates, _ = opt.update(grads, opt.init(params), params, **extra)
    clipped, _ = clip.update(grads, clip.init(params))
    assert optax.tree.norm(grads) > 0.1  # the clipping acts
    expected, _ = kfac.update(clipped, kfac.init(params), params, **extra)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    _, history = fnn.fit(net, loss, params, x, v, key=jax.random.key(1), optimizer=opt, epochs=3, batch_size=8,
                         progress=False)
    assert np.all(np.isfinite(history["train_loss"]))
    with pytest.raises(ValueError, match="one kind of curvature"):
        fnn.chain(fnn.kfac(), fnn.newton())


def test_optax_chain_and_inject_hyperparams_say_what_to_do():
    net, params, x, v = _batch()
    loss = "softmax_cross_entropy"
    plain = optax.chain(optax.clip_by_global_norm(1.0), fnn.kfac(0.1, 0.3))
    with pytest.raises(ValueError, match=r"fnn.chain\(\.\.\.\) in place of optax.chain"):
        fnn.curvature_pass(plain, net, loss, params, x, v)
    with pytest.raises(ValueError, match=r"fnn.kfac got no factors=.*build the chain with fnn.chain"):
        fnn.fit(net, loss, params, x, v, key=jax.random.key(1), optimizer=plain, epochs=1, batch_size=8,
                progress=False)
    with pytest.raises(ValueError, match=r"static_args=\('inverse_update_period', 'mc_samples',\)"):
        optax.inject_hyperparams(fnn.kfac)(learning_rate=0.1, damping=0.3).init(params)
    injected = optax.inject_hyperparams(fnn.kfac, static_args=("inverse_update_period", "mc_samples"))(
        learning_rate=0.1, damping=0.3)
    opt = fnn.chain(injected, curvature=fnn.kfac().update.curvature)
    _, history = fnn.fit(net, loss, params, x, v, key=jax.random.key(1), optimizer=opt, epochs=3, batch_size=8,
                         progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
