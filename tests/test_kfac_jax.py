"""fnn.kfac against kfac-jax (in the `oracles` and `bench` extras; skipped without it), on one small
float64 network: the Kronecker factors of every layer, and one K-FAC step, agree to rounding.

The conventions that make them equal (stated in fnn.kfac's docstring and the training guide): fnn's
exact factors (``mc_samples=0``, KFLR) are kfac-jax's ``estimation_mode="ggn_exact"``, and its
``"fisher_exact"`` too for these losses (softmax cross-entropy and squared error, whose GGN is their
Fisher); both factors are divided by the batch size (the mean risk); kfac-jax's squared error is
``weight · Σ(t − y)² / B``, so fnn's ``mse`` (``½‖y − v‖²`` per example) is ``weight=0.5``; λ is added
alike (``damping_mode="pi"`` is kfac-jax's default π-adjusted inverse, ``"exact"`` its
``use_exact_inverses=True``); fnn's ``l2_reg`` adds ``l2_reg·θ`` to the gradient and ``l2_reg`` to λ,
kfac-jax's only to λ (its loss carries ``l2_reg/2·‖θ‖²``). kfac-jax runs with fixed learning rate and
damping, no momentum and no adaptive damping. The running averages differ after the first step
(checked as such): fnn's starts at the first batch's factors and weighs it ``ρ^t`` thereafter,
kfac-jax's is normalised, ``Σ ρ^{t−i} F_i / Σ ρ^{t−i}``.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest

import fnn
from helpers import assert_rel_close

kfac_jax = pytest.importorskip("kfac_jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from second_order_step_cost import _kfac_jax_shim  # noqa: E402

LR, DAMPING = 0.5, 0.1


def _reference_loss(loss_name: str, l2_reg: float):
    """The same network and mean risk written for kfac-jax's tracer (dense layers ``x @ W + b``), with
    ``l2_reg/2 · ‖θ‖²`` (kfac-jax's ``l2_reg`` only damps: its regulariser is the loss's to add)."""
    def loss_fn(p, batch):
        h, v = batch
        for l, layer in enumerate(p):
            h = h @ layer["W"] + layer["b"]
            h = jnp.tanh(h) if l < len(p) - 1 else h
        penalty = 0.5 * l2_reg * sum(jnp.sum(a * a) for a in jax.tree.leaves(p))
        if loss_name == "mse":
            kfac_jax.register_squared_error_loss(h, v, weight=0.5)  # fnn's mse is ½‖y − v‖² per example
            return jnp.mean(0.5 * jnp.sum((h - v) ** 2, axis=-1)) + penalty
        kfac_jax.register_softmax_cross_entropy_loss(h, v)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(h, v)) + penalty
    return loss_fn


def _kfac_jax(loss_name: str, mode: str, exact: bool, l2_reg: float):
    """kfac-jax's optimizer as experiments/second_order_step_cost.py builds it (fixed rate and damping, no
    momentum, no adaptive anything), refreshed every step."""
    return kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(_reference_loss(loss_name, l2_reg)), l2_reg=l2_reg, estimation_mode=mode,
        use_adaptive_learning_rate=False, learning_rate_schedule=lambda t: jnp.asarray(LR),
        use_adaptive_momentum=False, momentum_schedule=lambda t: jnp.asarray(0.0),
        use_adaptive_damping=False, damping_schedule=lambda t: jnp.asarray(DAMPING),
        curvature_ema=0.95, inverse_update_period=1, num_burnin_steps=0, multi_device=False,
        use_exact_inverses=exact)


@pytest.fixture
def broadcasting():
    """kfac-jax's dense-layer pattern is ``x @ W + b`` with ``b`` broadcast, which this suite's strict
    rank promotion refuses (as in tests/test_second_order.py's step-cost test)."""
    with jax.numpy_rank_promotion("allow"):
        yield


@pytest.mark.parametrize("loss_name,mode,exact,l2_reg", [
    ("softmax_cross_entropy", "ggn_exact", False, 0.0),
    ("mse", "fisher_exact", True, 1e-2),
])
def test_factors_and_steps_equal_kfac_jax(loss_name, mode, exact, l2_reg, x64, broadcasting):
    _kfac_jax_shim(kfac_jax)
    net = fnn.MLP((3, 5, 4), ("tanh", "identity"))
    loss = fnn.get_loss(loss_name)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = fnn.init(k1, net, "glorot", dtype=jnp.float64)
    x = jax.random.normal(k2, (2, 7, 3), jnp.float64)  # two batches of 7
    v = jax.random.randint(k3, (2, 7), 0, 4) if loss_name != "mse" else jax.random.normal(k3, (2, 7, 4), jnp.float64)
    ref = _kfac_jax(loss_name, mode, exact, l2_reg)
    ref_params = jax.tree.map(jnp.copy, params)  # kfac-jax donates its params
    ref_state = ref.init(jax.tree.map(jnp.copy, params), jax.random.key(5), (x[0], v[0]))
    opt = fnn.kfac(LR, DAMPING, damping_mode="exact" if exact else "pi", curvature_ema=0.95,
                   inverse_update_period=1, l2_reg=l2_reg)
    state = opt.init(params)
    batch_factors = []
    for t in range(2):
        _, grads, extra = fnn.curvature_pass(opt, net, loss, params, x[t], v[t])
        batch_factors.append(extra["factors"])
        updates, state = opt.update(grads, state, params, **extra)
        params = optax.apply_updates(params, updates)
        ref_params, ref_state, _ = ref.step(ref_params, ref_state, jax.random.key(6 + t), batch=(x[t], v[t]),
                                            global_step_int=t)
        blocks = ref_state.estimator_state.blocks_states
        if t == 0:  # one step: the batch's factors, and the same update
            for ours, block in zip(state.factors, blocks):
                assert_rel_close([ours["A"], ours["G"]], [f.value for f in block.factors], 1e-12)
            assert_rel_close(params, ref_params, 1e-12)
            assert float(jnp.abs(updates[0]["W"]).max()) > 1e-3
    # The running averages differ after the first step: fnn's is ρ·F₀ + (1 − ρ)·F₁, kfac-jax's the
    # normalised (ρ·F₀ + F₁) / (ρ + 1); each is its formula of the same batch factors.
    for l, (ours, block) in enumerate(zip(state.factors, blocks)):
        for k, f in zip(("A", "G"), block.factors):
            f0, f1 = batch_factors[0][l][k], batch_factors[1][l][k]
            assert_rel_close(ours[k], 0.95 * f0 + 0.05 * f1, 1e-12)
            assert_rel_close(f.value, (0.95 * f0 + f1) / 1.95, 1e-12)
