"""Private training: the DP-SGD gradient (Abadi et al., 2016) from one forward and one backward pass.

Per-example clipping needs each example's gradient norm; :mod:`fnn.analysis.quantities` gets those
from the layer inputs and the per-example output gradients without forming any per-example
gradient, and the clipped sum is then the plain step's own GEMMs on row-scaled gradients.
The privacy accounting (the ε of a run) is not written here: :func:`epsilon` asks Google's
``dp-accounting`` library (the ``privacy`` extra, ``pip install 'fnn[privacy]'``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.backprop import cast_like
from fnn.core.network import Params
from fnn.analysis.quantities import _hypot, _layer_norms, deltas
from fnn.core.validation import is_concrete

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

    Weights must lie in [0, 1] (0 marks padding): an example of weight ``w`` contributes up to
    ``w C`` to the sum while the noise stays ``σ C``, so weights above 1 would break the
    sensitivity bound that :func:`epsilon` assumes. Concrete weights outside [0, 1] raise
    ``ValueError``; under ``jit`` each weighted contribution is clipped to norm ``C`` as well,
    so the bound holds whatever the weights. Norms are computed without squaring overflow, so
    a float32 gradient of norm 1e30 is clipped to ``C``, not dropped.

    Returns ``(R, ĝ, norms)``: the risk before the step, the gradient shaped like ``params``,
    and the per-example norms ``‖g_b‖`` ``(B,)`` before clipping.

    Raises:
      ValueError: a bad ``clip_norm`` or ``noise_multiplier`` (see :func:`check_dp_settings`),
        weights outside [0, 1], or no ``key`` when noise or dropout needs one.
    """
    clip_norm, noise_multiplier = check_dp_settings(clip_norm, noise_multiplier)
    _check_private_weights(weights)
    dropout = isinstance(objective.dropout, jax.Array) or objective.dropout > 0
    if key is None and (noise_multiplier > 0 or dropout):
        raise ValueError("The DP-SGD step draws noise (noise_multiplier > 0) or dropout masks: "
                         "pass key=jax.random.key(seed), a fresh key for every step.")
    net, loss = objective.net, objective.loss
    noise_key = dropout_key = key
    if noise_multiplier > 0 and objective.dropout > 0:
        dropout_key, noise_key = jax.random.split(key)
    value, out, cache = objective.evaluate(params, x, v, weights, dropout_key)
    dz = deltas(net, params, cache, loss.grad(out, v))
    norms = _hypot([a for layer in _layer_norms(cache, dz) for a in layer.values()])
    w = jnp.ones(norms.shape, norms.dtype) if weights is None else jnp.asarray(weights, norms.dtype)
    total = jnp.maximum(jnp.sum(w), jnp.finfo(norms.dtype).tiny)
    limit = clip_norm / jnp.maximum(norms, jnp.finfo(norms.dtype).tiny)  # C/‖g_b‖
    # w_b c_b, capped at C/‖g_b‖ so that the weighted contribution has norm at most C whatever w_b.
    scale = jnp.minimum(w * jnp.minimum(1.0, limit), limit) / total
    grads = cast_like([{"W": y.T @ (scale[:, None] * d), "b": jnp.sum(scale[:, None] * d, 0)}
                       for y, d in zip(cache.inputs, dz)], params)  # the parameters' dtypes, as jax.grad's
    if noise_multiplier > 0:
        leaves, treedef = jax.tree.flatten(grads)
        keys = jax.random.split(noise_key, len(leaves))
        std = noise_multiplier * clip_norm / total
        leaves = [g + (std * jax.random.normal(k, g.shape, g.dtype)).astype(g.dtype) for g, k in zip(leaves, keys)]
        grads = treedef.unflatten(leaves)
    if objective.l2:
        grads = [{"W": g["W"] + objective.l2 * p["W"], "b": g["b"]} for g, p in zip(grads, params)]
    return value, grads, norms


def _real(value, name: str, *, integer: bool = False):
    """``value`` as a Python number: a number, a NumPy or JAX scalar or a 0-d array (not a
    bool); a traced value is passed through unchecked. Raises ``ValueError`` otherwise."""
    if isinstance(value, jax.core.Tracer):
        return value
    a = np.asarray(value) if isinstance(value, (np.ndarray, np.generic, jax.Array)) else None
    if a is not None and a.shape == () and a.dtype != bool and np.issubdtype(a.dtype, np.number):
        value = a.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a real number'}, got {value!r}.")
    return int(value) if integer else float(value)


def check_dp_settings(clip_norm, noise_multiplier) -> tuple[float, float]:
    """``(C, σ)`` as floats: ``clip_norm`` finite and > 0, ``noise_multiplier`` finite and >= 0
    (Python numbers, NumPy/JAX scalars and 0-d arrays alike). Raises ``ValueError`` naming the bad one."""
    clip_norm, noise_multiplier = _real(clip_norm, "clip_norm"), _real(noise_multiplier, "noise_multiplier")
    if not isinstance(clip_norm, jax.core.Tracer) and not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a positive finite number, got {clip_norm!r}.")
    if not isinstance(noise_multiplier, jax.core.Tracer) and not (
            math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}.")
    return clip_norm, noise_multiplier


def _check_private_weights(weights) -> None:
    if weights is not None and is_concrete(weights):
        w = np.asarray(weights)
        if w.size and not (np.all(w >= 0) and np.all(w <= 1)):
            raise ValueError(f"With clip_norm (DP-SGD) weights must lie in [0, 1], got values in "
                             f"[{np.nanmin(w):g}, {np.nanmax(w):g}]: an example of weight w contributes up to "
                             "w × clip_norm while the noise stays σ × clip_norm; rescale them to at most 1.")


def _accounting_arguments(noise_multiplier, batch_size, examples, steps, delta) -> tuple:
    # Each argument as a Python number, checked, so dp-accounting never sees a bad one.
    sigma, delta = _real(noise_multiplier, "noise_multiplier"), _real(delta, "delta")
    batch_size, examples, steps = (_real(a, name, integer=True) for a, name in (
        (batch_size, "batch_size"), (examples, "examples"), (steps, "steps")))
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {sigma!r}.")
    if not 0 < batch_size <= examples:
        raise ValueError(f"epsilon needs 0 < batch_size <= examples (a sampling rate in (0, 1]), got "
                         f"batch_size={batch_size}, examples={examples}.")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}.")
    return sigma, batch_size, examples, steps, delta


def epsilon(noise_multiplier: float, *, batch_size: int, examples: int, steps: int, delta: float = 1e-5,
            accountant: str = "rdp") -> float:
    """The ε of ``(ε, δ)``-DP for DP-SGD with Gaussian noise ``noise_multiplier``, batches of
    ``batch_size`` out of ``examples`` (the sampling rate ``q = batch_size / examples``; the
    Poisson-sampling analysis, as is usual for shuffled batches), over ``steps`` steps.

    Computed by ``dp-accounting`` (``accountant="rdp"``: the Rényi-DP accountant, or ``"pld"``:
    privacy loss distributions, tighter). ``inf`` without noise. Raises ``ImportError`` naming the
    extra when the library is missing, and ``ValueError`` for bad arguments: ``noise_multiplier``
    must be a finite real >= 0; ``batch_size``, ``examples`` and ``steps`` integers (``2.0`` is
    taken, ``2.5`` and ``True`` are not) with ``0 < batch_size <= examples`` (a sampling rate in
    (0, 1]) and ``steps >= 0``; ``delta`` a real in (0, 1). NumPy and JAX scalars are accepted.
    """
    try:
        import dp_accounting
        from dp_accounting import pld, rdp
    except ImportError:
        raise ImportError("Privacy accounting uses dp-accounting: pip install 'fnn[privacy]'.") from None
    noise_multiplier, batch_size, examples, steps, delta = _accounting_arguments(
        noise_multiplier, batch_size, examples, steps, delta)
    if accountant not in ("rdp", "pld"):
        raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}.")
    if noise_multiplier == 0:
        return float("inf")
    if steps == 0:
        return 0.0
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(batch_size / examples, dp_accounting.GaussianDpEvent(noise_multiplier)),
        steps)
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    with _one_warning():
        acc.compose(event)
        return float(acc.get_epsilon(delta))


@contextlib.contextmanager
def _one_warning():
    """dp-accounting logs one absl WARNING per Rényi order whose series does not converge (5 for
    σ = 1, q ≈ 0.1); they are folded into one ``UserWarning`` naming the orders left out."""
    orders = []

    def keep(record: logging.LogRecord) -> bool:
        found = re.search(r"failed to converge.*alpha=([0-9]+(?:\.[0-9]+)?)", record.getMessage())
        if found:
            orders.append(float(found.group(1)))
        return not found

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
    if orders:
        warnings.warn(f"dp-accounting could not evaluate {len(orders)} Rényi order(s) (alpha = "
                      f"{', '.join(f'{a:g}' for a in orders)}: the series did not converge) and left them out, "
                      "so epsilon is still an upper bound, perhaps a looser one (accountant='pld' does not "
                      "use these orders).", stacklevel=4)
