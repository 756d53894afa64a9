"""The static network spec, parameter initialisation and the forward pass.

A network of L layers maps ``y_0 = x`` through, for ``l = 1..L``,

    z_l = y_{l-1} W_l + b_l,     y_l = f_l(z_l),

with ``W_l`` of shape ``(d_{l-1}, d_l)``. Rows of ``x`` are examples; any
leading dimensions are batch dimensions.

For one column example this is ``z = Wᵀx + b``, the lectures' deck 003 convention (column j
of W belongs to unit j). Deck 001 writes ``a = W h`` with ``W ∈ ℝ^{d_l × d_{l−1}}``: its W is
fnn's ``Wᵀ`` (checked in ``tests/test_lectures.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.activations import Activation, get_activation
from fnn.core.layers import activation_forward, affine_forward, dropout_forward
from fnn.core.registry import Registry
from fnn.core.validation import check_inputs, check_key, check_params

Array = jax.Array
Params = list  # list of {"W": (d_in, d_out), "b": (d_out,)} dicts


@dataclasses.dataclass(frozen=True)
class MLP:
    """A multilayer perceptron's architecture: static, hashable, never traced.

    Attributes:
      sizes: ``(d_0, d_1, ..., d_L)``, input width first, output width last.
      activations: one activation per layer (``L`` of them), by name or as
        :class:`fnn.Activation` objects. The last is usually ``"identity"``:
        cross-entropy losses take logits.

    Example::

      net = fnn.MLP(sizes=(64, 128, 10), activations=("relu", "identity"))
    """

    sizes: tuple[int, ...]
    activations: tuple[Activation, ...]

    def __init__(self, sizes: Sequence[int], activations: Sequence[str | Activation] | str):
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(
                f"MLP needs at least an input and an output size, got sizes={sizes}."
            )
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
                raise ValueError(f"Layer sizes must be positive integers, got sizes={sizes}.")
        if isinstance(activations, (str, Activation)):
            # One name for the hidden layers; the output layer stays linear.
            activations = (activations,) * (len(sizes) - 2) + ("identity",)
        activations = tuple(get_activation(a) for a in activations)
        if len(activations) != len(sizes) - 1:
            raise ValueError(
                f"MLP with sizes={sizes} has {len(sizes) - 1} layers and needs one activation "
                f"per layer, got {len(activations)}."
            )
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))
        object.__setattr__(self, "activations", activations)

    @property
    def num_layers(self) -> int:
        """``L``, the number of affine layers."""
        return len(self.sizes) - 1

    @property
    def in_dim(self) -> int:
        """``d_0``, the input width."""
        return self.sizes[0]

    @property
    def out_dim(self) -> int:
        """``d_L``, the output width."""
        return self.sizes[-1]

    @property
    def num_params(self) -> int:
        """``Σ_l (d_{l-1} + 1) d_l``: weights and biases."""
        return sum((a + 1) * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    def to_dict(self) -> dict:
        """A JSON-ready description (activations by name)."""
        return {"sizes": list(self.sizes), "activations": [a.name for a in self.activations]}

    @classmethod
    def from_dict(cls, d: dict, custom: Sequence[Activation] = ()) -> "MLP":
        """The network :meth:`to_dict` described. Activations are rebuilt by name;
        ``custom`` supplies user-defined ones (matched by their ``name``)."""
        if not isinstance(d, dict) or not isinstance(d.get("sizes"), list) or not isinstance(
                d.get("activations"), list):
            raise ValueError(f"Not a network description (needs 'sizes' and 'activations' lists): {d!r}.")
        by_name = {a.name: a for a in custom}
        return cls(d["sizes"], [by_name.get(a, a) for a in d["activations"]])

    def __repr__(self) -> str:
        acts = ", ".join(a.name for a in self.activations)
        return f"MLP(sizes={self.sizes}, activations=({acts}))"


# A static value to JAX (a pytree with no leaves, compared by ==): it passes through jax.jit,
# vmap and grad as part of the program, so jax.jit(fnn.per_example_grads)(net, loss, ...) works.
jax.tree_util.register_static(MLP)


Initializer = Callable[[Array, tuple[int, ...], jnp.dtype], Array]

SCHEMES: Registry[Initializer] = Registry("init scheme", {
    # Glorot/Xavier: Var W = 2 / (fan_in + fan_out), for tanh/sigmoid.
    "glorot": jax.nn.initializers.glorot_uniform(),
    "xavier": jax.nn.initializers.glorot_uniform(),
    # He/Kaiming: Var W = 2 / fan_in, for relu.
    "he": jax.nn.initializers.he_normal(),
    "kaiming": jax.nn.initializers.he_normal(),
    # LeCun: Var W = 1 / fan_in.
    "lecun": jax.nn.initializers.lecun_normal(),
}, factories={"normal": lambda sigma: jax.nn.initializers.normal(stddev=sigma)},
    hint="'normal' (N(0, sigma²)), or any jax.nn.initializers-style function (key, shape, dtype) -> array")


def get_scheme(scheme: str | Initializer, sigma: float = 0.01) -> Initializer:
    """An initializer by name, ``"normal"`` with standard deviation ``sigma`` (or ``"normal(S)"``),
    or a callable ``(key, shape, dtype) -> array`` passed through."""
    if callable(scheme):
        return scheme
    return SCHEMES.lookup(f"normal({sigma!r})" if scheme == "normal" else scheme)


def default_float() -> jnp.dtype:
    """The default floating dtype for new parameters: float64 when ``jax_enable_x64`` is on,
    float32 otherwise."""
    return jnp.zeros(()).dtype


def init(
    key: Array,
    net: MLP,
    scheme: str | Initializer = "glorot",
    *,
    sigma: float = 0.01,
    dtype=None,
) -> Params:
    """Initial parameters: a list of ``{"W": (d_in, d_out), "b": (d_out,)}``.

    Weights are drawn by ``scheme``; biases start at zero. Each layer gets its
    own key split from ``key``.

    Args:
      key: a ``jax.random`` key.
      net: the architecture.
      scheme: ``"glorot"``/``"xavier"``, ``"he"``/``"kaiming"``, ``"lecun"``,
        ``"normal"`` (N(0, sigma²)), or a ``jax.nn.initializers`` function.
      sigma: standard deviation for ``"normal"``.
      dtype: defaults to float32, or float64 when x64 is enabled.
    """
    check_key(key)
    init_w = get_scheme(scheme, sigma)
    dtype = default_float() if dtype is None else dtype
    keys = jax.random.split(key, net.num_layers)
    return [
        {"W": init_w(k, (d_in, d_out), dtype), "b": jnp.zeros((d_out,), dtype)}
        for k, d_in, d_out in zip(keys, net.sizes[:-1], net.sizes[1:])
    ]


class Cache(NamedTuple):
    """What the forward pass keeps for the backward pass (tuples with one entry per layer).

    Attributes:
      inputs: ``y_{l-1}`` as fed into layer ``l`` (after dropout, if any).
      pre_activations: ``z_l = y_{l-1} W_l + b_l``.
      outputs: ``f_l(z_l)``, before dropout.
      masks: the inverted-dropout multiplier applied to each hidden layer's
        output (``keep / (1 - rate)``), or ``None`` where no dropout was applied.
    """

    inputs: tuple
    pre_activations: tuple
    outputs: tuple
    masks: tuple


def forward_with_cache(
    net: MLP,
    params: Params,
    x: Array,
    *,
    dropout: float = 0.0,
    key: Array | None = None,
) -> tuple[Array, Cache]:
    """The forward pass, keeping ``z_l`` and ``y_l`` of every layer.

    Args:
      net, params: the network.
      x: inputs of shape ``(..., d_0)``.
      dropout: inverted-dropout rate on hidden layers' outputs (training only):
        each unit is zeroed with probability ``dropout`` and the survivors are
        scaled by ``1 / (1 - dropout)`` so that the expected value is unchanged.
      key: PRNG key for the dropout masks; required when ``dropout > 0``.

    Returns:
      ``(y_L, cache)``: ``y_L`` of shape ``(..., d_L)``.

    Raises ``ValueError`` for params of another network, a wrong input width or
    dtype, an empty batch, or (concrete inputs only) NaN/Inf in ``x``.
    """
    check_params(net, params)
    check_inputs(net, x)
    x = jnp.asarray(x)  # array-likes (lists, numpy) too
    traced = isinstance(dropout, jax.Array)  # a rate swept over runs: its value is not known here
    if not traced and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout rate must lie in [0, 1), got {dropout}.")
    if (traced or dropout > 0.0) and key is None:
        raise ValueError("dropout > 0 needs a PRNG key: pass key=jax.random.key(...).")
    keys = jax.random.split(key, net.num_layers) if traced or dropout > 0.0 else [None] * net.num_layers
    inputs, pres, outs, masks = [], [], [], []
    y = x
    for l, (layer, act) in enumerate(zip(params, net.activations)):
        z, (y_in, _) = affine_forward(y, layer["W"], layer["b"])
        y, _ = activation_forward(act, z)
        inputs.append(y_in)
        pres.append(z)
        outs.append(y)
        if l < net.num_layers - 1:  # dropout on hidden layers only
            y, mask = dropout_forward(y, dropout, keys[l])
            masks.append(mask)
    return y, Cache(tuple(inputs), tuple(pres), tuple(outs), tuple(masks))


def forward(net: MLP, params: Params, x: Array) -> Array:
    """The network output ``y_L`` for inputs ``x`` of shape ``(..., d_0)`` (no dropout).

    Under ``jit`` the unused cache costs nothing: XLA drops it.
    """
    return forward_with_cache(net, params, x)[0]
