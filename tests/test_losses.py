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


def _accurate_ce_hessian(z):
    # diag(p) − p pᵀ entry by entry, each to relative precision: H_ii = p_i Σ_{j≠i} p_j (not p_i − p_i²).
    p = jax.nn.softmax(z, axis=-1)
    eye = jnp.eye(z.shape[-1], dtype=bool)
    others = jnp.sum(jnp.where(eye, 0.0, p[..., None, :]), axis=-1)
    return jnp.where(eye, (p * others)[..., None, :], -p[..., :, None] * p[..., None, :])


def test_softmax_cross_entropy_hessian_factor_has_c_minus_1_columns(x64):
    loss = fnn.get_loss("softmax_cross_entropy")
    key = jax.random.key(3)
    ordinary = 3 * jax.random.normal(key, (8, 10), jnp.float64)
    # One p ≈ 1 (and p ≈ 1e-18), p ≈ 1e-30 against O(1), a tie, logits ±1000, p ≈ 1 in the last class.
    extreme = jnp.array([[40.0, 0.0, 0.0, 0.0, 0.0], [0.0, -69.08, 3.0, 1.0, -2.0], [0.0] * 5,
                         [1000.0, -1000.0, 0.0, 5.0, 2.0], [-1000.0] * 4 + [1000.0], [0.0] * 4 + [69.08]])
    for z in (ordinary, extreme):
        for v in (jnp.arange(z.shape[0]) % z.shape[1], 2 * jax.random.uniform(key, z.shape, jnp.float64)):
            s = loss.hessian_factor(z, v)
            assert s.shape == (*z.shape, z.shape[1] - 1) and bool(jnp.all(jnp.isfinite(s)))
            h = s @ jnp.swapaxes(s, -1, -2)
            expected = jax.vmap(jax.hessian(loss.value))(z, v)
            np.testing.assert_allclose(h, expected, rtol=1e-12, atol=1e-15)
            # Entry by entry to relative precision, down to the 1e-60 products of tiny probabilities.
            scale = (jnp.sum(v, -1) if v.ndim == 2 else 1.0) * jnp.ones(z.shape[0])
            np.testing.assert_allclose(h, scale[:, None, None] * _accurate_ce_hessian(z), rtol=1e-14, atol=0)
    # Two classes: one column, √(p₀p₁) (1, −1) up to sign; one class: H = 0 and no columns.
    s = loss.hessian_factor(jnp.array([[0.3, -1.2]]), jnp.array([0]))
    p = jax.nn.softmax(jnp.array([0.3, -1.2]))
    np.testing.assert_allclose(jnp.abs(s[0, :, 0]), jnp.sqrt(p[0] * p[1]) * jnp.ones(2), rtol=1e-14)
    assert s[0, 0, 0] * s[0, 1, 0] < 0
    assert loss.hessian_factor(jnp.array([[2.0], [-5.0]]), jnp.array([0, 0])).shape == (2, 1, 0)
