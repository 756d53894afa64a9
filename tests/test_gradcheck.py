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


# --- kinks: a finite difference across a kink must not fail a correct backward --------------------

from fnn.core.activations import ACTIVATIONS  # noqa: E402
from fnn.cli.main import _gradcheck, main  # noqa: E402
from fnn.cli.args import build_parser  # noqa: E402
from fnn.cli.runs import DEFAULTS, prepare  # noqa: E402


def _moons_plan(tmp_path, hidden, seed):
    args = build_parser().parse_args(["train", "--dataset", "moons", "--hidden", *map(str, hidden),
                                      "--seed", str(seed)])
    return prepare({k: getattr(args, k) for k in DEFAULTS}, out=str(tmp_path / f"r{seed}"))


@pytest.mark.parametrize("hidden", [(4, 4), (3, 3), (2, 2)])
def test_the_preflight_passes_narrow_relu_nets_for_every_seed(tmp_path, hidden):
    # Before: seeds 0, 1 and 2 of moons 4-4 (and 2-2, 3-3) failed the finite-difference column,
    # since a float32 step of 1e-2 crossed relu kinks, while jax.grad agreed to 2e-7.
    skipped = []
    for seed in range(10):
        report = _gradcheck(_moons_plan(tmp_path, hidden, seed))
        assert report.ok, f"seed {seed}\n{report}"
        skipped.append(max(r.fd_skipped for r in report.rows))
    assert max(skipped) > 0  # kinks were met, and left out


def test_fnn_train_on_moons_passes_the_gradient_check(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "moons", "--hidden", "4", "4", "--seed", "0", "--epochs", "1",
                 "--no-plot", "--no-progress", "--out", str(out)]) == 0
    assert "all layers agree" in (out / "gradcheck.txt").read_text()


def _shifted_relu():
    # Wrong: slope 1 from z > -0.5 instead of z > 0.
    return fnn.Activation("relu", jax.nn.relu, lambda z, y: (z > -0.5).astype(z.dtype), kinks=(0.0,))


def _fd_blind_relu():
    # jax.grad itself is wrong here (a custom_jvp with slope 2), and the hand-written rule
    # agrees with it: only the finite differences can tell.
    @jax.custom_jvp
    def f(z):
        return jax.nn.relu(z)

    f.defjvp(lambda p, t: (f(p[0]), 2 * (p[0] > 0).astype(p[0].dtype) * t[0]))
    return fnn.Activation("relu", f, lambda z, y: 2 * (z > 0).astype(z.dtype), kinks=(0.0,))


def test_a_wrong_relu_derivative_is_refused_naming_jax_grad(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(ACTIVATIONS._entries, "relu", _shifted_relu())
    out = tmp_path / "run"
    assert main(["train", "--dataset", "moons", "--hidden", "4", "4", "--epochs", "1", "--no-plot",
                 "--no-progress", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "disagrees with jax.grad (column 'vs jax.grad')" in err and "not training" in err
    assert not out.exists()


def test_only_finite_differences_failing_warns_and_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(ACTIVATIONS._entries, "relu", _fd_blind_relu())
    out = tmp_path / "run"
    assert main(["train", "--dataset", "moons", "--hidden", "4", "4", "--epochs", "1", "--no-plot",
                 "--no-progress", "--out", str(out)]) == 0
    assert "column 'vs finite differences'" in capsys.readouterr().err
    assert "vs finite differences" in (out / "gradcheck.txt").read_text()


def test_the_report_names_the_failing_column():
    net = fnn.MLP((3, 5, 2), (_shifted_relu(), "identity"))
    params, x, v = _problem(net)
    report = fnn.gradcheck(net, "softmax_cross_entropy", params, x, v)
    assert report.columns == ("vs jax.grad", "vs finite differences") and not report.autodiff_ok
    assert "(vs jax.grad and vs finite differences;" in str(report)
    net = fnn.MLP((3, 5, 2), (_fd_blind_relu(), "identity"))
    report = fnn.gradcheck(net, "softmax_cross_entropy", params, x, v)
    assert report.columns == ("vs finite differences",) and report.autodiff_ok and not report.ok
    assert report.suspect_layer == 1 and "MISMATCH vs finite differences" in str(report)


def _hard_tanh():  # kinks at ±1, undeclared: found numerically
    # jax.grad of this where-form is 1 at z = ±1, the convention the hand-written rule follows.
    return fnn.Activation("hard_tanh", lambda z: jnp.where(z > 1, 1.0, jnp.where(z < -1, -1.0, z)).astype(z.dtype),
                          lambda z, y: ((z >= -1) & (z <= 1)).astype(z.dtype))


def _abs():  # jax.grad(jnp.abs)(0) == 1, undeclared
    return fnn.Activation("abs", jnp.abs, lambda z, y: jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype))


def _on_the_kinks(net, dtype, kink=0.0):
    # Half the rows are zero, so their pre-activations are the biases, set onto a kink (and 0).
    params, x, _ = _problem(net, dtype, batch=8)
    params[0]["b"] = jnp.where(jnp.arange(net.sizes[1]) % 2 == 0, 0.0, kink).astype(dtype)
    return params, x.at[::2].set(0)


@pytest.mark.parametrize("act,use_x64", [("relu", False), ("relu", True), ("leaky_relu", False),
                                         ("leaky_relu(0.5)", False), ("step", False), (_hard_tanh(), False),
                                         (_abs(), False)],
                         ids=["relu", "relu-x64", "leaky_relu", "leaky_relu(0.5)", "step", "hard_tanh", "abs"])
def test_every_kinked_activation_passes_on_its_kinks(act, use_x64):
    with jax.enable_x64(use_x64):
        dtype = jnp.float64 if use_x64 else jnp.float32
        net = fnn.MLP((4, 6, 3), (act, "identity"))
        params, x = _on_the_kinks(net, dtype, kink=1.0)
        report = fnn.gradcheck(net, "softmax_cross_entropy", params, x, jnp.arange(8) % 3)
        assert report.ok, str(report)
        assert max(r.fd_skipped for r in report.rows) > 0  # the kinks were met


def _abs_loss(grad_sign=1.0):  # undeclared kinks at y = v
    return fnn.Loss("abs_loss", lambda y, v: jnp.sum(jnp.abs(y - v), -1),
                    lambda y, v: grad_sign * jnp.where(y - v >= 0, 1.0, -1.0).astype(y.dtype))


@pytest.mark.parametrize("loss,offset,use_x64", [("mae", 0.0, False), ("mae", 0.0, True), ("mape", 0.0, False),
                                                  ("huber", 1.0, False), ("huber(0.5)", 0.5, False),
                                                  (_abs_loss(), 0.0, False)],
                         ids=["mae", "mae-x64", "mape", "huber", "huber(0.5)", "abs"])
def test_every_kinked_loss_passes_on_its_kinks(loss, offset, use_x64):
    with jax.enable_x64(use_x64):
        dtype = jnp.float64 if use_x64 else jnp.float32
        net = fnn.MLP((4, 6, 2), ("tanh", "identity"))
        params, x, _ = _problem(net, dtype, batch=8)
        y = fnn.forward(net, params, x)
        # Even rows: every residual on a kink; odd rows off them (mape: targets stay non-zero).
        v = y - offset - jnp.where(jnp.arange(8) % 2 == 0, 0.0, 0.37).astype(dtype)[:, None]
        report = fnn.gradcheck(net, loss, params, x, v)
        assert report.ok, str(report)
        assert max(r.fd_skipped for r in report.rows) > 0


@pytest.mark.parametrize("loss", [fnn.Loss("mae_wrong", fnn.core.losses.mae.value, lambda y, v: -fnn.core.losses.mae.grad(y, v),
                                           kinks=fnn.core.losses.mae.kinks), _abs_loss(-1.0)], ids=["declared", "undeclared"])
def test_a_wrong_loss_gradient_is_caught_by_both_columns(loss, x64):
    net = fnn.MLP((4, 6, 2), ("tanh", "identity"))
    params, x, _ = _problem(net, jnp.float64)
    v = fnn.forward(net, params, x) + jnp.linspace(-1, 1, 12).reshape(6, 2)  # off the kinks
    report = fnn.gradcheck(net, loss, params, x, v)
    assert report.columns == ("vs jax.grad", "vs finite differences"), str(report)


# --- the finite-difference noise floor: a converged float32 network is not a mismatch ----------------

import fnn.core.gradcheck as gradcheck_module  # noqa: E402


def _converged(steps=1500):
    # A tiny net trained with Adam on 16 examples until its loss is ~1e-5 and |grad| ~1e-6.
    import optax

    net = fnn.MLP((4, 8, 3), ("tanh", "identity"))
    params, x, v = _problem(net, batch=16)
    opt = optax.adam(0.05)

    @jax.jit
    def step(p, s):
        _, g = fnn.value_and_grad(net, "softmax_cross_entropy", p, x, v)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = opt.init(params)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int and float
        for _ in range(steps):
            params, state = step(params, state)
    return net, params, x, v


def test_a_converged_float32_network_passes_the_finite_differences(monkeypatch):
    # Before: |grad| ~1e-6 against float32 quotient noise ~1e-5 gave MISMATCH on every row
    # (errors 0.3-1.3 relative) although jax.grad agreed to 2e-8.
    net, params, x, v = _converged()
    value, grads = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v)
    assert value < 1e-3 and max(float(jnp.linalg.norm(g["W"])) for g in grads) < 1e-3
    report = fnn.gradcheck(net, "softmax_cross_entropy", params, x, v)
    assert report.ok, str(report)
    assert 0 < report.fd_floor < 1e-4 and "noise floor" in str(report)
    # The floor decided it: without it the same quotients are far over the tolerance.
    monkeypatch.setattr(gradcheck_module, "FD_NOISE_ULPS", 0.0)
    bare = fnn.gradcheck(net, "softmax_cross_entropy", params, x, v)
    assert bare.fd_floor == 0 and bare.autodiff_ok and not bare.ok


def test_the_floor_does_not_hide_a_wrong_float32_derivative_before_training():
    wrong = fnn.Activation("tanh_wrong", jnp.tanh, lambda z, y: 1 - y * y + 0.1)
    net = fnn.MLP((4, 8, 3), (wrong, "identity"))
    params, x, v = _problem(fnn.MLP((4, 8, 3), ("tanh", "identity")), batch=16)
    report = fnn.gradcheck(net, "softmax_cross_entropy", params, x, v)
    assert report.fd_floor > 0 and not report.ok and report.suspect_layer == 1
    assert any(r.fd_error > report.fd_tol for r in report.rows if r.layer == 1)


def test_a_confident_float32_binary_network_passes_the_jax_grad_column():
    # At a confident, correct output, 1 − σ(z) loses its digits in float32, in jax.grad more than
    # in the hand-written pass; the jax.grad column's noise floor must not call that a mismatch.
    import jax.numpy as jnp
    net = fnn.MLP((2, 16, 1), "tanh")
    params = fnn.init(jax.random.key(3), net)
    params[-1]["W"] = params[-1]["W"] * 1000.0  # without the floor: error 1.1e-4 against tol 1e-5
    x = jax.random.normal(jax.random.key(4), (256, 2), jnp.float32)
    logits = fnn.forward(net, params, x)
    v = (logits > 0).astype(jnp.float32)
    report = fnn.gradcheck(net, "binary_cross_entropy", params, x, v)
    assert report.autodiff_ok, report
