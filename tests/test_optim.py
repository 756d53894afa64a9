import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import fnn
from helpers import assert_rel_close


def _setup(dtype):
    net = fnn.MLP((6, 16, 16, 3), "tanh")
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = fnn.init(k1, net, "glorot", dtype=dtype)
    x = jax.random.normal(k2, (32, 6), dtype)
    v = jax.random.randint(k3, (32,), 0, 3)
    return net, params, x, v


@pytest.mark.parametrize("name", ["gd", "momentum", "adam"])
def test_manual_and_autodiff_steps_give_the_same_parameters(name, x64):
    net, params, x, v = _setup(jnp.float64)
    results = {}
    for method in ("manual", "autodiff"):
        opt = fnn.get_optimizer(name, 0.05)
        step = fnn.make_update_step(net, "softmax_cross_entropy", opt, method, l2=1e-3)
        p = jax.tree.map(jnp.array, params)
        state = opt.init(p)
        for _ in range(25):
            p, state, metrics = step(p, state, x, v)
        results[method] = p
    assert_rel_close(results["manual"], results["autodiff"], 1e-10)
    # And the parameters really moved.
    assert float(jnp.abs(results["manual"][0]["W"] - params[0]["W"]).max()) > 1e-3


def test_plain_gd_is_theta_minus_eta_grad():
    net, params, x, v = _setup(jnp.float32)
    _, grads = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v)
    step = fnn.make_update_step(net, "softmax_cross_entropy", fnn.plain_gd(0.1))
    new, _, metrics = step(jax.tree.map(jnp.array, params), optax.EmptyState(), x, v)
    assert_rel_close(new, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), 1e-6)
    assert metrics["loss"].shape == ()


def test_update_step_compiles_once():
    net, params, x, v = _setup(jnp.float32)
    opt = optax.sgd(0.1)
    step = chex.assert_max_traces(
        fnn.optim.make_update_fn(net, "softmax_cross_entropy", opt), n=1
    )
    step = jax.jit(step, donate_argnums=(0, 1))
    p, s = jax.tree.map(jnp.array, params), opt.init(params)
    for _ in range(5):
        p, s, _ = step(p, s, x, v)


def test_bad_optimizer_settings():
    with pytest.raises(ValueError, match="learning rate must be positive"):
        fnn.get_optimizer("sgd", 0.0)
    with pytest.raises(ValueError, match="Unknown optimizer 'adamax'.*adam"):
        fnn.get_optimizer("adamax")
