"""The hand-written backward pass, and its bridge into JAX's autodiff.

Backpropagation, batched (rows are examples), for ``l = L..1``:

    δz_l = δy_l ⊙ f_l'(z_l)                 (backward activation)
    ∂R/∂W_l = y_{l-1}ᵀ δz_l                 (parameter gradients)
    ∂R/∂b_l = Σ_b δz_l
    δy_{l-1} = δz_l W_lᵀ                    (backward affine)

starting from ``δy_L = ∂R/∂y_L`` given by the loss. Nothing in this module
calls ``jax.grad``, ``jax.vjp`` or ``jax.jacobian`` on the manual path.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.layers import activation_backward, affine_backward, dropout_backward
from fnn.core.losses import Loss, get_loss, risk, risk_grad
from fnn.core.network import MLP, Cache, Params, forward_with_cache
from fnn.core.registry import Registry
from fnn.core.validation import check_coefficient, check_key, check_params, validate

Array = jax.Array


class LayerBackward(NamedTuple):
    """What one layer's backward step gives (see :func:`backward_step`).

    Attributes:
      grads: ``{"W": ∂R/∂W_l (d_{l-1}, d_l), "b": ∂R/∂b_l (d_l,)}``.
      delta_z: ``δz_l = ∂R/∂z_l``, shaped like ``z_l`` ``(..., d_l)``.
      delta_in: ``δy_{l-1} = ∂R/∂y_{l-1}`` ``(..., d_{l-1})``, the message to the layer
        below, or ``None`` when not asked for.
    """

    grads: dict
    delta_z: Array
    delta_in: Array | None


def backward_step(net: MLP, params: Params, cache: Cache, layer: int, delta_y: Array, *,
                  input_grad: bool = True) -> LayerBackward:
    """One layer of the backward pass: from ``δy_l``, the gradient at layer ``l``'s output.

        δa_l = δy_l ⊙ m_l                (dropout, hidden layers that had it)
        δz_l = δa_l ⊙ f_l'(z_l)          (activation)
        ∂R/∂W_l = y_{l-1}ᵀ δz_l,  ∂R/∂b_l = Σ_b δz_l,  δy_{l-1} = δz_l W_lᵀ   (affine)

    Args:
      net, params, cache: the network and what :func:`fnn.forward_with_cache` kept.
      layer: the 0-based index into ``params`` (layer ``layer + 1`` in the lectures' numbering).
      delta_y: ``∂R/∂y_l``, shape ``(..., d_l)``.
      input_grad: whether to form ``δy_{l-1}`` (one GEMM; not needed below the first layer).
    """
    if layer < net.num_layers - 1:
        delta_y = dropout_backward(delta_y, cache.masks[layer])
    act = net.activations[layer]
    delta_z = activation_backward(act, delta_y, (cache.pre_activations[layer], cache.outputs[layer]))
    delta_in, dw, db = affine_backward(delta_z, (cache.inputs[layer], params[layer]["W"]),
                                       input_grad=input_grad)
    # A cotangent has its primal's dtype, as autodiff gives it: float32 parameters fed float64 inputs
    # get float32 gradients, and the message to the layer below has that layer's output dtype.
    grads = cast_like({"W": dw, "b": db}, params[layer])
    return LayerBackward(grads, delta_z, None if delta_in is None else delta_in.astype(cache.inputs[layer].dtype))


def cast_like(tree, like):
    """``tree`` with every leaf cast to the dtype of the matching leaf of ``like`` (same structure):
    hand-written gradients take their parameters' dtypes, as ``jax.grad``'s do."""
    return jax.tree.map(lambda a, p: jnp.asarray(a).astype(jnp.result_type(p)), tree, like)


def backward_with_input_grad(
    net: MLP, params: Params, cache: Cache, dout: Array, *, input_grad: bool = True
) -> tuple[Params, Array | None]:
    """The backward pass, :func:`backward_step` from layer ``L`` down to 1; also returns
    ``δy_0 = ∂R/∂x`` ``(..., d_0)`` when ``input_grad``.

    Args:
      net, params: the network.
      cache: from :func:`fnn.forward_with_cache` on the same params.
      dout: ``δy_L = ∂R/∂y_L``, shape ``(..., d_L)`` (already divided by the batch size).
      input_grad: whether to compute ``δy_0`` (one more matmul).

    Returns:
      ``(grads, δy_0)`` with ``grads`` shaped like ``params``.
    """
    _check_backward(net, params, cache, dout)
    grads = [None] * net.num_layers
    delta_y = dout
    for l in reversed(range(net.num_layers)):
        step = backward_step(net, params, cache, l, delta_y, input_grad=l > 0 or input_grad)
        grads[l], delta_y = step.grads, step.delta_in
    return grads, delta_y


def _check_backward(net: MLP, params: Params, cache: Cache, dout) -> None:
    check_params(net, params)
    if not isinstance(cache, Cache) or len(cache.pre_activations) != net.num_layers:
        raise ValueError(
            f"cache must be the Cache that fnn.forward_with_cache returned for {net!r} "
            f"(one entry per layer, {net.num_layers} layers)."
        )
    if jnp.shape(dout) != jnp.shape(cache.outputs[-1]):
        raise ValueError(
            f"dout has shape {jnp.shape(dout)} but the network output has shape "
            f"{jnp.shape(cache.outputs[-1])}: pass dout = ∂R/∂y_L, shaped like the output."
        )


def backward(net: MLP, params: Params, cache: Cache, dout: Array) -> Params:
    """Parameter gradients ``∂R/∂W_l, ∂R/∂b_l`` from the cache and ``dout = ∂R/∂y_L``.

    Returns a list shaped like ``params``.
    """
    return backward_with_input_grad(net, params, cache, dout, input_grad=False)[0]


def l2_penalty(params: Params, l2: float) -> Array:
    """``(λ/2) Σ_l ‖W_l‖²`` (a scalar): weight decay on the weights ``W_l``, not the biases.
    Its gradient ``λ W_l`` is added by hand in the manual path."""
    return 0.5 * l2 * sum(jnp.sum(layer["W"] ** 2) for layer in params)


def _add_l2_grad(grads: Params, params: Params, l2: float) -> Params:
    if not isinstance(l2, jax.Array) and l2 == 0.0:
        return grads
    return [{"W": g["W"] + l2 * p["W"], "b": g["b"]} for g, p in zip(grads, params)]


@dataclasses.dataclass(frozen=True)
class Objective:
    """What defines the risk being minimised, as one static, hashable value:

        R(θ) = Σ_b w_b ℓ(f(x_b; θ), v_b) / Σ_b w_b + (λ/2) Σ_l ‖W_l‖²

    with inverted dropout at rate ``dropout`` on the hidden layers (in training).

    Attributes:
      net: the :class:`fnn.MLP`.
      loss: the :class:`fnn.Loss` (a name is looked up).
      l2: the weight-decay coefficient λ ≥ 0.
      dropout: the dropout rate in [0, 1).

    Inside a traced function (one run of :func:`fnn.sweep`), ``l2`` and ``dropout`` may be
    traced arrays: they are then used as they are, unchecked, and the objective is not hashable.
    """

    net: MLP
    loss: Loss
    l2: float = 0.0
    dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "loss", get_loss(self.loss))
        if not isinstance(self.l2, jax.Array):
            check_coefficient(self.l2, "l2")
            object.__setattr__(self, "l2", float(self.l2))
        if not isinstance(self.dropout, jax.Array):
            check_coefficient(self.dropout, "dropout rate", upper=1.0)
            object.__setattr__(self, "dropout", float(self.dropout))

    def evaluate(self, params: Params, x: Array, v: Array, weights: Array | None = None,
                 key: Array | None = None) -> tuple[Array, Array, Cache]:
        """``(R, y_L, cache)``: the risk, the network output ``(B, d_L)`` and the forward cache."""
        out, cache = forward_with_cache(self.net, params, x, dropout=self.dropout, key=key)
        value = risk(self.loss, out, v, weights)
        if isinstance(self.l2, jax.Array) or self.l2:
            value = value + l2_penalty(params, self.l2)
        return value, out, cache


# Static to JAX like MLP and Loss (while its l2 and dropout are numbers, not traced arrays).
jax.tree_util.register_static(Objective)


def manual_value_and_grad(objective: Objective, params, x, v, weights=None, key=None):
    """``(R, ∂R/∂θ)`` by the hand-written forward and backward passes (no checks)."""
    value, out, cache = objective.evaluate(params, x, v, weights, key)
    grads = backward(objective.net, params, cache, risk_grad(objective.loss, out, v, weights))
    return value, _add_l2_grad(grads, params, objective.l2)


def autodiff_value_and_grad(objective: Objective, params, x, v, weights=None, key=None):
    """``(R, ∂R/∂θ)`` by ``jax.value_and_grad`` of the same objective (the reference)."""
    return jax.value_and_grad(lambda p: objective.evaluate(p, x, v, weights, key)[0])(params)


METHODS: Registry[Callable] = Registry("gradient method", {
    "manual": manual_value_and_grad,
    "autodiff": autodiff_value_and_grad,
})


def get_method(method: str) -> Callable:
    """The ``(R, ∂R/∂θ)`` function of a gradient method: ``"manual"`` or ``"autodiff"``."""
    return METHODS.lookup(method)


def value_and_grad(
    net: MLP,
    loss: str | Loss,
    params: Params,
    x: Array,
    v: Array,
    *,
    method: str = "manual",
    weights: Array | None = None,
    l2: float = 0.0,
    dropout: float = 0.0,
    key: Array | None = None,
) -> tuple[Array, Params]:
    """The empirical risk and its gradient with respect to ``params``: **values**, not a transform.

    Unlike ``jax.value_and_grad(f)``, which takes a function and returns a function, this
    takes the data and returns the numbers ``(R, ∂R/∂θ)`` at ``params``. The transform form is
    ``jax.value_and_grad`` of :func:`bridged_loss`, whose gradient is the same hand-written
    backward pass (equal to float rounding)::

        f = jax.value_and_grad(fnn.bridged_loss(net, "mse"))     # a function, like any JAX transform
        R, grads = f(params, x, v)                               # = fnn.value_and_grad(net, "mse", params, x, v)
        R, grads = jax.jit(f)(params, x, v)                      # and it composes: jit, vmap, grad, ...

    (``bridged_loss`` has no weights, L2 or dropout; this function has all three.) This one is
    jit-able too: ``jax.jit(fnn.value_and_grad)(net, loss, params, x, v)``, since ``net`` and a
    :class:`fnn.Loss` are static values to JAX (pass a loss object, not its name; the keyword
    ``method`` needs ``static_argnames=("method",)``).

        R(θ) = Σ_b w_b ℓ(f(x_b; θ), v_b) / Σ_b w_b + (λ/2) Σ_l ‖W_l‖²

    Args:
      net, params: the network.
      loss: a loss name or :class:`fnn.Loss`.
      x: inputs ``(B, d_0)``; v: targets ``(B, ...)``.
      method: ``"manual"`` (the hand-written backward) or ``"autodiff"`` (``jax.grad``).
      weights: optional per-example weights ``(B,)``; zero marks padding.
      l2: weight-decay coefficient λ.
      dropout, key: inverted dropout on hidden layers and its PRNG key.

    Returns:
      ``(R, grads)`` with ``grads`` shaped like ``params``.

    Inputs are validated (shapes, label range, NaN) before any computation when
    they are concrete; under ``jit`` only shapes can be checked.
    """
    objective = Objective(net, loss, l2, dropout)
    fn = get_method(method)
    validate(net, objective.loss, params, x, v, weights)
    if key is not None:
        check_key(key)
    return fn(objective, params, x, v, weights, key)


def _zero_cotangent(a: Array):
    # Integer targets have no tangent space: their cotangent has dtype float0.
    if jnp.issubdtype(a.dtype, jnp.integer) or a.dtype == jnp.bool_:
        return np.zeros(a.shape, dtype=jax.dtypes.float0)
    return jnp.zeros_like(a)


def bridge(net: MLP) -> Callable[[Params, Array], Array]:
    """``apply(params, x) -> y_L`` whose VJP is the hand-written backward pass.

    ``jax.grad`` of any function of ``apply``'s output runs :func:`backward`
    for the network part (the loss part is differentiated by JAX), under
    ``jit`` and ``vmap`` alike.
    """

    @jax.custom_vjp
    def apply(params, x):
        return forward_with_cache(net, params, x)[0]

    def fwd(params, x):
        out, cache = forward_with_cache(net, params, x)
        return out, (params, cache)

    def bwd(res, dout):
        params, cache = res
        grads, delta_x = backward_with_input_grad(net, params, cache, dout)
        return grads, delta_x

    apply.defvjp(fwd, bwd)
    return apply


def bridged_loss(net: MLP, loss: str | Loss) -> Callable[[Params, Array, Array], Array]:
    """``objective(params, x, v) -> R`` whose VJP is the fused hand-written gradient.

    The loss and the network are differentiated together by hand: the
    softmax/sigmoid cross-entropy uses ``softmax(z) − onehot(v)`` directly.
    Targets are data, not parameters: their cotangent is zero.
    """
    loss = get_loss(loss)

    @jax.custom_vjp
    def objective(params, x, v):
        return risk(loss, forward_with_cache(net, params, x)[0], v)

    def fwd(params, x, v):
        out, cache = forward_with_cache(net, params, x)
        return risk(loss, out, v), (params, cache, out, v)

    def bwd(res, g):
        params, cache, out, v = res
        grads, delta_x = backward_with_input_grad(net, params, cache, g * risk_grad(loss, out, v))
        return grads, delta_x, _zero_cotangent(v)

    objective.defvjp(fwd, bwd)
    return objective
