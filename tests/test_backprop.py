"""The hand-written backward pass against jax.grad, for every activation, loss and depth."""

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given

import fnn
from jax.flatten_util import ravel_pytree
from fnn.core.activations import ACTIVATIONS
from fnn.core.losses import LOSSES
from helpers import assert_rel_close, targets_for

# Jitted entry point for tests that do not test jit itself: one compilation per case
# is much cheaper than op-by-op dispatch of fresh shapes.
jit_value_and_grad = jax.jit(
    fnn.value_and_grad, static_argnums=(0, 1), static_argnames=("method", "l2", "dropout")
)

DEPTHS = {0: (5, 3), 1: (5, 6, 3), 3: (5, 6, 4, 7, 3)}


def _problem(activation, loss_name, depth, dtype, batch=8, seed=0):
    sizes = DEPTHS[depth]
    net = fnn.MLP(sizes, (activation,) * (len(sizes) - 1))
    loss = fnn.get_loss(loss_name)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = fnn.init(k1, net, "glorot", dtype=dtype)
    x = jax.random.normal(k2, (batch, sizes[0]), dtype)
    v = targets_for(loss, k3, batch, sizes[-1], dtype)
    return net, loss, params, x, v


def _compare(variant, activation, loss_name, dtype, tol):
    # All depths in one (possibly jitted) function: one compilation per case.
    problems = [_problem(activation, loss_name, depth, dtype) for depth in sorted(DEPTHS)]
    nets, loss = [p[0] for p in problems], problems[0][1]
    args = [p[2:] for p in problems]

    @variant
    def both(args):
        return [
            (fnn.value_and_grad(net, loss, p, x, v, method="manual"),
             fnn.value_and_grad(net, loss, p, x, v, method="autodiff"))
            for net, (p, x, v) in zip(nets, args)
        ]

    for depth, ((lm, gm), (la, ga)) in zip(sorted(DEPTHS), both(args)):
        assert gm[0]["W"].dtype == dtype
        assert_rel_close(lm, la, tol)
        assert_rel_close(gm, ga, tol)


_MATRIX = [dict(activation=a, loss_name=l) for a in sorted(ACTIVATIONS) for l in sorted(LOSSES)]


class ManualEqualsAutodiff(chex.TestCase):
    """Every activation x every loss x depths 0, 1, 3; float64 and float32; jit and no jit."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*_MATRIX)
    def test_float64(self, activation, loss_name):
        with jax.enable_x64(True):
            _compare(self.variant, activation, loss_name, jnp.float64, 1e-10)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*_MATRIX)
    def test_float32(self, activation, loss_name):
        _compare(self.variant, activation, loss_name, jnp.float32, 1e-5)


@given(
    sizes=st.lists(st.integers(1, 9), min_size=2, max_size=6),
    batch=st.integers(1, 17),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    loss_name=st.sampled_from(sorted(LOSSES)),
    seed=st.integers(0, 2**16),
)
def test_random_architectures(sizes, batch, activation, loss_name, seed):
    with jax.enable_x64(True):
        net = fnn.MLP(sizes, activation)
        loss = fnn.get_loss(loss_name)
        k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
        params = fnn.init(k1, net, "he")
        x = jax.random.normal(k2, (batch, sizes[0]))
        v = targets_for(loss, k3, batch, sizes[-1], jnp.float64)
        lm, gm = jit_value_and_grad(net, loss, params, x, v, method="manual")
        la, ga = jit_value_and_grad(net, loss, params, x, v, method="autodiff")
        assert_rel_close(lm, la, 1e-10)
        assert_rel_close(gm, ga, 1e-10)


def test_finite_differences_agree_elementwise(x64):
    # Every scalar parameter, one central difference each, in float64.
    net, loss, params, x, v = _problem("tanh", "softmax_cross_entropy", 1, jnp.float64)
    _, grads = fnn.value_and_grad(net, loss, params, x, v)
    flat, unravel = ravel_pytree(params)
    risk = jax.jit(lambda f: fnn.risk(loss, fnn.forward(net, unravel(f), x), v))
    eps = 1e-6
    basis = jnp.eye(flat.size, dtype=flat.dtype) * eps
    fd = (jax.vmap(lambda e: risk(flat + e))(basis) - jax.vmap(lambda e: risk(flat - e))(basis)) / (2 * eps)
    np.testing.assert_allclose(fd, ravel_pytree(grads)[0], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("l2,dropout", [(0.1, 0.0), (0.0, 0.3), (0.05, 0.5)])
def test_regularised_gradients_match_autodiff(l2, dropout, x64):
    net, loss, params, x, v = _problem("relu", "softmax_cross_entropy", 3, jnp.float64, batch=16)
    kwargs = dict(l2=l2, dropout=dropout, key=jax.random.key(7))
    lm, gm = jit_value_and_grad(net, loss, params, x, v, method="manual", **kwargs)
    la, ga = jit_value_and_grad(net, loss, params, x, v, method="autodiff", **kwargs)
    assert_rel_close(lm, la, 1e-12)
    assert_rel_close(gm, ga, 1e-10)
    plain = jit_value_and_grad(net, loss, params, x, v)[0]
    assert float(lm) != pytest.approx(float(plain))  # the regulariser really acted


def test_bridged_loss_runs_the_manual_backward_under_jit_and_vmap(x64):
    net, loss, params, x, v = _problem("sigmoid", "softmax_cross_entropy", 1, jnp.float64)
    objective = fnn.bridged_loss(net, loss)
    expected = fnn.value_and_grad(net, loss, params, x, v, method="autodiff")[1]
    assert_rel_close(jax.jit(jax.grad(objective))(params, x, v), expected, 1e-12)
    # vmap over examples: per-example gradients, whose mean is the batch gradient.
    per_example = jax.vmap(jax.grad(objective), in_axes=(None, 0, 0))(params, x, v)
    assert_rel_close(jax.tree.map(lambda g: g.mean(0), per_example), expected, 1e-12)
    # The input gradient is right too.
    dx = jax.grad(objective, argnums=1)(params, x, v)
    dx_ref = jax.grad(lambda x: fnn.risk(loss, fnn.forward(net, params, x), v))(x)
    assert_rel_close(dx, dx_ref, 1e-12)


def test_bridged_loss_really_calls_the_hand_written_backward(x64):
    # A deliberately wrong derivative shows up in jax.grad of the bridge, so the
    # bridge is not silently falling back to autodiff.
    wrong = fnn.Activation("wrong_tanh", jnp.tanh, lambda z, y: 2 * (1 - y * y))
    net = fnn.MLP((3, 4, 2), (wrong, "identity"))
    params = fnn.init(jax.random.key(0), net)
    x, v = jnp.ones((2, 3)), jnp.array([0, 1])
    bridged = jax.grad(fnn.bridged_loss(net, "softmax_cross_entropy"))(params, x, v)
    auto = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v, method="autodiff")[1]
    np.testing.assert_allclose(bridged[0]["W"], 2 * auto[0]["W"], rtol=1e-12)
    np.testing.assert_allclose(bridged[1]["W"], auto[1]["W"], rtol=1e-12)


def test_network_bridge_matches_autodiff(x64):
    net, loss, params, x, v = _problem("softplus", "mse", 3, jnp.float64)
    apply = fnn.bridge(net)
    f = lambda p: jnp.sum(jnp.sin(apply(p, x)))  # any loss on top
    g = lambda p: jnp.sum(jnp.sin(fnn.forward(net, p, x)))
    assert_rel_close(jax.jit(jax.grad(f))(params), jax.grad(g)(params), 1e-12)


def test_manual_path_never_calls_autodiff():
    import inspect
    import fnn.core.backprop as bp
    import fnn.core.network as nw
    for fn in (bp.backward_with_input_grad, bp.backward_step, bp.manual_value_and_grad, bp.Objective.evaluate,
               nw.forward_with_cache):
        src = inspect.getsource(fn)
        for banned in ("jax.grad", "jax.vjp", "jax.jacobian", "value_and_grad("):
            assert banned not in src.split('"""')[-1], (fn.__name__, banned)


def test_bad_inputs_raise_before_computing():
    net = fnn.MLP((3, 4, 2), "relu")
    params = fnn.init(jax.random.key(0), net)
    x, v = jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1])
    with pytest.raises(ValueError, match="last axis must be the 3 input features"):
        fnn.value_and_grad(net, "softmax_cross_entropy", params, jnp.ones((5, 4)), v)
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 2\)"):
        fnn.value_and_grad(net, "softmax_cross_entropy", params, x, jnp.array([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError, match="5 rows but the inputs have"):
        fnn.value_and_grad(net, "softmax_cross_entropy", params, x[:4], v)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fnn.value_and_grad(net, "softmax_cross_entropy", params, x.at[0, 0].set(jnp.nan), v)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        fnn.value_and_grad(net, "binary_cross_entropy", params, x, jnp.full((5, 2), 2.0))
    with pytest.raises(ValueError, match="Unknown gradient method 'numeric'"):
        fnn.value_and_grad(net, "mse", params, x, jnp.ones((5, 2)), method="numeric")
    with pytest.raises(ValueError, match="needs 2 target value"):
        fnn.value_and_grad(net, "mse", params, x, jnp.ones((5, 3)))
