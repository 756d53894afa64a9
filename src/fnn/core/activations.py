"""Element-wise activations, each paired with its hand-written derivative.

An :class:`Activation` is a named pair ``(fn, grad)``: ``fn(z)`` is the
activation and ``grad(z, y)`` its derivative ``f'(z)``, given both the
pre-activation ``z`` and the output ``y = fn(z)`` so that rules such as
``σ'(z) = y (1 - y)`` reuse the forward value instead of recomputing it.

At points where ``f`` is not differentiable the derivative follows the
convention of ``jax.grad`` (``relu'(0) = 0``, ``leaky_relu'(0) = 1``), so the
hand-written backward pass and autodiff agree everywhere.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fnn.core.registry import Registry

Array = jax.Array


class Activation(NamedTuple):
    """A named element-wise activation and its derivative.

    Attributes:
      name: the name it is looked up and serialised by.
      fn: ``z -> f(z)``.
      grad: ``(z, y) -> f'(z)``, where ``y = f(z)``.
      grad2: ``(z, y) -> f''(z)``, the second derivative, for Hessian-vector products
        (:func:`fnn.hvp`); optional for activations of your own.
      kinks: the points ``z`` where ``f`` is not differentiable (``(0.0,)`` for relu), ``()``
        for a smooth activation, or ``None`` (the default for activations of your own):
        unknown, so :func:`fnn.gradcheck` looks for kinks numerically. The gradient check
        leaves out of its finite differences the examples whose pre-activations lie within
        the step of a kink, where a difference quotient does not approximate the derivative.
    """

    name: str
    fn: Callable[[Array], Array]
    grad: Callable[[Array, Array], Array]
    grad2: Callable[[Array, Array], Array] | None = None
    kinks: tuple[float, ...] | None = None

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


# A static value to JAX (a pytree with no leaves, compared by ==): it passes through jax.jit,
# vmap and grad as part of the program, so jax.jit(fnn.per_example_grads)(net, loss, ...) works.
jax.tree_util.register_static(Activation)


def _step(z: Array) -> Array:
    # The Heaviside step: differentiable nowhere useful, and its derivative is
    # zero almost everywhere, which is exactly why it cannot be trained.
    return jnp.where(z >= 0, 1.0, 0.0).astype(z.dtype)


def _zero(z, y):
    return jnp.zeros_like(z)


identity = Activation("identity", lambda z: z, lambda z, y: jnp.ones_like(z), _zero, ())
step = Activation("step", _step, _zero, _zero, (0.0,))  # a jump, not only a kink
# step(0) = 1 here (z >= 0); deck 001 of the lectures defines g(0) = 0 (1 only for z > 0). Both have
# derivative 0 wherever they have one, which is why neither trains by backpropagation.
# σ' = σ(1 − σ), σ'' = σ(1 − σ)(1 − 2σ); tanh' = 1 − tanh², tanh'' = −2 tanh (1 − tanh²).
sigmoid = Activation("sigmoid", jax.nn.sigmoid, lambda z, y: y * (1 - y), lambda z, y: y * (1 - y) * (1 - 2 * y),
                     ())
tanh = Activation("tanh", jnp.tanh, lambda z, y: 1 - y * y, lambda z, y: -2 * y * (1 - y * y), ())
relu = Activation(
    "relu", jax.nn.relu, lambda z, y: jnp.where(z > 0, 1.0, 0.0).astype(z.dtype), _zero, (0.0,)
)
# softplus(z) = log(1 + e^z) = logaddexp(z, 0) never overflows; its derivative is σ(z), then σ(1 − σ).
softplus = Activation(
    "softplus", lambda z: jnp.logaddexp(z, 0.0), lambda z, y: jax.nn.sigmoid(z),
    lambda z, y: jax.nn.sigmoid(z) * (1 - jax.nn.sigmoid(z)), (),
)


def leaky_relu(alpha: float = 0.01) -> Activation:
    """Leaky ReLU ``f(z) = z if z >= 0 else α z``; ``f'(0) = 1`` as in ``jax.grad``.

    Activations are values: ``leaky_relu(0.2) == leaky_relu(0.2)`` (the same
    object, built once per slope), so a network rebuilt from its description
    equals the original and reuses its compiled programs. The name carries the
    exact slope (``"leaky_relu(0.2)"``), so :func:`get_activation` rebuilds it.

    Example:
      >>> import jax.numpy as jnp, fnn
      >>> act = fnn.leaky_relu(0.25)
      >>> act is fnn.leaky_relu(0.25), act == fnn.get_activation("leaky_relu(0.25)")
      (True, True)
      >>> z = jnp.array([-2.0, 0.0, 2.0])
      >>> act.fn(z).tolist(), act.grad(z, act.fn(z)).tolist()   # f'(0) = 1, as jax.grad has it
      ([-0.5, 0.0, 2.0], [0.25, 1.0, 1.0])
    """
    alpha = float(alpha)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"leaky_relu slope alpha must lie in [0, 1), got {alpha}.")
    return _leaky_relu(alpha)


@functools.lru_cache(maxsize=None)
def _leaky_relu(alpha: float) -> Activation:
    return Activation(
        f"leaky_relu({alpha!r})" if alpha != 0.01 else "leaky_relu",
        lambda z: jnp.where(z >= 0, z, alpha * z),
        lambda z, y: jnp.where(z >= 0, 1.0, alpha).astype(z.dtype),
        _zero,
        (0.0,),
    )


ACTIVATIONS: Registry[Activation] = Registry(
    "activation", {a.name: a for a in (identity, step, sigmoid, tanh, relu, softplus, leaky_relu())},
    factories={"leaky_relu": leaky_relu}, entry_type=Activation,
    hint="or an fnn.Activation(name, fn, grad) of your own",
)
"""The built-in activations by name: identity, step, sigmoid, tanh, relu, softplus and
``leaky_relu(α)`` (the name with a slope in brackets builds one). :func:`get_activation`
looks names up here; an :class:`Activation` of your own needs no entry."""


def get_activation(spec: str | Activation) -> Activation:
    """Looks an activation up by name (``"relu"``, ``"leaky_relu(0.2)"``) or passes one through."""
    return ACTIVATIONS.lookup(spec)
