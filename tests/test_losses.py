import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.core.losses import LOSSES
from helpers import targets_for


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_matches_jax_grad(name, x64):
    loss = fnn.get_loss(name)
    k1, k2 = jax.random.split(jax.random.key(0))
    y = jax.random.normal(k1, (6, 4), jnp.float64)
    v = targets_for(loss, k2, 6, 4, jnp.float64)
    expected = jax.grad(lambda y: fnn.risk(loss, y, v))(y)
    np.testing.assert_allclose(fnn.risk_grad(loss, y, v), expected, rtol=1e-12, atol=1e-15)


def test_softmax_cross_entropy_labels_equal_one_hot():
    z = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    labels = jnp.array([2, 0])
    one_hot = jax.nn.one_hot(labels, 3)
    loss = fnn.get_loss("softmax_cross_entropy")
    np.testing.assert_allclose(fnn.risk(loss, z, labels), fnn.risk(loss, z, one_hot), rtol=1e-6)
    np.testing.assert_allclose(fnn.risk_grad(loss, z, labels), fnn.risk_grad(loss, z, one_hot), rtol=1e-6)
    # The fused gradient is (softmax(z) - onehot) / B.
    np.testing.assert_allclose(fnn.risk_grad(loss, z, labels), (jax.nn.softmax(z) - one_hot) / 2, rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "binary_cross_entropy"])
def test_cross_entropy_stable_at_logit_1000(name):
    loss = fnn.get_loss(name)
    z = jnp.array([[1000.0, -1000.0], [-1000.0, 1000.0]])
    v = jnp.array([1, 0]) if name == "softmax_cross_entropy" else jnp.array([[0.0, 1.0], [1.0, 0.0]])
    value, grad = fnn.risk(loss, z, v), fnn.risk_grad(loss, z, v)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Every example is confidently wrong by a margin of 2000 (softmax) or 1000 per unit (sigmoid).
    assert float(value) == pytest.approx(2000.0 if name == "softmax_cross_entropy" else 2000.0)


def test_regression_values():
    y, v = jnp.array([[1.0, 3.0]]), jnp.array([[0.0, 1.0]])
    assert fnn.risk(fnn.get_loss("mse"), y, v) == pytest.approx(0.5 * (1 + 4))
    assert fnn.risk(fnn.get_loss("mae"), y, v) == pytest.approx(3.0)
    assert fnn.risk(fnn.huber(1.0), y, v) == pytest.approx(0.5 + (2 - 0.5))
    assert fnn.risk(fnn.get_loss("mape"), jnp.array([[2.0]]), jnp.array([[4.0]])) == pytest.approx(50.0)


def test_kinks_follow_jax_grad():
    zero_residual = jnp.array([[1.0]])
    for name in ("mae", "mape", "huber"):
        loss = fnn.get_loss(name)
        expected = jax.grad(lambda y: fnn.risk(loss, y, zero_residual))(zero_residual)
        np.testing.assert_array_equal(fnn.risk_grad(loss, zero_residual, zero_residual), expected)


def test_weights_mask_examples():
    loss = fnn.get_loss("mse")
    y = jnp.array([[1.0], [2.0], [100.0]])
    v = jnp.zeros((3, 1))
    w = jnp.array([1.0, 1.0, 0.0])
    assert fnn.risk(loss, y, v, w) == pytest.approx(fnn.risk(loss, y[:2], v[:2]))
    np.testing.assert_allclose(fnn.risk_grad(loss, y, v, w)[:2], fnn.risk_grad(loss, y[:2], v[:2]))
    assert fnn.risk_grad(loss, y, v, w)[2, 0] == 0.0


def test_unknown_loss_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown loss 'cross_entropy'.*mse.*softmax_cross_entropy"):
        fnn.get_loss("cross_entropy")


def test_cross_entropies_equal_the_slide_formulas_at_ordinary_values(x64):
    # Deck 001: BCE l(a, y) = −y log σ(a) − (1 − y) log(1 − σ(a)), at y = 0 and y = 1.
    # Two examples of one output unit, logits 0.7 (y = 0) and −0.4 (y = 1).
    a, y = jnp.array([[0.7], [-0.4]]), jnp.array([[0.0], [1.0]])
    s = 1 / (1 + np.exp(-np.array([0.7, -0.4])))
    bce = -np.array([0.0, 1.0]) * np.log(s) - np.array([1.0, 0.0]) * np.log(1 - s)
    np.testing.assert_allclose(fnn.get_loss("binary_cross_entropy").value(a, y), bce, rtol=1e-14)
    assert float(fnn.risk("binary_cross_entropy", a, y)) == pytest.approx(bce.mean(), rel=1e-14)
    assert round(bce.mean(), 4) == 1.0081 and round(bce[0], 4) == round(np.log1p(np.exp(0.7)), 4) == 1.1032
    # Multi-class: l(a, y) = −a_y + log Σ_k exp a_k, with a label.
    logits = jnp.array([[1.2, -0.3, 0.5], [0.1, 0.4, -1.0]])
    labels = jnp.array([0, 2])
    by_formula = -np.asarray(logits)[[0, 1], [0, 2]] + np.log(np.exp(np.asarray(logits)).sum(1))
    np.testing.assert_allclose(fnn.get_loss("softmax_cross_entropy").value(logits, labels), by_formula, rtol=1e-14)
    # Soft targets p: H(p, q) = −Σ_k p_k log q_k with q = softmax(a).
    p = jnp.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    H = -(np.asarray(p) * np.log(np.asarray(jax.nn.softmax(logits)))).sum(1)
    np.testing.assert_allclose(fnn.get_loss("softmax_cross_entropy").value(logits, p), H, rtol=1e-14)
