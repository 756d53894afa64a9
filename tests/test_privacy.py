"""DP-SGD bookkeeping: the sensitivity bound, clear errors for bad settings, overflow-safe clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.analysis.privacy import check_dp_settings, clipped_value_and_grad


def _setup(batch=4, dtype=jnp.float32):
    net = fnn.MLP((3, 5, 2), ("tanh", "identity"))
    params = fnn.init(jax.random.key(0), net, "glorot", dtype=dtype)
    x = jax.random.normal(jax.random.key(1), (batch, 3), dtype)
    return net, params, x, jnp.arange(batch) % 2


def _norm(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in jax.tree.leaves(tree))))


@pytest.mark.parametrize("bad", [5.0, 1.5, -0.5])
def test_weights_outside_0_1_are_refused_in_private_mode(bad):
    net, params, x, v = _setup()
    weights = jnp.array([1.0, bad, 1.0, 0.0])
    objective = fnn.Objective(net, "softmax_cross_entropy")
    with pytest.raises(ValueError, match=r"weights must lie in \[0, 1\]|non-negative"):
        clipped_value_and_grad(objective, params, x, v, weights, clip_norm=1.0)
    update = fnn.make_update_fn(net, "softmax_cross_entropy", optax.sgd(0.1), clip_norm=1.0)
    with pytest.raises(ValueError, match=r"weights must lie in \[0, 1\]|non-negative"):
        update(params, optax.sgd(0.1).init(params), x, v, None, weights)


def test_under_jit_a_heavy_example_still_contributes_at_most_c():
    # Traced weights cannot be refused; the weighted contribution is clipped to C instead, so the
    # noise σC still covers it. Before, an example of weight 5 contributed 5C (ε under-reported).
    net, params, x, v = _setup(batch=1)
    objective, clip = fnn.Objective(net, "softmax_cross_entropy"), 1e-3  # every example clipped
    step = jax.jit(lambda w: clipped_value_and_grad(objective, params, x, v, w, clip_norm=clip)[1])
    for w in (5.0, 1.0):
        contribution = _norm(step(jnp.array([w]))) * w  # ĝ = contribution / Σ w
        assert contribution == pytest.approx(clip, rel=1e-5)
    assert _norm(step(jnp.array([0.5]))) * 0.5 == pytest.approx(0.5 * clip, rel=1e-5)  # w ≤ 1: w c g


def test_a_noisy_step_without_a_key_says_so():
    net, params, x, v = _setup()
    objective = fnn.Objective(net, "softmax_cross_entropy")
    with pytest.raises(ValueError, match="pass key=jax.random.key"):
        clipped_value_and_grad(objective, params, x, v, clip_norm=1.0, noise_multiplier=1.0)
    step = fnn.make_update_step(net, "softmax_cross_entropy", optax.sgd(0.1), clip_norm=1.0,
                                noise_multiplier=1.0, donate=False)
    with pytest.raises(ValueError, match="pass key=jax.random.key"):
        step(params, optax.sgd(0.1).init(params), x, v)


@pytest.mark.parametrize("clip", [np.float32(0.5), np.float64(0.5), np.array(0.5), jnp.asarray(0.5), 0.5])
def test_clip_norm_may_be_any_real_scalar(clip):
    net, params, x, v = _setup()
    objective = fnn.Objective(net, "softmax_cross_entropy")
    _, want, _ = clipped_value_and_grad(objective, params, x, v, clip_norm=0.5)
    _, got, _ = clipped_value_and_grad(objective, params, x, v, clip_norm=clip, noise_multiplier=np.float32(0))
    assert _norm(jax.tree.map(lambda a, b: a - b, got, want)) == 0
    fnn.make_update_step(net, "softmax_cross_entropy", optax.sgd(0.1), clip_norm=clip,
                         noise_multiplier=np.array(0.5))


@pytest.mark.parametrize("clip,sigma,match", [
    (float("nan"), 0.0, "clip_norm"), (float("inf"), 0.0, "clip_norm"), (0.0, 0.0, "clip_norm"),
    (-1.0, 0.0, "clip_norm"), (True, 0.0, "clip_norm"), ("1", 0.0, "clip_norm"), (np.ones(2), 0.0, "clip_norm"),
    (1.0, -0.5, "noise_multiplier"), (1.0, float("nan"), "noise_multiplier"), (1.0, True, "noise_multiplier"),
    (1.0, float("inf"), "noise_multiplier")])
def test_bad_dp_settings_get_one_clear_error(clip, sigma, match):
    with pytest.raises(ValueError, match=match):
        check_dp_settings(clip, sigma)
    net = fnn.MLP((3, 2), "identity")
    with pytest.raises(ValueError, match=match):
        fnn.make_update_step(net, "mse", optax.sgd(0.1), clip_norm=clip, noise_multiplier=sigma)


def test_noise_without_clip_norm_is_checked_too():
    net = fnn.MLP((3, 2), "identity")
    for sigma in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="noise_multiplier must be"):
            fnn.make_update_step(net, "mse", optax.sgd(0.1), noise_multiplier=sigma)


def test_huge_float32_gradients_are_clipped_not_dropped():
    # ‖g‖ ≈ 1e25: its square overflows float32 (above ~1.8e19 it did, and the example was dropped).
    net = fnn.MLP((3, 2), ("identity",))
    params = [{"W": jnp.full((3, 2), 1e-25, jnp.float32), "b": jnp.zeros(2, jnp.float32)}]
    x = jnp.array([[1e25, -2e25, 3e25], [1.0, 2.0, 3.0]], jnp.float32)
    v = jnp.zeros((2, 2), jnp.float32)
    objective, clip = fnn.Objective(net, "mse"), 1.0
    _, grads, norms = clipped_value_and_grad(objective, params, x, v, jnp.array([1.0, 0.0], jnp.float32),
                                             clip_norm=clip)
    assert np.all(np.isfinite(np.asarray(norms)))
    x0 = np.asarray(x[0], np.float64)
    d = x0 @ np.full((3, 2), 1e-25)  # mse: δz = y − v = y
    exact = np.linalg.norm(x0) * np.linalg.norm(d)  # the bias part ‖d‖ is below float rounding of this
    assert float(norms[0]) == pytest.approx(exact, rel=1e-5)
    assert _norm(grads) == pytest.approx(clip, rel=1e-5)  # clipped to C (one live example, weight 1)
    got = fnn.per_example_grad_norms(net, "mse", params, x, v)
    assert float(got[0]) == pytest.approx(exact, rel=1e-5)
    layer = fnn.per_example_grad_norms(net, "mse", params, x, v, per_layer=True)[0]
    assert np.all(np.isfinite(np.asarray(layer["W"]))) and float(layer["W"][0]) == pytest.approx(exact, rel=1e-5)


# --- epsilon: every argument checked before dp-accounting sees it ---------------------------------

def test_epsilon_accepts_numpy_scalars_and_integral_floats():
    pytest.importorskip("dp_accounting")
    from fnn.analysis.privacy import epsilon

    want = epsilon(1.0, batch_size=10, examples=100, steps=3)
    assert epsilon(np.float32(1.0), batch_size=np.int64(10), examples=jnp.asarray(100), steps=3.0) == want


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=2.5), "steps must be an integer"), (dict(steps=True), "steps must be an integer"),
    (dict(steps=-1), "steps must be >= 0"), (dict(steps=float("nan")), "steps must be an integer"),
    (dict(batch_size=0), "batch_size <= examples"), (dict(batch_size=20), "batch_size <= examples"),
    (dict(batch_size=2.5), "batch_size must be an integer"), (dict(examples=False), "examples must be an integer"),
    (dict(noise_multiplier=-1.0), "noise_multiplier"), (dict(noise_multiplier=float("nan")), "noise_multiplier"),
    (dict(noise_multiplier=True), "noise_multiplier"), (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"),
    (dict(delta=float("nan")), "delta"), (dict(delta="1e-5"), "delta"), (dict(accountant="moments"), "accountant"),
])
def test_epsilon_refuses_bad_arguments_with_a_value_error(kwargs, match):
    pytest.importorskip("dp_accounting")
    from fnn.analysis.privacy import epsilon

    args = dict(noise_multiplier=1.0, batch_size=10, examples=12, steps=3, delta=1e-5) | kwargs
    with pytest.raises(ValueError, match=match):
        epsilon(args.pop("noise_multiplier"), **args)
