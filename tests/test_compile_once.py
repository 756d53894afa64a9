"""Compile once: an equal configuration, called again in the same process, compiles nothing
(counted from JAX's own compile log); fnn's functions are jit-able with the network and the
loss as arguments; the library's defaults agree with the command line's."""

import contextlib
import logging
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.cli import config
from fnn.training import optim
from fnn.data import datasets
from fnn.training.sweep import DEFAULTS as SWEEP_DEFAULTS
from fnn.cli.args import build_parser
from helpers import assert_rel_close

LOSS = fnn.get_loss("softmax_cross_entropy")


class _Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.programs: list[str] = []

    def emit(self, record):
        text = record.getMessage()
        if text.startswith("Compiling "):
            self.programs.append(text.split(" with ")[0][len("Compiling "):])


@contextlib.contextmanager
def compiles():
    """The names of the programs JAX compiles inside the block (``jax_log_compiles``)."""
    count, logger = _Count(), logging.getLogger("jax")
    logger.addHandler(count)
    try:
        with jax.log_compiles(True):
            yield count.programs
    finally:
        logger.removeHandler(count)


@pytest.fixture(scope="module")
def xor():
    data = datasets.xor()
    net = fnn.MLP((2, 8, 2), "tanh")
    return data, net, fnn.init(jax.random.key(0), net)


def _fit(xor, **kw):
    data, net, params = xor
    x = kw.pop("x", data.x_train)
    kw = {"key": jax.random.key(1), "epochs": 2, "batch_size": 32, "test": (data.x_test, data.y_test), **kw}
    return fnn.fit(net, "softmax_cross_entropy", kw.pop("params", params), x, data.y_train, **kw)


@pytest.mark.parametrize("settings", [
    {},                                                      # the default optimizer
    {"optimizer": "sgd"},                                    # rebuilt by get_optimizer: the same object
    {"optimizer": "gd", "batch_size": 2, "l2": 1e-3},        # 192 batches: the chunked epoch
    {"dropout": 0.1, "diagnostics": True, "early_stopping": 2},
])
def test_a_second_equal_fit_compiles_nothing(xor, settings):
    name = settings.pop("optimizer", None)
    optimizer = lambda: None if name is None else (fnn.plain_gd(0.1) if name == "gd" else fnn.get_optimizer(name, 0.1))
    with compiles() as first:
        _fit(xor, optimizer=optimizer(), **settings)
    assert any("epoch" in p or "run" in p for p in first)  # the count sees the epoch program compile
    data, _, params = xor
    shifted = (data.x_train + 0.5).astype(data.x_train.dtype)
    others = [{}, {"epochs": 5}, {"key": jax.random.key(7)}, {"x": shifted},
              {"params": jax.tree.map(lambda a: a * 0.5, params)}]
    for change in others:
        with compiles() as again:
            _fit(xor, optimizer=optimizer(), **settings, **change)
        assert again == [], (change, again)
    with compiles() as unequal:  # a different configuration is a different program
        _fit(xor, optimizer=optimizer(), **{**settings, "l2": 0.5})
    assert unequal


def test_an_optimizer_built_anew_by_optax_is_a_new_program(xor):
    """Documented: optax optimizers compare by identity. The same object reuses the program."""
    opt = optax.adam(1e-2)
    _fit(xor, optimizer=opt)
    with compiles() as same:
        _fit(xor, optimizer=opt)
    with compiles() as new:
        _fit(xor, optimizer=optax.adam(1e-2))
    assert same == [] and any("epoch" in p for p in new)


def test_a_second_equal_sweep_compiles_nothing(xor):
    data, net, _ = xor
    run = lambda lrs, epochs=2, seeds=2: fnn.sweep(net, LOSS, data.x_train, data.y_train, seeds=seeds,
                                                   grid={"lr": lrs}, test=(data.x_test, data.y_test),
                                                   epochs=epochs, batch_size=64)
    with compiles() as first:
        a = run([1e-2, 1e-1])
    assert first
    with compiles() as again:
        b = run([1e-2, 1e-1])
        run([3e-3, 3e-2], epochs=3)  # other traced values, other epoch count: the same programs
    assert again == []
    np.testing.assert_array_equal(a.history["test_loss"], b.history["test_loss"])
    with compiles() as more_seeds:
        run([1e-2, 1e-1], seeds=3)
    assert more_seeds  # the counter is live: a new run axis is a new program


def test_update_step_evaluate_and_gradient_descent_compile_once(xor):
    data, net, params = xor
    x, v = data.x_train[:32], data.y_train[:32]
    opt = fnn.get_optimizer("momentum", 0.1)
    make = lambda: fnn.make_update_step(net, "softmax_cross_entropy", fnn.get_optimizer("momentum", 0.1), donate=False)
    assert make() is make()
    make()(params, opt.init(params), x, v)
    fnn.evaluate(net, "softmax_cross_entropy", params, data.x_test, data.y_test)
    gd = lambda lr, eps, steps: fnn.gradient_descent(net, "softmax_cross_entropy", params, data.x_train,
                                                     data.y_train, learning_rate=lr, eps=eps, max_steps=steps)
    gd(0.1, 0.0, 40)
    other_params, other_x = jax.tree.map(lambda a: a + 1, params), x + 1  # (eager ops compile too)
    state, other_test = opt.init(other_params), data.x_test * 2
    with compiles() as again:
        make()(other_params, state, other_x, v)
        fnn.evaluate(net, LOSS, other_params, other_test, data.y_test)
        gd(0.05, 1e-9, 50)  # η, ε and max_steps (up to the next power of two) are traced
    assert again == []


QUANTITIES = {
    "per_example_grads": (fnn.per_example_grads, ()),
    "per_example_grad_norms": (fnn.per_example_grad_norms, ()),
    "gradient_moments": (fnn.gradient_moments, ()),
    "ggn_diagonal": (fnn.ggn_diagonal, ()),
    "kfac_factors": (fnn.kfac_factors, ()),
    "ggn_vp": (fnn.ggn_vp, ("vector",)),
    "hvp": (fnn.hvp, ("vector",)),
    "diagnostics": (fnn.quantities.diagnostics, ()),
    "value_and_grad": (fnn.value_and_grad, ()),
}


@pytest.mark.parametrize("name", list(QUANTITIES))
def test_quantities_are_jit_able_with_net_and_loss_as_arguments(xor, name):
    data, net, params = xor
    fn, extra = QUANTITIES[name]
    x, v = data.x_train[:16], data.y_train[:16]
    args = [params, x, v] + [params] * len(extra)
    jitted = jax.jit(fn)
    assert_rel_close(jitted(net, LOSS, *args), fn(net, LOSS, *args), 1e-5)
    other = [jax.tree.map(lambda a: a * 0.5, params), x * 2, v, *args[3:]]
    entries = jitted._cache_size()  # (shared with other jits of the same function, e.g. fit's diagnostics)
    with compiles() as again:  # new values, an equal (rebuilt) network and the loss by look-up
        jitted(fnn.MLP((2, 8, 2), "tanh"), fnn.get_loss("softmax_cross_entropy"), *other)
    assert again == [] and jitted._cache_size() == entries


def test_per_layer_norms_and_monte_carlo_ggn_take_their_options_as_static(xor):
    data, net, params = xor
    x, v = data.x_train[:16], data.y_train[:16]
    norms = jax.jit(fnn.per_example_grad_norms, static_argnames="per_layer")(net, LOSS, params, x, v, per_layer=True)
    assert_rel_close(norms, fnn.per_example_grad_norms(net, LOSS, params, x, v, per_layer=True), 1e-6)
    key = jax.random.key(3)
    mc = jax.jit(fnn.ggn_diagonal, static_argnames="mc_samples")(net, LOSS, params, x, v, mc_samples=4, key=key)
    assert_rel_close(mc, fnn.ggn_diagonal(net, LOSS, params, x, v, mc_samples=4, key=key), 1e-5)
    objective = fnn.Objective(net, LOSS)
    clipped = jax.jit(fnn.privacy.clipped_value_and_grad)(objective, params, x, v, clip_norm=0.5)
    assert_rel_close(clipped, fnn.privacy.clipped_value_and_grad(objective, params, x, v, clip_norm=0.5), 1e-5)


def test_configuration_values_are_static_and_equal_by_value():
    net = fnn.MLP((3, 4, 2), "relu")
    for value in (net, LOSS, fnn.get_activation("relu"), fnn.Objective(net, "mse", 0.1)):
        assert jax.tree.leaves(value) == []
    assert fnn.MLP((3, 4, 2), "relu") == net and hash(fnn.MLP((3, 4, 2), "relu")) == hash(net)
    assert fnn.Objective(net, "mse", 0.1) == fnn.Objective(net, fnn.get_loss("mse"), 0.1)
    assert fnn.get_optimizer("adam", 1e-3) is fnn.get_optimizer("adam", learning_rate=1e-3, momentum=0.9)
    assert fnn.plain_gd(0.1) is fnn.plain_gd(0.1) and fnn.plain_gd(0.1) is not fnn.plain_gd(0.2)


def test_value_and_grad_is_the_values_of_the_jax_transform_of_bridged_loss(xor):
    data, net, params = xor
    x, v = data.x_train[:32], data.y_train[:32]
    value, grads = fnn.value_and_grad(net, LOSS, params, x, v)
    transform = jax.value_and_grad(fnn.bridged_loss(net, LOSS))
    assert callable(transform)
    t_value, t_grads = jax.jit(transform)(params, x, v)
    assert_rel_close(t_value, value, 1e-6)
    assert_rel_close(t_grads, grads, 1e-6)
    j_value, j_grads = jax.jit(fnn.value_and_grad)(net, LOSS, params, x, v)
    assert_rel_close((j_value, j_grads), (value, grads), 1e-6)
    assert "not a transform" in fnn.value_and_grad.__doc__.split("\n")[0]


def test_fit_sweep_and_the_cli_share_one_default_optimizer(xor):
    defaults = (optim.DEFAULT_OPTIMIZER, optim.DEFAULT_LEARNING_RATE, optim.DEFAULT_MOMENTUM)
    assert defaults == ("adam", 1e-3, 0.9)
    assert (SWEEP_DEFAULTS["optimizer"], SWEEP_DEFAULTS["lr"], SWEEP_DEFAULTS["momentum"]) == defaults
    # fnn train leaves lr and momentum to the optimizer: Adam's 1e-3, and no momentum (Adam has none).
    args = build_parser().parse_args(["train"])
    assert (args.optimizer, args.lr, args.momentum) == (config.DEFAULTS["optimizer"], None, None) == ("adam", None, None)
    resolved = config.resolve_optimizer({k: getattr(args, k) for k in config.DEFAULTS})
    assert (resolved["optimizer"], resolved["lr"], resolved["momentum"]) == ("adam", 1e-3, None)
    assert fnn.get_optimizer() is fnn.get_optimizer(*defaults)
    p_default, h_default = _fit(xor)
    p_adam, h_adam = _fit(xor, optimizer=optax.adam(1e-3))
    assert h_default == h_adam
    jax.tree.map(np.testing.assert_array_equal, p_default, p_adam)


def test_gradient_descent_history_has_fits_shape_and_says_why_it_stopped(xor, x64):
    data, net, params = xor
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    run = lambda **kw: fnn.gradient_descent(net, "softmax_cross_entropy", params, data.x_train, data.y_train,
                                            learning_rate=0.5, **kw)
    with pytest.warns(UserWarning, match="max_steps=5 before"):
        p, h = run(eps=1e-9, max_steps=5, l2=0.01)
    assert h["stopped"] == "max_steps" and h["steps"] == 5 and h["epoch"] == [0, 1, 2, 3, 4, 5]
    assert all(isinstance(h[k], list) and len(h[k]) == 6 for k in ("epoch", "train_loss", "loss"))
    assert h["train_loss"][-1] == pytest.approx(fnn.evaluate(net, "softmax_cross_entropy", p, data.x_train,
                                                             data.y_train)["loss"], rel=1e-10)
    penalty = float(fnn.l2_penalty(p, 0.01))
    assert h["loss"][-1] - h["train_loss"][-1] == pytest.approx(penalty, rel=1e-10) and penalty > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, fixed = run(eps=0.0, max_steps=5)  # a fixed budget asked for: no warning
        _, done = run(eps=1e-2, max_steps=1000)
    assert fixed["stopped"] == "max_steps" and done["stopped"] == "converged" and done["steps"] < 1000
    assert done["loss"] == done["train_loss"]  # no L2 term
    fnn.plots.pyplot().close(fnn.plot_history(done))


def test_enable_compile_cache_serves_a_new_process(tmp_path):
    script = ("import jax, fnn; from fnn import data as d; s = d.xor(); net = fnn.MLP((2, 4, 2), 'tanh');"
              f"print(fnn.enable_compile_cache({str(tmp_path / 'cache')!r}));"
              "fnn.fit(net, 'softmax_cross_entropy', fnn.init(jax.random.key(0), net), s.x_train, s.y_train,"
              " key=jax.random.key(1), epochs=1)")
    env = {k: a for k, a in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "FNN_"))}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.strip() == str(tmp_path / "cache")
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any("epoch" in e for e in entries)
    subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == entries  # found, not compiled again
