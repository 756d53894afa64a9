"""The settings of the compiled update step and epoch as one value: :class:`TrainConfig`.

:func:`fnn.fit` hands them to its epoch loop, which hands them to
:func:`~fnn.training.epoch.make_epoch_fn` (or ``make_chunk_fn``) and on to
:func:`fnn.make_update_fn`. One frozen, hashable value is the key the compiled epoch is kept
under (:mod:`fnn.core.programs`): an equal configuration, however it was given, gets the same
compiled program.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools

import jax
import numpy as np

from fnn.analysis.privacy import check_dp_settings
from fnn.core.backprop import METHODS
from fnn.core.validation import check_coefficient


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The settings of the compiled training step and epoch, as one frozen, hashable value.

    ``fnn.fit(..., config=cfg)`` and ``fnn.fit(..., batch_size=64, l2=1e-4)`` are the same
    run; settings given one by one override those of ``config``. Equal configurations compare
    and hash equal (``l2=0`` is ``l2=0.0``, a NumPy or concrete JAX scalar is its Python
    number), so they share one compiled epoch. Each value is checked when the config is made
    (or changed by ``dataclasses.replace``), with one ``ValueError`` that names it.

    Attributes:
      batch_size: examples per minibatch, a positive integer (default 32); at most the
        number of training examples, checked where the data are known.
      method: how the gradient is computed: ``"manual"`` (the hand-written backward pass)
        or ``"autodiff"`` (``jax.grad``), see :func:`fnn.value_and_grad`.
      l2: the weight-decay coefficient λ ≥ 0 of the objective ``R + (λ/2) Σ ‖W_l‖²``.
      dropout: the dropout rate in [0, 1) of the hidden layers during training.
      clip_norm: DP-SGD: each example's gradient clipped to this norm (> 0), or ``None``
        (no clipping). Needs ``method="manual"``.
      noise_multiplier: DP-SGD: Gaussian noise of standard deviation ``noise_multiplier ×
        clip_norm`` added to each batch's gradient sum (≥ 0; > 0 needs ``clip_norm``).
      mesh: a ``jax.sharding.Mesh`` to split every batch over (data parallelism, see
        :func:`fnn.fit_parallel`), or ``None`` (one device).

    Example:
      >>> cfg = TrainConfig(batch_size=64, l2=1e-4)
      >>> cfg == TrainConfig(l2=0.0001, batch_size=64), cfg.replace(l2=0).l2
      (True, 0.0)
    """

    batch_size: int = 32
    method: str = "manual"
    l2: float = 0.0
    dropout: float = 0.0
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    mesh: jax.sharding.Mesh | None = None

    def __post_init__(self):
        batch_size = self.batch_size
        check_positive_batch_size(batch_size)
        METHODS.lookup(self.method)
        l2, dropout = _number(self.l2), _number(self.dropout)
        check_coefficient(l2, "l2")
        check_coefficient(dropout, "dropout rate", upper=1.0)
        clip_norm, noise = check_dp_settings(1.0 if self.clip_norm is None else self.clip_norm,
                                             self.noise_multiplier)
        if self.clip_norm is None and noise:
            raise ValueError("noise_multiplier needs clip_norm: the noise is scaled by the clipping norm.")
        if self.mesh is not None and not isinstance(self.mesh, jax.sharding.Mesh):
            raise ValueError(f"mesh must be a jax.sharding.Mesh (fnn.parallel.make_mesh) or None, got {self.mesh!r}.")
        normal = dict(batch_size=int(batch_size), l2=float(l2), dropout=float(dropout), noise_multiplier=noise,
                      clip_norm=None if self.clip_norm is None else clip_norm)
        for name, value in normal.items():
            object.__setattr__(self, name, value)

    def replace(self, **settings) -> "TrainConfig":
        """A copy with ``settings`` (fields by name) changed and checked; an unknown name is a
        ``TypeError`` naming the closest field."""
        return with_settings(self, settings, "TrainConfig.replace")


FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _init_with_hints(init):
    """The dataclass ``__init__``, with an unknown keyword named with its closest field."""

    @functools.wraps(init)
    def __init__(self, *args, **settings):
        for name in settings:
            if name not in FIELDS:
                raise unknown_setting("TrainConfig", name, FIELDS)
        init(self, *args, **settings)

    return __init__


TrainConfig.__init__ = _init_with_hints(TrainConfig.__init__)


def check_positive_batch_size(batch_size) -> None:
    """Raises unless ``batch_size`` is a positive integer (Python or NumPy)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"The batch size must be positive (an integer), got {batch_size!r}.")


def _number(value):
    """A concrete 0-d JAX array as its Python number (NumPy scalars pass as they are)."""
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer) and value.ndim == 0:
        return value.item()
    return value


def unknown_setting(where: str, name: str, known, what: str = "fields of fnn.TrainConfig") -> TypeError:
    """The one-line ``TypeError`` for an unknown keyword ``name`` of ``where``: the closest of
    ``known`` (if any is close) and where the settings are listed."""
    close = difflib.get_close_matches(name, list(known), n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    return TypeError(f"{where}() got an unexpected keyword argument {name!r}{guess} (the settings are the {what})")


def with_settings(config: TrainConfig | None, settings: dict, where: str) -> TrainConfig:
    """``config`` (default ``TrainConfig()``) with ``settings``, TrainConfig fields given one by
    one, put over it: the rule of every function that takes ``config=`` and ``**settings``."""
    for name in settings:
        if name not in FIELDS:
            raise unknown_setting(where, name, FIELDS)
    if config is None:
        return TrainConfig(**settings)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"{where}(): config must be a fnn.TrainConfig, got {type(config).__name__}.")
    return dataclasses.replace(config, **settings) if settings else config
