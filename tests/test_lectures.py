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


def test_bias_as_a_weight_gives_the_same_gradients(x64):
    # The lectures' trick: y_0 = 1 prepended to the input and w_0j = b_j make the bias an
    # ordinary weight. A layer without bias on the augmented input has the same output and
    # gradients as (W, b): ∂R/∂w_0j = ∂R/∂b_j.
    import jax
    import jax.numpy as jnp

    import fnn

    key = jax.random.key(0)
    x = jax.random.normal(key, (7, 3), jnp.float64)
    v = jnp.array([0, 1, 1, 0, 1, 0, 0])
    net = fnn.MLP((3, 2), ("identity",))
    params = [{"W": jax.random.normal(jax.random.key(1), (3, 2), jnp.float64),
               "b": jnp.array([0.3, -0.2], jnp.float64)}]
    augmented = [{"W": jnp.concatenate([params[0]["b"][None], params[0]["W"]]), "b": jnp.zeros(2, jnp.float64)}]
    net_aug = fnn.MLP((4, 2), ("identity",))
    x_aug = jnp.concatenate([jnp.ones((7, 1), jnp.float64), x], 1)
    value, grads = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v)
    value_aug, grads_aug = fnn.value_and_grad(net_aug, "softmax_cross_entropy", augmented, x_aug, v)
    assert float(value) == pytest.approx(float(value_aug), rel=1e-14)
    np.testing.assert_allclose(grads_aug[0]["W"][0], grads[0]["b"], rtol=1e-13)
    np.testing.assert_allclose(grads_aug[0]["W"][1:], grads[0]["W"], rtol=1e-13)


def test_trace_records_every_message_of_the_backward_pass(x64):
    import jax
    import jax.numpy as jnp

    import fnn

    net = fnn.MLP((2, 3, 2, 2), ("sigmoid", "tanh", "identity"))
    params = fnn.init(jax.random.key(0), net)
    x, v = jax.random.normal(jax.random.key(1), (4, 2), jnp.float64), jnp.array([0, 1, 1, 0])
    t = fnn.trace(net, "softmax_cross_entropy", params, x, v)
    _, grads = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v, method="autodiff")
    assert [l.layer for l in t.layers] == [1, 2, 3]
    for layer, g in zip(t.layers, grads):
        np.testing.assert_allclose(layer.grad_W, g["W"], rtol=1e-12)
        np.testing.assert_allclose(layer.grad_b, g["b"], rtol=1e-12)
    for lower, upper in zip(t.layers, t.layers[1:]):  # the message sent down is the one that arrives
        np.testing.assert_array_equal(upper.delta_in, lower.delta_y)
        np.testing.assert_array_equal(upper.y_in, lower.y)
    assert "layer 3  δz" in str(t) and t._repr_html_().count("<tr>") == 1 + 10 * 3
