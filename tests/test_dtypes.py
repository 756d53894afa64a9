"""Hand-written gradients take their primals' dtypes, as jax.grad's do (float32 parameters fed
float64 inputs get float32 gradients; the input's cotangent is float64), for every public function
that returns a gradient or something shaped like the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn

LOSS = "softmax_cross_entropy"


@pytest.fixture(params=[(jnp.float32, jnp.float64), (jnp.float64, jnp.float32)], ids=["f32-params", "f64-params"])
def mixed(request):
    """Parameters in one dtype, inputs in the other; x64 on, standard promotion (as a user has it)."""
    p_dtype, x_dtype = request.param
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        net = fnn.MLP((3, 5, 4, 2), ("tanh", "relu", "identity"))
        params = fnn.init(jax.random.key(0), net, "glorot", dtype=p_dtype)
        x = jax.random.normal(jax.random.key(1), (6, 3), x_dtype)
        yield net, params, x, jnp.arange(6) % 2


def _dtypes(tree):
    return jax.tree.map(lambda a: jnp.result_type(a), tree)


def _reference(net, params, x, v):
    # jax.grad of the same risk, with respect to the parameters and the inputs.
    risk = lambda p, x: fnn.risk(LOSS, fnn.forward(net, p, x), v)
    return jax.grad(risk, argnums=(0, 1))(params, x)


def test_value_and_grad_and_backward(mixed):
    net, params, x, v = mixed
    want, want_x = _reference(net, params, x, v)
    for method in ("manual", "autodiff"):
        _, g = fnn.value_and_grad(net, LOSS, params, x, v, method=method, l2=0.1)
        assert _dtypes(g) == _dtypes(want), method
    out, cache = fnn.forward_with_cache(net, params, x)
    dout = fnn.risk_grad(LOSS, out, v)
    assert _dtypes(fnn.backward(net, params, cache, dout)) == _dtypes(want)
    grads, dx = fnn.backward_with_input_grad(net, params, cache, dout)
    assert _dtypes(grads) == _dtypes(want) and dx.dtype == want_x.dtype == x.dtype and dx.shape == x.shape
    np.testing.assert_allclose(dx, want_x, rtol=1e-5, atol=1e-7)
    step = fnn.backward_step(net, params, cache, 1, dout @ params[2]["W"].T.astype(dout.dtype))
    assert _dtypes(step.grads) == _dtypes(want[1]) and step.delta_in.dtype == cache.inputs[1].dtype


def test_the_custom_vjp_bridges(mixed):
    net, params, x, v = mixed
    want, want_x = _reference(net, params, x, v)
    got, got_x = jax.grad(fnn.bridged_loss(net, LOSS), argnums=(0, 1))(params, x, v)
    assert _dtypes(got) == _dtypes(want) and got_x.dtype == want_x.dtype
    apply = fnn.bridge(net)
    got, got_x = jax.grad(lambda p, x: fnn.risk(LOSS, apply(p, x), v), argnums=(0, 1))(params, x)
    assert _dtypes(got) == _dtypes(want) and got_x.dtype == want_x.dtype
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Float targets (soft labels) get a zero cotangent of their own dtype.
    soft = jax.nn.one_hot(v, 2, dtype=x.dtype)
    g_soft = jax.grad(fnn.bridged_loss(net, LOSS), argnums=2)(params, x, soft)
    assert g_soft.dtype == soft.dtype and g_soft.shape == soft.shape


def test_second_order_and_per_example_quantities(mixed):
    net, params, x, v = mixed
    want = _dtypes(_reference(net, params, x, v)[0])
    instance = lambda p, xb, vb: fnn.risk(LOSS, fnn.forward(net, p, xb[None]), vb[None])
    per_example_want = _dtypes(jax.vmap(jax.grad(instance), in_axes=(None, 0, 0))(params, x, v))
    assert _dtypes(fnn.per_example_grads(net, LOSS, params, x, v)) == per_example_want
    p_dtype = jnp.result_type(params[0]["W"])
    assert fnn.per_example_grad_norms(net, LOSS, params, x, v).dtype == p_dtype
    for layer in fnn.per_example_grad_norms(net, LOSS, params, x, v, per_layer=True):
        assert layer["W"].dtype == layer["b"].dtype == p_dtype
    for name, moment in fnn.gradient_moments(net, LOSS, params, x, v).items():
        assert _dtypes(moment) == want, name
    assert _dtypes(fnn.ggn_diagonal(net, LOSS, params, x, v)) == want
    vector = jax.tree.map(jnp.ones_like, params)
    assert _dtypes(fnn.ggn_vp(net, LOSS, params, x, v, vector)) == want
    assert _dtypes(fnn.hvp(net, LOSS, params, x, v, vector)) == want
    _, clipped, _ = fnn.privacy.clipped_value_and_grad(fnn.Objective(net, LOSS), params, x, v, clip_norm=0.1,
                                                       noise_multiplier=1.0, key=jax.random.key(0))
    assert _dtypes(clipped) == want
