import jax
import jax.numpy as jnp
import pytest

import fnn


def _problem(net, dtype=None, batch=6):
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    params = fnn.init(k1, net, "glorot", dtype=dtype)
    x = jax.random.normal(k2, (batch, net.in_dim), dtype or jnp.float32)
    v = jax.random.randint(k3, (batch,), 0, net.out_dim)
    return params, x, v


@pytest.mark.parametrize("use_x64", [False, True])
def test_correct_backward_passes(use_x64):
    with jax.enable_x64(use_x64):
        net = fnn.MLP((4, 6, 5, 3), ("tanh", "sigmoid", "identity"))
        params, x, v = _problem(net, jnp.float64 if use_x64 else jnp.float32)
        report = fnn.gradcheck(net, "softmax_cross_entropy", params, x, v)
        assert report.ok, str(report)
        assert [(r.layer, r.param) for r in report.rows] == [(l, p) for l in (1, 2, 3) for p in "Wb"]
        assert "all layers agree" in str(report)


@pytest.mark.parametrize("bad_layer", [1, 2])
def test_planted_bug_is_located(bad_layer, x64):
    # sigmoid with a wrong derivative σ(1 − σ) + 0.1 planted in one hidden layer.
    wrong = fnn.Activation("sigmoid_wrong", jax.nn.sigmoid, lambda z, y: y * (1 - y) + 0.1)
    acts = ["sigmoid", "sigmoid", "identity"]
    acts[bad_layer - 1] = wrong
    net = fnn.MLP((4, 6, 5, 3), acts)
    params, x, v = _problem(net, jnp.float64)
    report = fnn.gradcheck(net, "softmax_cross_entropy", params, x, v)
    assert not report.ok
    assert report.suspect_layer == bad_layer
    # Layers above the bug are untouched by it.
    for row in report.rows:
        if row.layer > bad_layer:
            assert row.autodiff_error < 1e-10 and row.fd_error < 1e-6
    assert f"first disagrees at layer {bad_layer}" in str(report)
