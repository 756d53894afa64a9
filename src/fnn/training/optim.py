"""Update rules and the jit-compiled update step.

Every optimizer is an optax ``GradientTransformation``; plain gradient descent
``θ ← θ − η ∇R(θ)`` is written out here as one, so that it and any optax
optimizer (sgd, momentum, adam, ...) are fed the same hand-written gradients.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.core.backprop import Objective, get_method
from fnn.analysis.curvature import attach, check_curvature_loss, curvature_of, value_grad_curvature
from fnn.training.hessian_free import gauss_newton, newton
from fnn.core.losses import Loss
from fnn.core.network import MLP
from fnn.analysis.privacy import check_dp_settings, clipped_value_and_grad
from fnn.core.programs import program_cache
from fnn.core.registry import Registry
from fnn.training.schedules import with_schedule
from fnn.training.second_order import ggn_diag_precond, kfac
from fnn.core.validation import check_coefficient, check_optimizer, validate

Array = jax.Array

# The default optimizer of every entry point (fnn.fit, fnn.sweep, fnn train, fnn sweep): the
# one place it is set.
DEFAULT_OPTIMIZER, DEFAULT_LEARNING_RATE, DEFAULT_MOMENTUM = "adam", 1e-3, 0.9


@program_cache
def plain_gd(learning_rate: float) -> optax.GradientTransformation:
    """Gradient descent written out: the update is ``−η ∇R(θ)``; no state.

    Equivalent to ``optax.sgd(learning_rate)``, kept as the lectures' rule in code. For a
    schedule, ``get_optimizer("gd", schedule)`` wraps it in ``optax.inject_hyperparams``.
    An equal rate gives the same optimizer object, so programs built on it are reused.
    """
    check_learning_rate(learning_rate)

    def init_fn(params):
        return optax.EmptyState()

    def update_fn(grads, state, params=None):
        return jax.tree.map(lambda g: -learning_rate * g, grads), state

    return optax.GradientTransformation(init_fn, update_fn)


def check_learning_rate(learning_rate: float) -> None:
    """Raises unless the learning rate is a finite positive number (or an array: under
    ``optax.inject_hyperparams`` it arrives traced)."""
    if isinstance(learning_rate, jax.Array):
        return
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.number)) or not (
            np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"The learning rate must be positive and finite, got {learning_rate!r}.")


def _momentum_sgd(nesterov: bool):
    def factory(learning_rate, momentum):
        return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
    factory.uses_momentum = True  # the table's momentum: the others ignore it
    return factory


def _no_momentum(factory):
    def build(learning_rate, momentum):
        return factory(learning_rate)
    return build


def two_argument(build):
    """``build`` as a factory of ``(learning_rate, momentum)`` alone: ``optax.inject_hyperparams``
    reads its factory's signature, and a ``**settings`` there would become a hyperparameter."""
    def factory(learning_rate, momentum):
        return build(learning_rate, momentum)
    return factory


def _second_order(factory, **fixed):
    """A table entry for a second-order transformation: its own settings by keyword (see
    :func:`get_optimizer`); the table's momentum is not passed on, K-FAC's own ``momentum`` is
    the setting ``kfac_momentum``."""
    signature = inspect.signature(factory).parameters
    known = {_RENAMED.get(k, k) for k in signature} - {"learning_rate", *fixed}

    def build(learning_rate, momentum, **settings):
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"{factory.__name__} takes no setting {', '.join(unknown)}: it takes "
                             f"{', '.join(sorted(known))}.")
        own = {_NATIVE.get(k, k): a for k, a in settings.items()}
        return factory(learning_rate, **fixed, **own)
    build.takes_settings, build.settings = True, frozenset(known)
    build.learning_rate = signature["learning_rate"].default  # its own default rate
    return build


# A second-order transformation's keyword -> its setting's name in get_optimizer (whose momentum
# is the first-order optimizers'), and back.
_RENAMED = {"momentum": "kfac_momentum"}
_NATIVE = {b: a for a, b in _RENAMED.items()}


def default_learning_rate(spec: str) -> float:
    """The learning rate optimizer ``spec`` (a name of :func:`get_optimizer`) trains with unless told:
    a second-order transformation's own default (1.0 for ``gauss_newton`` and ``newton``, 0.1 for
    ``kfac`` and ``ekfac``, 1e-2 for ``ggn_diag``), else ``DEFAULT_LEARNING_RATE`` (1e-3). What ``fnn train``
    and ``fnn sweep`` use without ``--lr``. Raises ``ValueError`` for an unknown name."""
    return getattr(OPTIMIZERS.lookup(spec), "learning_rate", DEFAULT_LEARNING_RATE)


# name -> factory(learning_rate, momentum); each takes a traced rate under inject_hyperparams.
OPTIMIZERS: Registry[Callable[[float, float], optax.GradientTransformation]] = Registry("optimizer", {
    "gd": _no_momentum(plain_gd),
    "sgd": _no_momentum(optax.sgd),
    "momentum": _momentum_sgd(False),
    "nesterov": _momentum_sgd(True),
    "adam": _no_momentum(optax.adam),
    "adamw": _no_momentum(optax.adamw),
    "rmsprop": _no_momentum(optax.rmsprop),
    "kfac": _second_order(kfac),
    "ekfac": _second_order(kfac, ekfac=True),
    "ggn_diag": _second_order(ggn_diag_precond),
    "gauss_newton": _second_order(gauss_newton),
    "newton": _second_order(newton),
}, hint="or any optax GradientTransformation")


@program_cache
def get_optimizer(
    spec: str | optax.GradientTransformation = DEFAULT_OPTIMIZER,
    learning_rate: float | Callable = DEFAULT_LEARNING_RATE,
    momentum: float = DEFAULT_MOMENTUM,
    **settings,
) -> optax.GradientTransformation:
    """An optimizer by name (``"gd"``, ``"sgd"``, ``"momentum"``, ``"adam"``, ...) with learning
    rate η and momentum, or an optax ``GradientTransformation`` passed through. The defaults,
    ``get_optimizer()``, are Adam with η = 1e-3: the default of :func:`fnn.fit`, :func:`fnn.sweep`
    and ``fnn train``.

    ``learning_rate`` may be an optax schedule (``step -> rate``, e.g. from
    :func:`fnn.make_schedule`): the optimizer is then wrapped in ``optax.inject_hyperparams``,
    so its state holds the current rate and :func:`fnn.fit` records it as ``lr``.

    The second-order ones, ``"kfac"``, ``"ekfac"``, ``"ggn_diag"``, ``"gauss_newton"`` and
    ``"newton"`` (:func:`fnn.kfac`, :func:`fnn.ggn_diag_precond`, :func:`fnn.gauss_newton`,
    :func:`fnn.newton`), take their own settings as keywords (``damping=``,
    ``inverse_update_period=``, ...; K-FAC's own ``momentum`` as ``kfac_momentum=``) and ignore
    ``momentum``; the others take none. Their natural learning rates differ from this default
    (``fnn.training.optim.default_learning_rate``, what ``fnn train`` uses without ``--lr``).

    Equal arguments give the same optimizer object. Optax transformations compare by identity,
    so this is what lets a second ``fit``/``make_update_step`` with equal settings reuse the
    first one's compiled program; ``optax.adam(1e-3)`` built anew is a new optimizer, and
    compiles anew (see :mod:`fnn.core.programs`)."""
    if isinstance(spec, optax.GradientTransformation):
        return spec
    build = OPTIMIZERS.lookup(spec)
    check_coefficient(momentum, "momentum", upper=1.0)
    if settings:
        if not getattr(build, "takes_settings", False):
            raise ValueError(f"Optimizer {spec!r} takes no settings such as {', '.join(settings)}: those belong to "
                             "the second-order optimizers (kfac, ekfac, ggn_diag, gauss_newton, newton).")
        build = functools.partial(build, **settings)
    if callable(learning_rate):
        # inject_hyperparams wraps update: the curvature it asks for is recorded on the wrapper too.
        curvature = curvature_of(build(1.0, momentum))
        scheduled = with_schedule(two_argument(build), learning_rate, momentum=momentum)
        return scheduled if curvature is None else attach(scheduled, curvature)
    check_learning_rate(learning_rate)
    return build(learning_rate, momentum)


def make_update_fn(
    net: MLP,
    loss: str | Loss,
    optimizer: optax.GradientTransformation,
    method: str = "manual",
    *,
    l2: float = 0.0,
    dropout: float = 0.0,
    clip_norm: float | None = None,
    noise_multiplier: float = 0.0,
) -> Callable:
    """The pure (un-jitted) update step of the objective ``R`` (see :class:`fnn.Objective`):

        update(params, opt_state, x, v, key=None, weights=None) -> (params, opt_state, {"loss": R})
        g = ∂R/∂θ (by ``method``),  (u, opt_state) = optimizer.update(g, opt_state, θ),  θ ← θ + u

    ``x``: ``(B, d_0)``; ``weights``: ``(B,)``; ``R`` is the risk before the update.
    With ``clip_norm=C`` the step is DP-SGD: ``g`` is the clipped, noised gradient of
    :func:`fnn.analysis.privacy.clipped_value_and_grad` (each example's gradient clipped to norm
    ``C``, noise ``σ C`` added to the sum, ``σ = noise_multiplier``; one backward pass, no
    per-example gradients), and the metrics add ``"clipped"``, the fraction of examples
    whose gradient norm exceeded ``C``. ``key`` is needed for dropout and for noise.
    It is the body that :func:`make_update_step` jits, that the training loops
    scan over, and that :mod:`fnn.training.parallel` shards.
    """
    objective = Objective(net, loss, l2, dropout)
    check_optimizer(optimizer)
    curvature = curvature_of(optimizer)
    grad_fn = _gradient(objective, method, clip_norm, noise_multiplier) if curvature is None else \
        _with_curvature(objective, curvature, method, clip_norm)

    def update(params, opt_state, x, v, key=None, weights=None):
        # Under jit this runs once per input shape, at trace time: shapes, dtypes and
        # the network's structure are checked for free; values only when concrete.
        validate(net, objective.loss, params, x, v, weights)
        value, grads, metrics = grad_fn(params, x, v, weights, key)
        extra = metrics.pop("curvature", {})
        # fnn's own code is clean under strict dtype promotion; some optax
        # transformations (adam's bias correction) are not, so they get the default.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": value, **metrics}

    update.needs_key = isinstance(dropout, jax.Array) or dropout > 0 or noise_multiplier > 0 or (
        curvature is not None and curvature.needs_key)
    return update


def _with_curvature(objective: Objective, curvature, method: str, clip_norm) -> Callable:
    """``(params, x, v, weights, key) -> (R, g, {"curvature": extra})`` for a second-order
    optimizer: the curvature it asks for, from the same hand-written pass as the gradient."""
    if method != "manual" or clip_norm is not None:
        raise ValueError("Second-order optimizers take their curvature from the hand-written pass: use "
                         "method='manual' and no clip_norm.")
    check_curvature_loss(objective.loss, curvature)

    def gradient(p, x, v, w, key):
        value, grads, extra = value_grad_curvature(objective, curvature, p, x, v, w, key)
        return value, grads, {"curvature": extra}
    return gradient


def _gradient(objective: Objective, method: str, clip_norm, noise_multiplier) -> Callable:
    """``(params, x, v, weights, key) -> (R, g, extra metrics)`` for a plain or a DP-SGD step."""
    grad_fn = get_method(method)
    if clip_norm is None:
        _, noise_multiplier = check_dp_settings(1.0, noise_multiplier)
        if noise_multiplier:
            raise ValueError("noise_multiplier needs clip_norm: the noise is scaled by the clipping norm.")
        return lambda p, x, v, w, key: (*grad_fn(objective, p, x, v, w, key), {})
    clip_norm, noise_multiplier = check_dp_settings(clip_norm, noise_multiplier)
    if method != "manual":
        raise ValueError("Per-example clipping (clip_norm) comes from the hand-written backward: use method='manual'.")

    def private(p, x, v, w, key):
        value, grads, norms = clipped_value_and_grad(objective, p, x, v, w, key, clip_norm=clip_norm,
                                                     noise_multiplier=noise_multiplier)
        live = jnp.ones_like(norms) if w is None else (jnp.asarray(w) > 0).astype(norms.dtype)
        return value, grads, {"clipped": jnp.sum(live * (norms > clip_norm).astype(live.dtype)) / jnp.sum(live)}

    return private


@program_cache
def make_update_step(net: MLP, loss: str | Loss, optimizer: optax.GradientTransformation,
                     method: str = "manual", *, l2: float = 0.0, dropout: float = 0.0,
                     clip_norm: float | None = None, noise_multiplier: float = 0.0,
                     donate: bool = True) -> Callable:
    """One pure, jit-compiled training step.

        step(params, opt_state, x, v, key=None, weights=None) -> (params, opt_state, {"loss": R})

    ``R`` is the risk before the update; ``x``: ``(B, d_0)``, ``weights``: ``(B,)``.
    ``key`` is required when ``dropout > 0`` or ``noise_multiplier > 0``; ``clip_norm`` and
    ``noise_multiplier`` make it a DP-SGD step (see :func:`make_update_fn`). With ``donate=True`` (the default)
    the step reuses the buffers of ``params`` and ``opt_state`` for its outputs,
    so those inputs are deleted by the call; pass ``donate=False`` to keep them.
    Shapes are checked when the step is traced (once per input shape). The same
    code runs on CPU, GPU and TPU. Equal arguments (the same optimizer object) return the same
    jitted step, compiled once per input shape (see :mod:`fnn.core.programs`).
    """
    return jax.jit(
        make_update_fn(net, loss, optimizer, method, l2=l2, dropout=dropout, clip_norm=clip_norm,
                       noise_multiplier=noise_multiplier),
        donate_argnums=(0, 1) if donate else (),
    )
