"""More from the backward pass: per-example gradients and their norms, gradient moments, the
diagonal and Kronecker factors of the generalized Gauss-Newton matrix, and Hessian- and
GGN-vector products, each from the forward cache and small changes to the hand-written
backward (in the spirit of BackPACK, "Packing more into backprop", ICLR 2020).

Conventions (named as BackPACK names them). Rows of ``x`` ``(B, d_0)`` are examples,
``ℓ_b`` is example ``b``'s own loss and ``R = (1/B) Σ_b ℓ_b`` the empirical risk, without
weight decay or dropout. ``g_b = ∇_θ ℓ_b`` is example ``b``'s gradient, so
``(1/B) Σ_b g_b = ∇R``.

- :func:`per_example_grads`: ``g_b`` (BackPACK's ``BatchGrad`` with ``reduction="mean"``
  is ``g_b / B``).
- :func:`per_example_grad_norms`: ``‖g_b‖₂`` (BackPACK's ``BatchL2Grad`` is ``‖g_b / B‖₂²``).
- :func:`gradient_moments`: ``Σ_b g_b²`` and the population variance ``(1/B) Σ_b g_b² −
  ((1/B) Σ_b g_b)²``, element-wise (BackPACK's ``SumGradSquared`` is ``Σ_b g_b² / B²`` and its
  ``Variance`` is ours ``/ B²``: BackPACK's per-example gradients are those of ``ℓ_b / B``).
- :func:`ggn_diagonal`, :func:`kfac_factors`, :func:`ggn_vp`: the GGN of ``R``,
  ``G = (1/B) Σ_b J_bᵀ H_b J_b`` with ``J_b = ∂y_{L,b}/∂θ`` and ``H_b = ∂²ℓ_b/∂y_{L,b}²``
  (BackPACK's ``DiagGGNExact``/``DiagGGNMC`` and ``KFLR``/``KFAC`` with mean reduction).
- :func:`hvp`: the Hessian of ``R`` times a vector.

The weight part of ``g_b`` is the outer product ``y_{l−1,b} ⊗ δz_{l,b}`` of the layer's
input and its per-example output gradient, so norms and moments come from ``y`` and ``δz``
without forming ``g_b``: ``‖y ⊗ δz‖² = ‖y‖² ‖δz‖²`` and ``Σ_b (y_b ⊗ δz_b)² = (y²)ᵀ (δz²)``.
Nothing here calls ``jax.grad``, ``jax.jvp`` or ``jax.vjp``.

Under ``jax.jit`` the loss must be a ``Loss`` object, ``fnn.get_loss(name)``, not its name: a
``str`` is no valid argument of a jitted function (JAX's ``TypeError``), while ``MLP`` and
``Loss`` are static. Or bind the name first: ``jax.jit(functools.partial(f, net, "mse"))``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fnn.core.backprop import backward, cast_like
from fnn.analysis.columns import column_deltas
from fnn.core.layers import affine_forward
from fnn.core.losses import Loss, get_loss
from fnn.core.network import MLP, Cache, Params, forward_with_cache
from fnn.core.validation import check_key, check_mc_samples, check_vector, validate

Array = jax.Array


def _prepare(net: MLP, loss, params: Params, x, v) -> tuple[Loss, Array, Cache]:
    loss = get_loss(loss)
    validate(net, loss, params, x, v)
    if jnp.ndim(x) != 2:
        raise ValueError(f"Per-example quantities need inputs of shape (B, d_0), got {jnp.shape(x)}.")
    out, cache = forward_with_cache(net, params, x)
    return loss, out, cache


def deltas(net: MLP, params: Params, cache: Cache, dout: Array) -> list[Array]:
    """``δz_l`` of every layer for the output gradient ``dout`` ``(B, d_L)``: the backward
    recursion without the weight-gradient GEMMs. With ``dout = ∂ℓ_b/∂y_L`` row by row (not
    divided by ``B``), row ``b`` of ``δz_l`` is example ``b``'s own ``∂ℓ_b/∂z_l``.

    ``dout`` may have extra leading axes ``(..., B, d_L)`` (several output gradients per
    example, as :func:`ggn_diagonal` backpropagates); they ride along in the same GEMMs.
    """
    extra = jnp.ndim(dout) - jnp.ndim(cache.outputs[-1])
    lift = lambda a: jnp.reshape(a, (1,) * extra + a.shape)  # explicit broadcasting over the extra axes
    out, delta_y = [None] * net.num_layers, dout
    for l in reversed(range(net.num_layers)):
        act = net.activations[l]
        if l < net.num_layers - 1 and cache.masks[l] is not None:
            delta_y = delta_y * lift(cache.masks[l])
        out[l] = delta_y * lift(act.grad(cache.pre_activations[l], cache.outputs[l]))
        if l:
            delta_y = out[l] @ params[l]["W"].T
    return out


def per_example_grads(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array) -> Params:
    """``g_b = ∇_θ ℓ_b`` for every example: ``params``' structure with a leading axis ``B``
    (``W`` leaves ``(B, d_{l-1}, d_l)``, ``b`` leaves ``(B, d_l)``); their mean is ``∇R``.

        ∂ℓ_b/∂W_l = y_{l−1,b} ⊗ δz_{l,b},   ∂ℓ_b/∂b_l = δz_{l,b}

    This is what ``jax.vmap(jax.grad(ℓ))`` gives, from one forward and one backward. Under
    ``jax.jit``, ``loss`` must be a ``Loss`` (``fnn.get_loss(name)``; see the module docstring).
    """
    loss, out, cache = _prepare(net, loss, params, x, v)
    dz = deltas(net, params, cache, loss.grad(out, v))
    return cast_like([{"W": y[:, :, None] * d[:, None, :], "b": d} for y, d in zip(cache.inputs, dz)], params)


def per_example_grad_norms(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, *,
                           per_layer: bool = False):
    """``‖g_b‖₂`` of shape ``(B,)``, without forming ``g_b``:

        ‖∂ℓ_b/∂W_l‖² = ‖y_{l−1,b}‖² ‖δz_{l,b}‖²,   ‖∂ℓ_b/∂b_l‖² = ‖δz_{l,b}‖²

    With ``per_layer``, a list with one ``{"W": (B,), "b": (B,)}`` of norms per layer. Under
    ``jax.jit``, ``loss`` must be a ``Loss`` (``fnn.get_loss(name)``; see the module docstring).

    Example:
      >>> import jax, jax.numpy as jnp, fnn
      >>> net = fnn.MLP((3, 4, 2), ("tanh", "identity"))
      >>> params = fnn.init(jax.random.key(0), net)
      >>> x, labels = jax.random.normal(jax.random.key(1), (5, 3)), jnp.array([0, 1, 1, 0, 1])
      >>> norms = fnn.per_example_grad_norms(net, "softmax_cross_entropy", params, x, labels)
      >>> norms.shape
      (5,)
      >>> g = fnn.per_example_grads(net, "softmax_cross_entropy", params, x, labels)
      >>> formed = jnp.sqrt(sum(jnp.sum(leaf.reshape(5, -1) ** 2, axis=1) for leaf in jax.tree.leaves(g)))
      >>> bool(jnp.allclose(norms, formed, rtol=1e-5))
      True
      >>> jitted = jax.jit(fnn.per_example_grad_norms)(net, fnn.get_loss("softmax_cross_entropy"), params, x, labels)
      >>> bool(jnp.allclose(jitted, norms, rtol=1e-5))
      True
    """
    loss, out, cache = _prepare(net, loss, params, x, v)
    norms = _layer_norms(cache, deltas(net, params, cache, loss.grad(out, v)))
    norms = cast_like(norms, [{"W": p["W"], "b": p["W"]} for p in params])  # the gradients' dtype
    return norms if per_layer else _hypot([a for layer in norms for a in layer.values()])


def _norm(a: Array) -> Array:
    # ‖a‖ over the last axis without squaring overflow (float32 above ~1.8e19): max |entry| out first.
    top = jnp.max(jnp.abs(a), axis=-1)
    safe = jnp.where(top > 0, top, 1)
    return top * jnp.sqrt(jnp.sum(jnp.square(a / safe[..., None]), axis=-1))


def _hypot(parts: list[Array]) -> Array:
    # sqrt(Σ_k p_k²) of non-negative parts, overflow-safe in the same way.
    top = functools.reduce(jnp.maximum, parts)
    safe = jnp.where(top > 0, top, 1)
    return top * jnp.sqrt(sum(jnp.square(p / safe) for p in parts))


def _layer_norms(cache: Cache, dz: list[Array]) -> list[dict]:
    # ‖∂ℓ_b/∂W_l‖ = ‖y_{l−1,b}‖ ‖δz_{l,b}‖ and ‖∂ℓ_b/∂b_l‖ = ‖δz_{l,b}‖, per example (B,).
    return [{"W": _norm(y) * _norm(d), "b": _norm(d)} for y, d in zip(cache.inputs, dz)]


def gradient_moments(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array) -> dict:
    """First and second moments of the per-example gradients, each shaped like ``params``:

        "mean":             (1/B) Σ_b g_b  = ∇R
        "sum_grad_squared": Σ_b g_b²                      ((y²)ᵀ (δz²) for W: one GEMM)
        "variance":         (1/B) Σ_b g_b² − ((1/B) Σ_b g_b)²   (population variance)

    element-wise. BackPACK's ``SumGradSquared`` and ``Variance`` (mean reduction) are
    ``sum_grad_squared / B²`` and ``variance / B²``. Under ``jax.jit``, ``loss`` must be a ``Loss``
    (``fnn.get_loss(name)``; see the module docstring).
    """
    loss, out, cache = _prepare(net, loss, params, x, v)
    dz = deltas(net, params, cache, loss.grad(out, v))
    n = x.shape[0]
    mean, sgs = _moments(cache, dz, n)
    variance = jax.tree.map(lambda s, m: s / n - m * m, sgs, mean)
    return {k: cast_like(a, params) for k, a in (("mean", mean), ("sum_grad_squared", sgs), ("variance", variance))}


def _moments(cache: Cache, dz: list[Array], n: int) -> tuple[Params, Params]:
    """``(1/n) Σ_b g_b`` and ``Σ_b g_b²`` per layer: ``yᵀδz / n`` and ``(y²)ᵀ(δz²)`` for W."""
    mean = [{"W": y.T @ d / n, "b": jnp.sum(d, 0) / n} for y, d in zip(cache.inputs, dz)]
    sgs = [{"W": (y * y).T @ (d * d), "b": jnp.sum(d * d, 0)} for y, d in zip(cache.inputs, dz)]
    return mean, sgs


def _factor_deltas(net, loss: Loss, params, out, v, cache, mc_samples: int, key) -> list[Array]:
    """``δz_l`` for each column of a factor ``S_b`` with ``H_b = S_b S_bᵀ`` (exact), or of
    ``M`` sampled output gradients scaled by ``1/√M`` (Monte Carlo): ``(B, k, d_l)`` per layer."""
    if mc_samples == 0:
        if loss.hessian_factor is None:
            raise ValueError(f"Loss {loss.name} has no hand-written Hessian factor: give it hessian_factor.")
        douts = jnp.swapaxes(loss.hessian_factor(out, v), -1, -2)
    else:
        if loss.sample is None:
            raise ValueError(f"Loss {loss.name} is not a negative log-likelihood with a sampler, so the Monte-Carlo "
                             "GGN is not defined for it: use mc_samples=0 (exact).")
        check_key(key)
        keys = jax.random.split(key, mc_samples)
        douts = jax.vmap(lambda k: loss.grad(out, loss.sample(k, out)), out_axes=1)(keys) / jnp.sqrt(mc_samples).astype(
            out.dtype)
    return column_deltas(net, params, cache, douts)  # example-major: see fnn.analysis.columns


def ggn_diagonal(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, *, mc_samples: int = 0,
                 key: Array | None = None) -> Params:
    """The diagonal of the generalized Gauss-Newton matrix ``G = (1/B) Σ_b J_bᵀ H_b J_b`` of ``R``,
    shaped like ``params``.

    Exact (``mc_samples=0``): each column ``s`` of a symmetric factor ``H_b = S_b S_bᵀ`` of
    the loss Hessian in output space is backpropagated as an output gradient, giving
    ``δz^{(s)}_l``, and ``diag G`` for ``W_l`` is ``(1/B) (y_{l−1}²)ᵀ Σ_s (δz^{(s)}_l)²``.
    Monte Carlo (``mc_samples=M``, needs ``key``): the columns are ``∂ℓ(y_b, v̂)/∂y`` for ``M``
    targets ``v̂`` drawn from the model's predictive distribution, scaled by ``1/√M``, an
    unbiased estimate (BackPACK's ``DiagGGNMC``). Under ``jax.jit``, ``loss`` must be a ``Loss``
    (``fnn.get_loss(name)``; see the module docstring).
    """
    loss, out, cache = _prepare(net, loss, params, x, v)
    return _ggn_diagonal(net, loss, params, out, v, cache, check_mc_samples(mc_samples), key)


def _ggn_diagonal(net, loss: Loss, params, out, v, cache, mc_samples: int, key) -> Params:
    dz = _factor_deltas(net, loss, params, out, v, cache, mc_samples, key)
    n = out.shape[0]
    return cast_like([{"W": (y * y).T @ jnp.sum(d * d, 1) / n, "b": jnp.sum(d * d, (0, 1)) / n}
                      for y, d in zip(cache.inputs, dz)], params)


def kfac_factors(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, *, mc_samples: int = 0,
                 key: Array | None = None) -> list[dict]:
    """Per layer, the Kronecker factors of the GGN block of ``W_l``:

        A_l = (1/B) Σ_b y_{l−1,b} y_{l−1,b}ᵀ   (d_{l−1}, d_{l−1})
        G_l = (1/B) Σ_b Σ_s δz^{(s)}_{l,b} δz^{(s)ᵀ}_{l,b}   (d_l, d_l)

    so that the block for ``vec(W_l)`` (row-major, ``W_l`` of shape ``(d_{l−1}, d_l)``) is
    approximately ``A_l ⊗ G_l`` (exactly, for one example), and ``G_l`` is the bias block.
    The ``δz^{(s)}`` are as in :func:`ggn_diagonal`: exact factor columns (``mc_samples=0``,
    BackPACK's ``KFLR``) or sampled ones (BackPACK's ``KFAC``). Under ``jax.jit``, ``loss`` must
    be a ``Loss`` (``fnn.get_loss(name)``; see the module docstring).
    """
    loss, out, cache = _prepare(net, loss, params, x, v)
    dz = _factor_deltas(net, loss, params, out, v, cache, check_mc_samples(mc_samples), key)
    n = x.shape[0]
    return [{"A": y.T @ y / n, "G": jnp.einsum("bsi,bsj->ij", d, d) / n} for y, d in zip(cache.inputs, dz)]


def _r_forward(net: MLP, params: Params, vector: Params, cache: Cache) -> tuple[list[Array], list[Array]]:
    """Pearlmutter's R-operator on the forward pass: ``(R{z_l}, R{y_l})`` for every layer, the
    directional derivatives along ``vector`` of the pre-activations and of the layer outputs
    (after dropout, as the next layer sees them), with ``R{x} = 0``:

        R{z_l} = R{y_{l−1}} W_l + y_{l−1} V_{W_l} + V_{b_l},   R{y_l} = f_l'(z_l) ⊙ R{z_l} (⊙ m_l)
    """
    rz, ry = [], []
    for l, (layer, vec, act) in enumerate(zip(params, vector, net.activations)):
        z = affine_forward(cache.inputs[l], vec["W"], vec["b"])[0]
        if ry:
            z = z + ry[-1] @ layer["W"]
        rz.append(z)
        y = act.grad(cache.pre_activations[l], cache.outputs[l]) * z
        if l < net.num_layers - 1 and cache.masks[l] is not None:
            y = y * cache.masks[l]
        ry.append(y)
    return rz, ry


def ggn_vp(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, vector: Params) -> Params:
    """``G u`` for the GGN ``G = (1/B) Σ_b J_bᵀ H_b J_b`` of ``R`` and a direction ``u`` shaped like
    ``params``: ``J u`` by the forward R-operator, ``H`` by the loss's hand-written Hessian-vector
    product, ``Jᵀ`` by the ordinary backward pass. Under ``jax.jit``, ``loss`` must be a ``Loss``
    (``fnn.get_loss(name)``; see the module docstring)."""
    loss, out, cache = _prepare(net, loss, params, x, v)
    check_vector(net, params, vector)
    return ggn_vp_cached(net, loss, params, out, v, cache, vector)


def ggn_vp_cached(net: MLP, loss: Loss, params: Params, out: Array, v: Array, cache: Cache, vector: Params) -> Params:
    """:func:`ggn_vp` from a forward pass already made (``out, cache = forward_with_cache(net,
    params, x)``), without checks: what an iterative solver calls once per iteration."""
    j_u = _r_forward(net, params, vector, cache)[1][-1]
    return backward(net, params, cache, _loss_hvp(loss, out, v, j_u) / out.shape[0])


def hvp(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array, vector: Params) -> Params:
    """``∇²R u``, the Hessian of ``R`` times a direction ``u`` shaped like ``params``, by
    forward-over-backward by hand (Pearlmutter's R-operator applied to the backward pass):

        R{δz_l} = R{δy_l} ⊙ f'(z_l) + δy_l ⊙ f''(z_l) ⊙ R{z_l}
        R{∂R/∂W_l} = R{y_{l−1}}ᵀ δz_l + y_{l−1}ᵀ R{δz_l},   R{∂R/∂b_l} = Σ_b R{δz_l}
        R{δy_{l−1}} = R{δz_l} W_lᵀ + δz_l V_{W_l}ᵀ

    starting from ``R{δy_L} = H_b R{y_L} / B``. Needs each activation's second derivative
    (``Activation.grad2``). Under ``jax.jit``, ``loss`` must be a ``Loss`` (``fnn.get_loss(name)``;
    see the module docstring).
    """
    loss, out, cache = _prepare(net, loss, params, x, v)
    check_vector(net, params, vector)
    check_grad2(net)
    return hvp_cached(net, loss, params, out, v, cache, vector)


def check_grad2(net: MLP) -> None:
    """Raises unless every activation of ``net`` has its second derivative (what :func:`hvp` needs)."""
    for act in net.activations:
        if act.grad2 is None:
            raise ValueError(f"hvp needs the second derivative of activation {act.name}: give it grad2.")


def hvp_cached(net: MLP, loss: Loss, params: Params, out: Array, v: Array, cache: Cache, vector: Params) -> Params:
    """:func:`hvp` from a forward pass already made (``out, cache = forward_with_cache(net,
    params, x)``), without checks: what an iterative eigensolver calls once per iteration."""
    rz, ry = _r_forward(net, params, vector, cache)
    n = out.shape[0]
    delta_y, r_delta_y = loss.grad(out, v) / n, _loss_hvp(loss, out, v, ry[-1]) / n
    result = [None] * net.num_layers
    for l in reversed(range(net.num_layers)):
        act, z, a = net.activations[l], cache.pre_activations[l], cache.outputs[l]
        if l < net.num_layers - 1 and cache.masks[l] is not None:
            delta_y, r_delta_y = delta_y * cache.masks[l], r_delta_y * cache.masks[l]
        delta_z = delta_y * act.grad(z, a)
        r_delta_z = r_delta_y * act.grad(z, a) + delta_y * act.grad2(z, a) * rz[l]
        r_weight = cache.inputs[l].T @ r_delta_z
        if l:  # R{y_{l−1}} = 0 for the data
            r_weight = r_weight + ry[l - 1].T @ delta_z
        result[l] = {"W": r_weight, "b": jnp.sum(r_delta_z, 0)}
        if l:
            delta_y, r_delta_y = delta_z @ params[l]["W"].T, r_delta_z @ params[l]["W"].T + delta_z @ vector[l]["W"].T
    return cast_like(result, params)


def _loss_hvp(loss: Loss, out: Array, v: Array, u: Array) -> Array:
    if loss.hessian_vp is None:
        raise ValueError(f"Loss {loss.name} has no hand-written Hessian-vector product: give it hessian_vp.")
    return loss.hessian_vp(out, v, u)


def diagnostics(net: MLP, loss: str | Loss, params: Params, x: Array, v: Array) -> dict[str, Array]:
    """Per-layer training diagnostics on a batch, from one forward, one backward and the GGN pass:

        grad_norm_l{k}:   ‖∇_{θ_k} R‖                      (W and b of layer k together)
        snr_l{k}:         Σ mean² / Σ variance             (gradient signal-to-noise ratio)
        norm_spread_l{k}: std_b ‖g_{k,b}‖ / mean_b ‖g_{k,b}‖ (how unequal the examples' pulls are)
        ggn_trace_l{k}:   Σ diag G over layer k's parameters (curvature)

    with layers numbered from 1 as in the lectures. Returns scalars keyed as above. Under
    ``jax.jit``, ``loss`` must be a ``Loss`` (``fnn.get_loss(name)``; see the module docstring).
    """
    loss, out, cache = _prepare(net, loss, params, x, v)
    dz = deltas(net, params, cache, loss.grad(out, v))
    n = x.shape[0]
    layer_norms = _layer_norms(cache, dz)
    ggn = _ggn_diagonal(net, loss, params, out, v, cache, 0, None)  # the same forward pass
    result = {}
    for k, (mean, sgs, sq, g) in enumerate(zip(*_moments(cache, dz, n), layer_norms, ggn), 1):
        mean_sq = sum(jnp.sum(m * m) for m in mean.values())
        variance = sum(jnp.sum(sgs[p] / n - mean[p] * mean[p]) for p in mean)
        norms = _hypot([sq["W"], sq["b"]])
        result[f"grad_norm_l{k}"] = jnp.sqrt(mean_sq)
        result[f"snr_l{k}"] = mean_sq / jnp.maximum(variance, jnp.finfo(variance.dtype).tiny)
        result[f"norm_spread_l{k}"] = jnp.std(norms) / jnp.maximum(jnp.mean(norms), jnp.finfo(norms.dtype).tiny)
        result[f"ggn_trace_l{k}"] = jnp.sum(g["W"]) + jnp.sum(g["b"])
    return result
