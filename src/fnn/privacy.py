"""Private training: the DP-SGD gradient (Abadi et al., 2016) from one forward and one backward pass.

Per-example clipping needs each example's gradient norm; :mod:`fnn.quantities` gets those
from the layer inputs and the per-example output gradients without forming any per-example
gradient, and the clipped sum is then the plain step's own GEMMs on row-scaled gradients.
The privacy accounting (the ε of a run) is not written here: :func:`epsilon` asks Google's
``dp-accounting`` library (the ``privacy`` extra, ``pip install 'fnn[privacy]'``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.network import Params
from fnn.quantities import _squared_norms, deltas

Array = jax.Array


def clipped_value_and_grad(objective, params: Params, x: Array, v: Array, weights: Array | None = None,
                           key: Array | None = None, *, clip_norm: float, noise_multiplier: float = 0.0):
    """The DP-SGD gradient (Abadi et al., 2016) from one forward and one backward pass:

        ĝ = (Σ_b w_b c_b g_b + σ C ξ) / Σ_b w_b + λ W,   c_b = min(1, C / ‖g_b‖),   ξ ~ N(0, I)

    Each example's gradient ``g_b = ∇ℓ_b`` is clipped to norm ``C = clip_norm`` and Gaussian
    noise of standard deviation ``σ C`` (``σ = noise_multiplier``) is added to the sum, which
    is then divided by the total weight ``Σ_b w_b`` (``B`` unweighted; padding has weight 0).
    The per-example output gradients ``δz_{l,b}`` are linear in example ``b``'s weight, so one
    backward gives them all; the norms come from ``‖y_{l−1,b}‖² ‖δz_{l,b}‖²``; and the clipped
    weight gradient is ``y_{l−1}ᵀ (c ⊙ δz_l)``: the same GEMMs as a plain step, and no
    per-example gradient is ever formed. Weight decay is added after clipping (it does not
    depend on the data). ``key`` draws the noise (and dropout masks); it is needed when
    ``noise_multiplier > 0`` or the objective has dropout.

    Returns ``(R, ĝ, norms)``: the risk before the step, the gradient shaped like ``params``,
    and the per-example norms ``‖g_b‖`` ``(B,)`` before clipping.
    """
    net, loss = objective.net, objective.loss
    noise_key = dropout_key = key
    if noise_multiplier > 0 and objective.dropout > 0:
        dropout_key, noise_key = jax.random.split(key)
    value, out, cache = objective.evaluate(params, x, v, weights, dropout_key)
    dz = deltas(net, params, cache, loss.grad(out, v))
    norms = jnp.sqrt(sum(layer["W"] + layer["b"] for layer in _squared_norms(cache, dz)))
    w = jnp.ones(norms.shape, norms.dtype) if weights is None else jnp.asarray(weights, norms.dtype)
    total = jnp.maximum(jnp.sum(w), jnp.finfo(norms.dtype).tiny)
    scale = w * jnp.minimum(1.0, clip_norm / jnp.maximum(norms, jnp.finfo(norms.dtype).tiny)) / total
    grads = [{"W": y.T @ (scale[:, None] * d), "b": jnp.sum(scale[:, None] * d, 0)} for y, d in zip(cache.inputs, dz)]
    if noise_multiplier > 0:
        leaves, treedef = jax.tree.flatten(grads)
        keys = jax.random.split(noise_key, len(leaves))
        std = noise_multiplier * clip_norm / total
        leaves = [g + std * jax.random.normal(k, g.shape, g.dtype) for g, k in zip(leaves, keys)]
        grads = treedef.unflatten(leaves)
    if objective.l2:
        grads = [{"W": g["W"] + objective.l2 * p["W"], "b": g["b"]} for g, p in zip(grads, params)]
    return value, grads, norms


def epsilon(noise_multiplier: float, *, batch_size: int, examples: int, steps: int, delta: float = 1e-5,
            accountant: str = "rdp") -> float:
    """The ε of ``(ε, δ)``-DP for DP-SGD with Gaussian noise ``noise_multiplier``, batches of
    ``batch_size`` out of ``examples`` (the sampling rate ``q = batch_size / examples``; the
    Poisson-sampling analysis, as is usual for shuffled batches), over ``steps`` steps.

    Computed by ``dp-accounting`` (``accountant="rdp"``: the Rényi-DP accountant, or ``"pld"``:
    privacy loss distributions, tighter). ``inf`` without noise. Raises ``ImportError`` naming the
    extra when the library is missing, and ``ValueError`` for bad arguments.
    """
    try:
        import dp_accounting
        from dp_accounting import pld, rdp
    except ImportError:
        raise ImportError("Privacy accounting uses dp-accounting: pip install 'fnn[privacy]'.") from None
    if not (noise_multiplier >= 0 and 0 < batch_size <= examples and steps >= 0 and 0 < delta < 1):
        raise ValueError(f"epsilon needs noise_multiplier >= 0, 0 < batch_size <= examples, steps >= 0 and "
                         f"0 < delta < 1; got {noise_multiplier}, {batch_size}, {examples}, {steps}, {delta}.")
    if noise_multiplier == 0:
        return float("inf")
    if steps == 0:
        return 0.0
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(batch_size / examples, dp_accounting.GaussianDpEvent(noise_multiplier)),
        steps)
    if accountant not in ("rdp", "pld"):
        raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}.")
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    acc.compose(event)
    return float(acc.get_epsilon(delta))
