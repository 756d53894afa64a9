"""Input checks shared by every public entry point.

Each check raises one :class:`ValueError` that names the problem and the fix,
before any computation. Shapes, dtypes and structure are checked always, also
on tracers under ``jit``/``vmap`` (where they cost nothing after tracing);
values (NaN/Inf, label range, negative weights) are checked only on concrete
arrays, since under a transformation they are not known.

The checks are duck-typed on the network (``sizes``, ``num_layers``,
``in_dim``, ``out_dim``) and the loss (``name``, ``kind``,
``nonzero_targets``), so this module sits below :mod:`fnn.core.network` and
:mod:`fnn.core.losses` and imports neither.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import warnings

import jax
import numpy as np


def is_concrete(a) -> bool:
    """True for arrays whose values are known now (not tracers inside ``jit``/``vmap``/``grad``)."""
    return not isinstance(a, jax.core.Tracer)


def _shape(a) -> tuple[int, ...]:
    return tuple(np.shape(a)) if not hasattr(a, "shape") else tuple(a.shape)


def _dtype(a) -> np.dtype:
    return a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype


def check_params(net, params) -> None:
    """Raises one clear ``ValueError`` if ``params`` does not fit ``net``.

    ``params`` must be a list (or tuple) of ``{"W": (d_{l-1}, d_l), "b": (d_l,)}``
    dicts with floating-point leaves, one per layer of ``net``.
    """
    if not isinstance(params, (list, tuple)):
        raise ValueError(
            f"params must be a list of {{'W', 'b'}} dicts (one per layer), got {type(params).__name__}."
        )
    if len(params) != net.num_layers:
        raise ValueError(
            f"{net!r} has {net.num_layers} layers but params has {len(params)}: "
            "these params belong to another network; create them with fnn.init(key, net)."
        )
    for l, (layer, d_in, d_out) in enumerate(zip(params, net.sizes[:-1], net.sizes[1:]), 1):
        if not isinstance(layer, dict) or set(layer) != {"W", "b"}:
            keys = sorted(layer) if isinstance(layer, dict) else type(layer).__name__
            raise ValueError(f"Layer {l} params must be a dict with keys 'W' and 'b', got {keys}.")
        w_shape, b_shape = _shape(layer["W"]), _shape(layer["b"])
        if w_shape != (d_in, d_out) or b_shape != (d_out,):
            raise ValueError(
                f"Layer {l} params have W {w_shape} and b {b_shape}, but {net!r} needs "
                f"W {(d_in, d_out)} and b {(d_out,)}: these params belong to another network."
            )
        for name in ("W", "b"):
            if not np.issubdtype(_dtype(layer[name]), np.floating):
                raise ValueError(
                    f"Layer {l} {name} has dtype {_dtype(layer[name])}; parameters must be floating "
                    "point: create them with fnn.init(key, net)."
                )


def check_vector(net, params, vector) -> None:
    """Raises one ``ValueError`` unless ``vector``, the direction of a Hessian- or GGN-vector
    product, is shaped like ``params`` (:func:`check_params`)."""
    try:
        check_params(net, vector)
    except ValueError as err:
        raise ValueError(f"vector must be shaped like params: {err}") from None


def check_mc_samples(mc_samples) -> int:
    """``mc_samples`` (Monte-Carlo samples; 0: exact), or one ``ValueError`` unless it is a
    non-negative integer."""
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 0:
        raise ValueError(f"mc_samples must be a non-negative integer (0: exact), got {mc_samples!r}.")
    return mc_samples


def check_params_finite(params) -> None:
    """Raises if any concrete parameter is NaN or Inf (e.g. params saved from a diverged run)."""
    for l, layer in enumerate(params, 1):
        for name in ("W", "b"):
            a = layer[name]
            if is_concrete(a) and not np.all(np.isfinite(np.asarray(a))):
                raise ValueError(
                    f"Layer {l} {name} contains NaN or Inf: these parameters come from a diverged "
                    "run. Start from fresh parameters (fnn.init) or an earlier checkpoint."
                )


def check_inputs(net, x) -> None:
    """Raises one clear ``ValueError`` if ``x`` cannot be fed to ``net``.

    ``x`` must be floating point with shape ``(..., d_0)``, at least one example,
    and (when concrete) finite values.
    """
    shape = _shape(x)
    if len(shape) == 0 or shape[-1] != net.in_dim:
        raise ValueError(
            f"Input of shape {shape} does not fit {net!r}: its last axis must be the "
            f"{net.in_dim} input features (rows are examples)."
        )
    if len(shape) > 1 and 0 in shape[:-1]:
        raise ValueError(f"Input of shape {shape} holds no examples: pass at least one row.")
    if not np.issubdtype(_dtype(x), np.floating):
        raise ValueError(f"Inputs must be floating point, got dtype {_dtype(x)}: cast with x.astype(np.float32).")
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError("Inputs contain NaN or Inf: clean or impute the data before training.")


def _target_shapes(loss, out_dim: int, batch: tuple[int, ...], integer: bool) -> list[tuple[int, ...]]:
    if loss.kind == "multiclass":
        return [batch] if integer else [(*batch, out_dim)]
    return [(*batch, out_dim)] + ([batch] if out_dim == 1 else [])


def check_targets(loss, v, out_dim: int, batch: int | tuple[int, ...] | None = None) -> None:
    """Raises one clear ``ValueError`` if targets ``v`` do not fit ``loss``.

    Args:
      loss: the :class:`fnn.Loss`.
      v: the targets. Multiclass losses take integer labels of shape ``batch``
        or one-hot/soft rows ``(*batch, out_dim)``; the others take
        ``(*batch, out_dim)``, or ``batch`` when ``out_dim == 1``.
      out_dim: the network's output width ``d_L``.
      batch: the inputs' batch shape (an int for ``(B,)``); ``None`` skips the
        shape check.
    """
    dtype, shape = _dtype(v), _shape(v)
    integer = np.issubdtype(dtype, np.integer)
    if np.issubdtype(dtype, np.bool_) or not (integer or np.issubdtype(dtype, np.floating)):
        raise ValueError(
            f"Targets for {loss.name} must be real numbers (integer class labels or floats), got dtype {dtype}."
        )
    if loss.kind == "multiclass" and not integer and (len(shape) == 0 or shape[-1] != out_dim):
        raise ValueError(
            f"Float targets for {loss.name} must be one-hot or soft labels of width {out_dim}, got shape "
            f"{shape}. Pass integer class labels of shape (B,) instead, or one-hot rows (B, {out_dim})."
        )
    if batch is not None:
        batch = (batch,) if isinstance(batch, (int, np.integer)) else tuple(batch)
        allowed = _target_shapes(loss, out_dim, batch, integer)
        if shape not in allowed:
            rows = shape[0] if shape else 0
            if batch and rows != batch[0]:
                raise ValueError(
                    f"Targets have {rows} rows but the inputs have {batch[0]}: give one target per input example."
                )
            if loss.kind == "multiclass":
                fix = "give integer labels of shape (B,) (flatten (B, 1) labels with v.ravel()) or one-hot rows"
            elif loss.kind == "binary":
                fix = (f"{loss.name} takes float 0/1 targets, one per output; a two-class dataset from "
                       "fnn.data has integer labels for two outputs: convert it with fnn.data.as_binary(data) "
                       "(targets (N, 1)) and give the network data.out_dim == 1 output")
            else:
                fix = f"{loss.name} needs {out_dim} target value(s) per example"
            raise ValueError(
                f"Targets of shape {shape} do not fit inputs with batch shape {batch} and a network with "
                f"{out_dim} outputs (expected {' or '.join(map(str, allowed))}): {fix}."
            )
    if is_concrete(v):
        _check_target_values(loss, np.asarray(v), out_dim, integer)


def _check_target_values(loss, v: np.ndarray, out_dim: int, integer: bool) -> None:
    if not integer and not np.all(np.isfinite(v)):
        raise ValueError(f"Targets for {loss.name} contain NaN or Inf: clean the data first.")
    if v.size == 0:
        return
    if loss.kind == "multiclass" and integer and (v.min() < 0 or v.max() >= out_dim):
        raise ValueError(
            f"Labels must lie in [0, {out_dim}) for a network with {out_dim} outputs, but they range "
            f"over [{v.min()}, {v.max()}]. Remap the labels to 0..{out_dim - 1} or widen the output layer."
        )
    if loss.kind == "multiclass" and not integer and v.min() < 0:
        raise ValueError(f"Soft targets for {loss.name} must be non-negative.")
    if loss.kind == "binary" and (v.min() < 0 or v.max() > 1):
        raise ValueError(
            f"Targets for {loss.name} must lie in [0, 1] (labels or probabilities), "
            f"got range [{v.min()}, {v.max()}]."
        )
    if getattr(loss, "nonzero_targets", False) and np.any(v == 0):
        raise ValueError(f"{loss.name} divides by the target, and some targets are zero: use mae or mse.")


def check_weights(weights, batch: int | tuple[int, ...]) -> None:
    """Raises unless ``weights`` (or ``None``) are per-example weights of shape ``batch``:
    floating point, finite, non-negative, and not all zero."""
    if weights is None:
        return
    batch = (batch,) if isinstance(batch, (int, np.integer)) else tuple(batch)
    shape = _shape(weights)
    if shape != batch:
        raise ValueError(
            f"weights have shape {shape} but the batch has shape {batch}: give one weight per example."
        )
    if not np.issubdtype(_dtype(weights), np.floating):
        raise ValueError(f"weights must be floating point, got dtype {_dtype(weights)}.")
    if is_concrete(weights):
        w = np.asarray(weights)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and non-negative (zero marks a padding example).")
        if w.size and not np.any(w > 0):
            raise ValueError("All weights are zero: at least one example must count.")


def validate(net, loss, params, x, v, weights=None) -> None:
    """Every check for a call with a network, a loss, parameters and a batch ``(x, v)``."""
    check_params(net, params)
    check_inputs(net, x)
    batch = _shape(x)[:-1]
    check_targets(loss, v, net.out_dim, batch if batch else None)
    if weights is not None:
        check_weights(weights, batch)
    check_output_activation(net, loss)


# The cross-entropies take logits and apply the sigmoid or softmax themselves.
_ON_LOGITS = ("binary_cross_entropy", "softmax_cross_entropy")


def check_output_activation(net, loss) -> None:
    """Warns (a ``UserWarning``, once per call site) when a cross-entropy on logits follows a
    sigmoid output layer: the sigmoid would be applied twice, confining the predicted
    probabilities to (0.5, 0.73). The lectures' "one sigmoid output unit" is, in fnn, one
    identity output unit with the sigmoid inside ``binary_cross_entropy``."""
    last = getattr(net.activations[-1], "name", net.activations[-1])
    if getattr(loss, "name", loss) in _ON_LOGITS and last == "sigmoid":
        warnings.warn(f"{loss.name} takes logits and applies the sigmoid/softmax itself, but the output "
                      "layer's activation is sigmoid, so it is applied twice: use 'identity' for the last "
                      "layer.", UserWarning, stacklevel=3)


def check_key(key, what: str = "key") -> None:
    """Raises unless ``key`` is a JAX PRNG key: ``jax.random.key(seed)`` (or a raw
    ``jax.random.PRNGKey(seed)``)."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype is not None and np.dtype(dtype) == np.uint32 and _shape(key)[-1:] == (2,) if not typed else False
    if not (typed or raw):
        raise ValueError(f"{what} must be a JAX PRNG key such as jax.random.key(0), got {type(key).__name__}.")


def check_optimizer(optimizer) -> None:
    """Raises unless ``optimizer`` is an optax ``GradientTransformation`` (anything with
    ``init(params)`` and ``update(grads, state, params)``)."""
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise ValueError(
            f"optimizer must be an optax GradientTransformation such as optax.adam(1e-3), got "
            f"{type(optimizer).__name__}; to get one by name use fnn.get_optimizer('adam', learning_rate)."
        )


def check_coefficient(value, name: str, *, upper: float | None = None) -> None:
    """Raises unless ``value`` is a finite number ``>= 0`` (and ``< upper`` when given)."""
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value) \
        and value >= 0 and (upper is None or value < upper)
    if not ok:
        bound = f"[0, {upper:g})" if upper is not None else "[0, ∞)"
        raise ValueError(f"{name} must be a finite number in {bound}, got {value!r}.")


def keyword_hints(fn):
    """``fn`` with an unknown keyword argument named in one ``TypeError`` line with its closest
    parameter (``kfac() got an unexpected keyword argument 'dampening'; did you mean 'damping'?``),
    as Python's own message does not. For functions without ``**kwargs``."""
    names = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for name in kwargs:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                guess = f"; did you mean {close[0]!r}?" if close else f" (it takes {', '.join(names)})"
                raise TypeError(f"{fn.__name__}() got an unexpected keyword argument {name!r}{guess}")
        return fn(*args, **kwargs)

    return wrapper


def check_choice(value, name: str, choices) -> None:
    """Raises unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}.")


def check_static(what: str, **values) -> None:
    """Raises, naming ``optax.inject_hyperparams``' ``static_args``, when a setting that must be a
    Python number (a loop count, a sample count) arrives as an array, as that wrapper makes every
    number it is given (or a default) into one."""
    arrays = [name for name, value in values.items() if isinstance(value, (jax.Array, np.ndarray))]
    if arrays:
        static = ", ".join(repr(name) for name in values)
        raise ValueError(f"{what}'s {', '.join(arrays)} must be a Python int, got an array: under "
                         f"optax.inject_hyperparams give static_args=({static},), and wrap the result in "
                         f"fnn.chain(opt, curvature={what}(<those static_args>).update.curvature) "
                         "(the wrapper hides the curvature its update needs); for a learning-rate schedule "
                         "alone use fnn.get_optimizer(name, schedule, ...), which does both.")


def check_damping(damping, what: str, why: str) -> None:
    """Raises unless ``damping`` is a finite number ``> 0`` (or a traced array, unchecked)."""
    check_number(damping, "damping")
    if not isinstance(damping, jax.Array) and damping == 0:
        raise ValueError(f"{what} needs damping > 0: {why}; give e.g. damping=1.0.")


def check_positive_int(value, name: str) -> None:
    """Raises unless ``value`` is a positive Python integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_number(value, name: str, *, upper: float | None = None) -> None:
    """A finite number ``>= 0`` (``< upper``), or a traced array (under ``vmap``, unchecked)."""
    if isinstance(value, jax.Array):
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value >= 0 \
        and value != float("inf") and (upper is None or value < upper)
    if not ok:
        raise ValueError(f"{name} must be a finite number >= 0{f' and < {upper}' if upper else ''}, got {value!r}.")
