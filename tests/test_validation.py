"""The same input checks at every public entry point, and activations and losses as values."""

import gzip
import warnings
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.io import checkpoint
from fnn.data import datasets
from fnn.training.train import make_epoch_fn

NET = fnn.MLP((3, 5, 4), "tanh")
OTHER = fnn.MLP((3, 6, 4), "tanh")


def _batch(n=6):
    k1, k2 = jax.random.split(jax.random.key(0))
    return jax.random.normal(k1, (n, 3)), jax.random.randint(k2, (n,), 0, 4)


def _entry_points(net, params, x, v, weights=None):
    """Every public entry point that takes params and data, as zero-argument calls."""
    loss = "softmax_cross_entropy"
    opt = optax.sgd(0.1)
    return {
        "forward": lambda: fnn.forward(net, params, x),
        "forward_with_cache": lambda: fnn.forward_with_cache(net, params, x),
        "value_and_grad": lambda: fnn.value_and_grad(net, loss, params, x, v, weights=weights),
        "bridge": lambda: fnn.bridge(net)(params, x),
        "bridged_loss": lambda: fnn.bridged_loss(net, loss)(params, x, v),
        "jit(grad(bridged_loss))": lambda: jax.jit(jax.grad(fnn.bridged_loss(net, loss)))(params, x, v),
        "evaluate": lambda: fnn.evaluate(net, loss, params, x, v),
        "gradcheck": lambda: fnn.gradcheck(net, loss, params, x, v),
        "fit": lambda: fnn.fit(net, loss, params, x, v, key=jax.random.key(0), epochs=1, batch_size=2),
        "gradient_descent": lambda: fnn.gradient_descent(net, loss, params, x, v, learning_rate=0.1),
        "make_update_step": lambda: fnn.make_update_step(net, loss, opt, donate=False)(
            params, opt.init(params), x, v, None, weights),
        "make_update_fn": lambda: fnn.make_update_fn(net, loss, opt)(params, opt.init(params), x, v, None, weights),
    }


@pytest.mark.parametrize("entry", list(_entry_points(NET, None, None, None)))
def test_params_of_another_network_are_refused_everywhere(entry):
    x, v = _batch()
    params = fnn.init(jax.random.key(0), OTHER)
    with pytest.raises(ValueError, match="belong to another network"):
        _entry_points(NET, params, x, v)[entry]()


@pytest.mark.parametrize("entry", list(_entry_points(NET, None, None, None)))
def test_wrong_input_width_is_refused_everywhere(entry):
    _, v = _batch()
    params = fnn.init(jax.random.key(0), NET)
    with pytest.raises(ValueError, match="last axis must be the 3 input features"):
        _entry_points(NET, params, jnp.ones((6, 5)), v)[entry]()


@pytest.mark.parametrize("entry", [e for e in _entry_points(NET, None, None, None) if "forward" not in e
                                   and e != "bridge"])
@pytest.mark.parametrize("labels,message", [
    (np.zeros((6, 1), np.int32), r"v\.ravel\(\)"),             # (N, 1) integer labels
    (np.array([0, 1, 2, 3, 4, 0]), r"Labels must lie in \[0, 4\)"),
    (np.zeros(5, np.int32), "5 rows but the inputs have 6"),
    (np.zeros(6, bool), "must be real numbers"),
])
def test_bad_labels_are_refused_everywhere(entry, labels, message):
    x, _ = _batch()
    params = fnn.init(jax.random.key(0), NET)
    if entry in ("jit(grad(bridged_loss))", "make_update_step") and "Labels must lie" in message:
        pytest.skip("values are not known under jit")
    with pytest.raises(ValueError, match=message):
        _entry_points(NET, params, x, jnp.asarray(labels))[entry]()


@pytest.mark.parametrize("entry", ["forward", "value_and_grad", "evaluate", "fit", "gradient_descent",
                                   "gradcheck", "make_update_step"])
def test_empty_data_is_refused(entry):
    params = fnn.init(jax.random.key(0), NET)
    with pytest.raises(ValueError, match="no examples"):
        _entry_points(NET, params, jnp.ones((0, 3)), jnp.zeros((0,), jnp.int32))[entry]()


@pytest.mark.parametrize("entry", ["forward", "value_and_grad", "evaluate", "fit", "gradient_descent"])
def test_nan_inputs_are_refused(entry):
    x, v = _batch()
    params = fnn.init(jax.random.key(0), NET)
    with pytest.raises(ValueError, match="NaN or Inf"):
        _entry_points(NET, params, x.at[2, 1].set(jnp.nan), v)[entry]()


@pytest.mark.parametrize("entry", ["value_and_grad", "make_update_step", "make_update_fn"])
@pytest.mark.parametrize("weights,message", [
    (np.ones(5, np.float32), r"weights have shape \(5,\)"),
    (np.array([1, 1, -1, 1, 1, 1], np.float32), "non-negative"),
    (np.zeros(6, np.float32), "All weights are zero"),
])
def test_bad_weights_are_refused(entry, weights, message):
    x, v = _batch()
    params = fnn.init(jax.random.key(0), NET)
    if entry == "make_update_step" and "shape" not in message:
        pytest.skip("values are not known under jit")
    with pytest.raises(ValueError, match=message):
        _entry_points(NET, params, x, v, weights=jnp.asarray(weights))[entry]()


def test_risk_accepts_names_and_checks_its_inputs():
    y = jnp.arange(6.0).reshape(3, 2)
    v = jnp.ones((3, 2))
    assert float(fnn.risk("mse", y, v)) == float(fnn.risk(fnn.get_loss("mse"), y, v))
    np.testing.assert_array_equal(fnn.risk_grad("mse", y, v), fnn.risk_grad(fnn.get_loss("mse"), y, v))
    with pytest.raises(ValueError, match="weights have shape"):
        fnn.risk("mse", y, v, jnp.ones(4))
    with pytest.raises(ValueError, match="Unknown loss 'mze'"):
        fnn.risk("mze", y, v)


def test_backward_checks_its_cache_and_dout():
    x, _ = _batch()
    params = fnn.init(jax.random.key(0), NET)
    _, cache = fnn.forward_with_cache(NET, params, x)
    with pytest.raises(ValueError, match="dout has shape"):
        fnn.backward(NET, params, cache, jnp.ones((6, 3)))
    with pytest.raises(ValueError, match="belong to another network"):
        fnn.backward(NET, fnn.init(jax.random.key(0), OTHER), cache, jnp.ones((6, 4)))


def test_library_errors_speak_library_terms():
    x, v = _batch()
    params = fnn.init(jax.random.key(0), NET)
    with pytest.raises(ValueError) as err:
        fnn.fit(NET, "softmax_cross_entropy", params, x, v, key=jax.random.key(0), batch_size=100)
    assert "--" not in str(err.value) and "at most 6" in str(err.value)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch size must be positive"):
            fnn.fit(NET, "softmax_cross_entropy", params, x, v, key=jax.random.key(0), batch_size=bad)


def test_non_finite_params_are_refused_for_training():
    x, v = _batch()
    params = fnn.init(jax.random.key(0), NET)
    params[1]["b"] = params[1]["b"].at[0].set(jnp.inf)
    with pytest.raises(ValueError, match="diverged"):
        fnn.fit(NET, "softmax_cross_entropy", params, x, v, key=jax.random.key(0), batch_size=2)


# --- activations and losses are values ----------------------------------------------------------

def test_parameterised_activations_and_losses_are_equal_by_value():
    assert fnn.leaky_relu(0.2) == fnn.leaky_relu(0.2) and hash(fnn.leaky_relu(0.2)) == hash(fnn.leaky_relu(0.2))
    assert fnn.leaky_relu(0.2) != fnn.leaky_relu(0.3)
    assert fnn.get_activation("leaky_relu(0.2)") == fnn.leaky_relu(0.2)
    assert fnn.get_activation(fnn.leaky_relu(0.01).name) == fnn.leaky_relu()
    # The name carries the exact parameter, so distinct slopes never share a name.
    assert fnn.leaky_relu(0.2).name != fnn.leaky_relu(0.2000001).name
    assert fnn.get_activation(fnn.leaky_relu(0.2000001).name) == fnn.leaky_relu(0.2000001)
    assert fnn.huber(0.5) == fnn.get_loss("huber(0.5)") and fnn.huber(0.5) != fnn.huber(2.0)


def test_a_rebuilt_network_equals_the_original_and_reuses_its_compilation():
    net = fnn.MLP((3, 5, 5, 2), "leaky_relu(0.2)")
    rebuilt = fnn.MLP.from_dict(json.loads(json.dumps(net.to_dict())))
    assert rebuilt == net and hash(rebuilt) == hash(net)
    f = jax.jit(fnn.forward, static_argnums=0)
    params = fnn.init(jax.random.key(0), net)
    f(net, params, jnp.ones((2, 3)))
    before = f._cache_size()
    f(rebuilt, params, jnp.ones((2, 3)))
    assert f._cache_size() == before  # no second compilation


def test_checkpoint_of_parameterised_and_custom_activations_reloads(tmp_path):
    net = fnn.MLP((3, 5, 2), "leaky_relu(0.2)")
    params = fnn.init(jax.random.key(0), net)
    checkpoint.save(tmp_path / "a.npz", net=net, params=params)
    assert checkpoint.load(tmp_path / "a.npz", net=fnn.MLP((3, 5, 2), "leaky_relu(0.2)")).net == net

    cube = fnn.Activation("cube", lambda z: z ** 3, lambda z, y: 3 * z ** 2)
    custom = fnn.MLP((3, 5, 2), (cube, "identity"))
    checkpoint.save(tmp_path / "c.npz", net=custom, params=fnn.init(jax.random.key(0), custom))
    assert checkpoint.load(tmp_path / "c.npz", net=custom).net == custom
    with pytest.raises(ValueError, match="activation of your own"):
        checkpoint.load(tmp_path / "c.npz")


# --- damaged files ----------------------------------------------------------------------------

def _rewrite_npz(src, dest, drop=None, header=None):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files if k != drop}
    if header is not None:
        h = json.loads(arrays["header"].tobytes().decode())
        header(h)
        arrays["header"] = np.frombuffer(json.dumps(h).encode(), np.uint8)
    np.savez(dest, **arrays)


@pytest.mark.parametrize("damage", ["drop_array", "drop_header_field", "drop_header", "bad_json"])
def test_damaged_checkpoints_give_one_clear_error(damage, tmp_path):
    params = fnn.init(jax.random.key(0), NET)
    opt = optax.adam(1e-3)
    src = checkpoint.save(tmp_path / "ok.npz", net=NET, params=params, opt_state=opt.init(params),
                          key=jax.random.key(1))
    bad = tmp_path / "bad.npz"
    if damage == "drop_array":
        _rewrite_npz(src, bad, drop="params/1/W")
    elif damage == "drop_header_field":
        _rewrite_npz(src, bad, header=lambda h: h.pop("has_opt_state"))
    elif damage == "drop_header":
        _rewrite_npz(src, bad, drop="header")
    else:
        with np.load(src) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["header"] = np.frombuffer(b'{"format": "fnn-check', np.uint8)
        np.savez(bad, **arrays)
    with pytest.raises(ValueError, match=str(bad)):
        checkpoint.load(bad, net=NET, opt_state_like=opt.init(params))


def test_damaged_gzip_idx_gives_one_clear_error(tmp_path):
    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(range(200)))
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF  # corrupt the deflate stream, keep the gzip header
    (tmp_path / "labels.gz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="labels.gz.*damaged"):
        datasets.read_idx(tmp_path / "labels.gz")


# --- the last good state is the last finite one --------------------------------------------------

def _diverging():
    data = datasets.diabetes()
    net = fnn.MLP((data.in_dim, 64, 64, 1), "relu")
    params = fnn.init(jax.random.key(0), net, "normal")
    kwargs = dict(key=jax.random.key(0), optimizer=optax.sgd(5.0), epochs=20, batch_size=32)
    return data, net, params, kwargs


def test_divergence_keeps_a_state_whose_training_loss_is_finite():
    data, net, params, kwargs = _diverging()
    with pytest.raises(fnn.NonFiniteLossError) as info:
        fnn.fit(net, "mse", params, data.x_train, data.y_train, **kwargs)
    err = info.value
    state = err.state
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(state.params))
    assert np.isfinite(fnn.evaluate(net, "mse", state.params, data.x_train, data.y_train)["loss"])
    batches = len(data.x_train) // 32
    assert state.epoch == err.step // batches
    assert state.batch == err.step % batches  # from before the step that blew up (replayed)
    # Resuming from it is deterministic: it diverges at the same step again.
    with pytest.raises(fnn.NonFiniteLossError) as again:
        fnn.fit(net, "mse", params, data.x_train, data.y_train, state=state, **kwargs)
    assert again.value.step == err.step


def test_a_linear_model_under_adam_with_a_huge_learning_rate_keeps_finite_params():
    data = datasets.diabetes()
    net = fnn.MLP((data.in_dim, 1), ("identity",))
    params = fnn.init(jax.random.key(0), net)
    with pytest.raises(fnn.NonFiniteLossError) as info:
        fnn.fit(net, "mse", params, data.x_train, data.y_train * 1e3, key=jax.random.key(0),
                optimizer=optax.adam(1e20), epochs=50, batch_size=32)
    state = info.value.state
    assert np.isfinite(fnn.evaluate(net, "mse", state.params, data.x_train, data.y_train * 1e3)["loss"])


def test_a_mid_epoch_state_resumes_exactly(x64):
    data = datasets.spirals()
    net = fnn.MLP((2, 16, 3), "relu")
    params = fnn.init(jax.random.key(0), net)
    opt = optax.adam(1e-2)
    common = dict(key=jax.random.key(5), optimizer=opt, batch_size=16, dropout=0.1)
    loss = fnn.get_loss("softmax_cross_entropy")
    full, _ = fnn.fit(net, loss, params, data.x_train, data.y_train, epochs=3, **common)
    saved = []
    fnn.fit(net, loss, params, data.x_train, data.y_train, epochs=1, on_epoch=lambda s, m: saved.append(s),
            **common)
    # Three batches into epoch 2, by the same compiled epoch stopped short.
    epoch = make_epoch_fn(net, loss, opt, batch_size=16, dropout=0.1, donate=False)
    x, v = jnp.asarray(data.x_train, jnp.float64), jnp.asarray(data.y_train)
    p, s, _ = epoch(saved[0].params, saved[0].opt_state, x, v, jax.random.fold_in(common["key"], 1), 0, 3)
    mid = fnn.TrainState(p, s, 1, common["key"], batch=3)
    resumed, _ = fnn.fit(net, loss, params, data.x_train, data.y_train, epochs=3, state=mid, **common)
    jax.tree.map(np.testing.assert_array_equal, full, resumed)


def test_keys_optimizers_and_coefficients_are_checked():
    x, v = _batch()
    params = fnn.init(jax.random.key(0), NET)
    with pytest.raises(ValueError, match="must be a JAX PRNG key"):
        fnn.init(123, NET)
    with pytest.raises(ValueError, match="must be a JAX PRNG key"):
        fnn.fit(NET, "softmax_cross_entropy", params, x, v, key=None, batch_size=2)
    with pytest.raises(ValueError, match="optax GradientTransformation"):
        fnn.fit(NET, "softmax_cross_entropy", params, x, v, key=jax.random.key(0), optimizer="adam")
    with pytest.raises(ValueError, match="optax GradientTransformation"):
        fnn.make_update_step(NET, "softmax_cross_entropy", "adam")
    with pytest.raises(ValueError, match="l2 must be a finite number"):
        fnn.value_and_grad(NET, "softmax_cross_entropy", params, x, v, l2=-1.0)
    with pytest.raises(ValueError, match="learning rate must be positive and finite"):
        fnn.gradient_descent(NET, "softmax_cross_entropy", params, x, v, learning_rate=float("inf"))
    with pytest.raises(ValueError, match="momentum must be a finite number"):
        fnn.get_optimizer("momentum", 0.1, float("nan"))
    with pytest.raises(ValueError, match="test must be a pair"):
        fnn.fit(NET, "softmax_cross_entropy", params, x, v, key=jax.random.key(0), test=(x,))
    with pytest.raises(ValueError, match="JSON-serialisable"):
        checkpoint.save("unused.npz", net=NET, params=params, meta={"a": object()})
    # The raw uint32 keys of jax.random.PRNGKey still work, and so do array-likes.
    fnn.init(jax.random.PRNGKey(0), NET)
    np.testing.assert_allclose(fnn.forward(NET, params, [[1.0, 2.0, 3.0]]),
                               fnn.forward(NET, params, jnp.array([[1.0, 2.0, 3.0]])))


@pytest.mark.parametrize("loss,targets", [("binary_cross_entropy", [[0.0], [1.0]]), ("softmax_cross_entropy", [0, 1])])
def test_sigmoid_output_before_a_logits_loss_warns(loss, targets):
    # The cross-entropies take logits; a sigmoid output layer would apply the sigmoid twice.
    out = 1 if loss == "binary_cross_entropy" else 2
    x, v = jnp.ones((2, 3)), jnp.asarray(targets)
    for last, warns in (("sigmoid", True), ("identity", False)):
        net = fnn.MLP((3, 4, out), ("tanh", last))
        params = fnn.init(jax.random.key(0), net)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fnn.value_and_grad(net, loss, params, x, v)
        hits = [w for w in caught if "applied twice" in str(w.message)]
        assert bool(hits) == warns, (last, [str(w.message) for w in caught])
        if warns:
            assert "use 'identity' for the last layer" in str(hits[0].message)
    # Regression losses on a sigmoid output are legitimate (targets in (0, 1)): no warning.
    net = fnn.MLP((3, 4, 1), ("tanh", "sigmoid"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fnn.value_and_grad(net, "mse", fnn.init(jax.random.key(0), net), x, jnp.full((2, 1), 0.5))
    assert not [w for w in caught if "applied twice" in str(w.message)]


def test_fit_names_a_missing_batch_axis():
    # A 1-D x used to pass as 64 "examples" of one feature each and fail later blaming the targets.
    d = datasets.digits()
    net = fnn.MLP((64, 8, 10), ("relu", "identity"))
    params = fnn.init(jax.random.key(0), net)
    with pytest.raises(ValueError, match=r"^fit takes inputs of shape \(N, 64\), got \(64,\): one example is x\[None\]"):
        fnn.fit(net, "softmax_cross_entropy", params, d.x_train[0], d.y_train[:1], key=jax.random.key(1), epochs=1)
    with pytest.raises(ValueError, match=r"got \(1, 5, 64\)"):
        fnn.fit(net, "softmax_cross_entropy", params, d.x_train[:5][None], d.y_train[:5][None],
                key=jax.random.key(1), epochs=1)
