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


def test_tanh_is_a_shifted_scaled_sigmoid(x64):
    # Deck 001: tanh x = 2σ(2x) − 1, so tanh′(x) = 4σ′(2x); fnn's two activations and their derivatives agree.
    tanh, sigmoid = fnn.get_activation("tanh"), fnn.get_activation("sigmoid")
    z = jnp.linspace(-8.0, 8.0, 161)
    # Both sides are differences of numbers near 1 (2σ − 1, 1 − tanh², σ(1 − σ)), so they agree to a few
    # ulps of 1, not of the result: atol in units of float64's eps.
    eps = np.finfo(np.float64).eps
    np.testing.assert_allclose(tanh.fn(z), 2 * sigmoid.fn(2 * z) - 1, rtol=0, atol=4 * eps)
    derivative = 4 * sigmoid.grad(2 * z, sigmoid.fn(2 * z))
    np.testing.assert_allclose(tanh.grad(z, tanh.fn(z)), derivative, rtol=0, atol=8 * eps)
