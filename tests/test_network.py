import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn


def test_spec_is_static_and_hashable():
    a = fnn.MLP((4, 8, 3), ("relu", "identity"))
    b = fnn.MLP([4, 8, 3], "relu")
    assert a == b and hash(a) == hash(b)
    assert a.num_params == (4 + 1) * 8 + (8 + 1) * 3
    assert fnn.MLP.from_dict(a.to_dict()) == a
    # The spec is a static argument: jit retraces only when it changes.
    f = jax.jit(fnn.forward, static_argnums=0)
    p = fnn.init(jax.random.key(0), a)
    assert f(a, p, jnp.ones((2, 4))).shape == (2, 3)


@pytest.mark.parametrize("scheme,var", [("glorot", lambda i, o: 2 / (i + o)), ("he", lambda i, o: 2 / i),
                                        ("lecun", lambda i, o: 1 / i), ("normal", lambda i, o: 0.01**2)])
def test_init_variance(scheme, var):
    net = fnn.MLP((400, 300, 10), "tanh")
    params = fnn.init(jax.random.key(1), net, scheme)
    w = np.asarray(params[0]["W"])
    assert w.shape == (400, 300) and params[0]["b"].shape == (300,)
    assert np.all(params[0]["b"] == 0)
    # he_normal/lecun_normal are truncated normals scaled to the stated variance.
    assert w.var() == pytest.approx(var(400, 300), rel=0.05)


def test_init_dtype_follows_x64():
    net = fnn.MLP((2, 3, 1), "relu")
    assert fnn.init(jax.random.key(0), net)[0]["W"].dtype == jnp.float32
    with jax.enable_x64(True):
        assert fnn.init(jax.random.key(0), net)[0]["W"].dtype == jnp.float64


def test_init_accepts_initializer_and_rejects_unknown():
    net = fnn.MLP((2, 3, 1), "relu")
    p = fnn.init(jax.random.key(0), net, jax.nn.initializers.constant(0.5))
    assert np.all(p[1]["W"] == 0.5)
    with pytest.raises(ValueError, match=r"Unknown init scheme 'xavier_normal'.*glorot.*he"):
        fnn.init(jax.random.key(0), net, "xavier_normal")


def test_forward_with_cache_keeps_every_layer():
    net = fnn.MLP((3, 4, 2), ("tanh", "identity"))
    params = fnn.init(jax.random.key(0), net)
    x = jax.random.normal(jax.random.key(1), (5, 3))
    out, cache = fnn.forward_with_cache(net, params, x)
    z1 = x @ params[0]["W"] + params[0]["b"][None, :]
    np.testing.assert_allclose(cache.pre_activations[0], z1, rtol=1e-6)
    np.testing.assert_allclose(cache.outputs[0], jnp.tanh(z1), rtol=1e-6)
    assert cache.inputs[0] is x and cache.inputs[1] is cache.outputs[0]
    np.testing.assert_allclose(out, fnn.forward(net, params, x), rtol=1e-6)


def test_dropout_mask_is_inverted_and_keyed():
    net = fnn.MLP((3, 1000, 2), "relu")
    params = fnn.init(jax.random.key(0), net)
    x = jnp.ones((4, 3))
    _, cache = fnn.forward_with_cache(net, params, x, dropout=0.25, key=jax.random.key(2))
    mask = np.asarray(cache.masks[0])
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert (mask == 0).mean() == pytest.approx(0.25, abs=0.02)
    _, again = fnn.forward_with_cache(net, params, x, dropout=0.25, key=jax.random.key(2))
    np.testing.assert_array_equal(mask, again.masks[0])
    with pytest.raises(ValueError, match="needs a PRNG key"):
        fnn.forward_with_cache(net, params, x, dropout=0.5)


def test_bad_specs_and_params_raise_clearly():
    with pytest.raises(ValueError, match="one activation per layer"):
        fnn.MLP((2, 3, 1), ("relu",))
    with pytest.raises(ValueError, match="positive integers"):
        fnn.MLP((2, 0, 1), "relu")
    net = fnn.MLP((2, 3, 1), "relu")
    other = fnn.init(jax.random.key(0), fnn.MLP((2, 4, 1), "relu"))
    with pytest.raises(ValueError, match=r"Layer 1 params have W \(2, 4\).*needs W \(2, 3\)"):
        fnn.check_params(net, other)
    with pytest.raises(ValueError, match="has 2 layers but params has 1"):
        fnn.check_params(net, other[:1])
