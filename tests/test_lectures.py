"""The lectures' worked examples, computed through fnn's own layers, losses and backward pass."""

import jax.numpy as jnp
import numpy as np
import pytest

import fnn


def _layer(w, b=None):
    w = jnp.asarray(w, jnp.float64)
    return {"W": w, "b": jnp.zeros(w.shape[1], jnp.float64) if b is None else jnp.asarray(b, jnp.float64)}


def test_sum_times_product(x64):
    # f(x, y, z) = (x + y) z at (-2, 5, -4). The sum q = x + y is one identity layer
    # with W = [1, 1]ᵀ; f = q z, so the message arriving at q is ∂f/∂q = z.
    x, y, z = -2.0, 5.0, -4.0
    net = fnn.MLP((2, 1), ("identity",))
    params = [_layer([[1.0], [1.0]])]
    q, cache = fnn.forward_with_cache(net, params, jnp.array([[x, y]]))
    assert float(q[0, 0]) == 3.0 and float(q[0, 0]) * z == -12.0
    _, d_xy = fnn.backward_with_input_grad(net, params, cache, jnp.array([[z]]))
    df_dz = float(q[0, 0])
    assert d_xy.tolist() == [[-4.0, -4.0]] and df_dz == 3.0


def test_logistic_loss(x64):
    # l = -log σ(w·x) with x = (1, 1, 1), w = (1, 1, -1.5): one identity layer and
    # the binary cross-entropy on its logit with target 1.
    net = fnn.MLP((3, 1), ("identity",))
    params = [_layer([[1.0], [1.0], [-1.5]])]
    x = jnp.ones((1, 3))
    loss, grads = fnn.value_and_grad(net, "binary_cross_entropy", params, x, jnp.array([1.0]))
    assert float(loss) == pytest.approx(np.log1p(np.exp(-0.5)), rel=1e-15)
    assert round(float(loss), 5) == 0.47408  # the slide rounds intermediates and shows 0.4740
    assert np.round(np.asarray(grads[0]["W"][:, 0]), 4).tolist() == [-0.3775] * 3


def test_chain_rule_example(x64):
    # z1 = 2x, z2 = z1², z3 = e^{z2}, y = log z3 at x = 0.5: dy/dx = 4.
    # Each step is a width-1 layer; the non-linear ones are user-defined activations
    # with their hand-written derivatives.
    square = fnn.Activation("square", lambda z: z * z, lambda z, y: 2 * z)
    exp = fnn.Activation("exp", jnp.exp, lambda z, y: y)
    log = fnn.Activation("log", jnp.log, lambda z, y: 1 / z)
    net = fnn.MLP((1, 1, 1, 1, 1), ("identity", square, exp, log))
    params = [_layer([[2.0]]), _layer([[1.0]]), _layer([[1.0]]), _layer([[1.0]])]
    y, cache = fnn.forward_with_cache(net, params, jnp.array([[0.5]]))
    assert [float(z[0, 0]) for z in cache.outputs] == pytest.approx([1.0, 1.0, np.e, 1.0])
    _, dy_dx = fnn.backward_with_input_grad(net, params, cache, jnp.ones((1, 1)))
    assert float(dy_dx[0, 0]) == pytest.approx(4.0, rel=1e-15)
