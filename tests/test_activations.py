import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.core.activations import ACTIVATIONS


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivative_matches_jax_grad(name, x64):
    act = fnn.get_activation(name)
    z = jnp.linspace(-6.0, 6.0, 241)  # includes 0.0 exactly: the kink convention is pinned too
    expected = jax.vmap(jax.grad(act.fn))(z)
    np.testing.assert_allclose(act.grad(z, act.fn(z)), expected, rtol=1e-12, atol=1e-15)


def test_kink_conventions_follow_jax():
    zero = jnp.zeros((1,))
    assert fnn.get_activation("relu").grad(zero, zero)[0] == 0.0  # relu'(0) = 0
    lrelu = fnn.leaky_relu(0.1)
    assert lrelu.grad(zero, zero)[0] == 1.0 == jax.grad(lrelu.fn)(0.0)
    assert fnn.get_activation("step").grad(zero, zero)[0] == 0.0


@pytest.mark.parametrize("name", ["sigmoid", "softplus", "tanh"])
def test_stable_at_large_magnitude(name):
    act = fnn.get_activation(name)
    z = jnp.array([-1000.0, 1000.0])
    y = act.fn(z)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(act.grad(z, y)))
    if name == "sigmoid":
        np.testing.assert_array_equal(y, [0.0, 1.0])
    if name == "softplus":
        np.testing.assert_array_equal(y, [0.0, 1000.0])


def test_leaky_relu_by_name_and_slope():
    a = fnn.get_activation("leaky_relu(0.2)")
    np.testing.assert_allclose(a.fn(jnp.array([-1.0, 2.0])), [-0.2, 2.0])
    assert fnn.get_activation("leaky_relu").fn(jnp.array(-1.0)) == pytest.approx(-0.01)


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown activation 'rleu'.*relu.*sigmoid"):
        fnn.get_activation("rleu")
    with pytest.raises(ValueError, match="slope"):
        fnn.leaky_relu(1.5)
