"""The one place where a dataset is split and standardised: every loader (the built-in sets,
your own ``.csv``/``.npz`` files) and every later split (:func:`validation_split`, one split
per seed in a sweep) goes through :func:`standardise`, which fits the statistics on the
training rows only, after the split.

Rows are drawn by :func:`split_rows`; the statistics are the per-feature mean and standard
deviation of the training inputs (and of regression targets, when standardised), computed in
float64 so that large but finite float32 values cannot overflow them. A :class:`Dataset`
keeps its unstandardised rows (``raw``), so that a validation split carved later refits
the statistics on its own, smaller training part instead of reusing statistics that saw
the validation rows.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A train/test split, optionally with a validation split carved from the training part.

    ``y`` holds int labels (classification), float 0/1 targets of shape ``(N, 1)`` (binary,
    see :func:`fnn.data.tables.as_binary`) or float targets ``(N, k)`` (regression). Every split is
    standardised with the statistics of ``x_train`` (and ``y_train`` for a regression whose
    targets are standardised) alone.

    Attributes:
      x_train, y_train, x_test, y_test: the splits, inputs ``(N, d)`` float32.
      x_val, y_val: the validation split (``None`` unless :func:`validation_split` made one).
      x_mean, x_std: the training inputs' per-feature statistics ``(d,)``:
        ``raw = x * x_std + x_mean`` (e.g. to draw images), ``x = (raw - x_mean) / x_std`` for new data.
      y_mean, y_std: the training targets' statistics ``(k,)`` when regression targets were
        standardised (predictions in original units: ``out * y_std + y_mean``), else ``None``.
      raw: the unstandardised rows (what :func:`validation_split` re-splits); not compared, not shown.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str  # "classification", "binary" or "regression"
    num_classes: int | None = None
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    raw: dict | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def in_dim(self) -> int:
        """The input width ``d_0`` (features per example)."""
        return self.x_train.shape[1]

    @property
    def out_dim(self) -> int:
        """The output width a network needs: the number of classes, or of regression targets."""
        if self.task == "binary":
            return 1
        return self.num_classes if self.task == "classification" else self.y_train.shape[1]

    def __repr__(self) -> str:
        what = (f"{self.num_classes} classes" if self.task == "classification"
                else "binary" if self.task == "binary" else f"regression, {self.y_train.shape[1]} target(s)")
        val = "" if self.x_val is None else f" / {len(self.x_val)} validation"
        return (f"Dataset({self.name!r}: {len(self.x_train)} train{val} / {len(self.x_test)} test examples, "
                f"{self.in_dim} features, {what})")


def check_data(x: np.ndarray, y: np.ndarray, name: str = "data") -> None:
    """One clear error for empty, mismatched or non-finite data: ``x`` ``(N, d)``, ``y`` ``(N, ...)``."""
    if len(x) == 0:
        raise ValueError(f"The {name} set is empty: there is nothing to train on.")
    if len(x) != len(y):
        raise ValueError(f"The {name} set has {len(x)} inputs but {len(y)} targets.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"The {name} inputs contain NaN or Inf: clean or impute them first.")
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        raise ValueError(f"The {name} targets contain NaN or Inf: clean them first.")


def split_rows(n: int, fraction: float, seed: int, what: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """``(held_out, kept)`` row indices: a random ``fraction`` of ``n`` rows (at least one) held
    out, drawn by ``numpy.random.default_rng(seed)``. Raises ``ValueError`` for a fraction outside
    (0, 1) or when nothing would be left to train on."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"The {what} fraction must lie in (0, 1), got {fraction}.")
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, int(round(fraction * n)))
    if n_held >= n:
        raise ValueError(f"{n} examples leave none to train on after the {what} split: give more data "
                         f"or a smaller {what} fraction.")
    return order[:n_held], order[n_held:]


def split_standardise(
    name: str, x: np.ndarray, y: np.ndarray, *, task: str, test_fraction: float, seed: int,
    num_classes: int | None = None, standardise_targets: bool = False,
) -> Dataset:
    """Shuffles (``seed``), holds out ``test_fraction`` of the rows as the test split, and
    standardises inputs (and regression targets) with the training rows' statistics."""
    check_data(x, y, name)
    test, train = split_rows(len(x), test_fraction, seed)
    return standardise(name, (x[train], y[train]), (x[test], y[test]), task=task, num_classes=num_classes,
                       standardise_targets=standardise_targets)


def standardise(name: str, train: tuple, test: tuple, *, task: str, num_classes: int | None = None,
                standardise_targets: bool = False, validation: tuple | None = None) -> Dataset:
    """The :class:`Dataset` of unstandardised ``(x, y)`` splits: statistics from ``train`` only.

    Inputs become ``(x - mean) / std`` per feature (a constant feature keeps ``std = 1``, so it
    stays zero); for a regression with ``standardise_targets`` the targets likewise. The
    statistics are computed in float64 and the results stored as float32.
    """
    if len(train[0]) == 0:
        raise ValueError(f"The {name} training split is empty: lower the test fraction.")
    x_tr = np.asarray(train[0], np.float64)
    mean, std = x_tr.mean(0), x_tr.std(0)
    std = np.where(std > 0, std, 1.0)
    splits = {"train": train, "test": test, **({"val": validation} if validation is not None else {})}
    xs = {k: _f32((np.asarray(s[0], np.float64) - mean) / std) for k, s in splits.items()}
    y_mean = y_std = None
    if task == "regression":
        ys = {k: np.asarray(s[1], np.float64).reshape(len(s[1]), -1) for k, s in splits.items()}
        if standardise_targets:
            y_mean, y_std = ys["train"].mean(0), ys["train"].std(0)
            y_std = np.where(y_std > 0, y_std, 1.0)
            ys = {k: (a - y_mean) / y_std for k, a in ys.items()}
        ys = {k: _f32(a) for k, a in ys.items()}
        y_mean, y_std = (None if a is None else _f32(a) for a in (y_mean, y_std))
    else:
        ys = {k: np.asarray(s[1], np.int32) for k, s in splits.items()}
    raw = {"train": train, "test": test, "standardise_targets": standardise_targets}
    return Dataset(name, xs["train"], ys["train"], xs["test"], ys["test"], task, num_classes,
                   x_mean=_f32(mean), x_std=_f32(std), y_mean=y_mean, y_std=y_std,
                   x_val=xs.get("val"), y_val=ys.get("val"), raw=raw)


def validation_split(data: Dataset, fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Carves a validation split out of ``data``'s training part, leak-free.

    The validation rows (a random ``fraction`` of the training rows, drawn with ``seed + 1``)
    move to ``x_val``/``y_val``; the statistics are fitted again on the remaining training
    rows only, and every split (train, validation, test) is standardised with them. The test
    rows stay the same and are never looked at. Use the validation split to choose settings
    (``fnn.fit(..., validation=(d.x_val, d.y_val))``, ``fnn.sweep(..., validation=...)``) and
    the test split once, at the end.

    Raises:
      ValueError: ``data`` already has a validation split, or holds no unstandardised rows
        (a :class:`Dataset` built by hand: make it with :func:`standardise`).
    """
    if data.x_val is not None:
        raise ValueError(f"{data.name} already has a validation split ({len(data.x_val)} examples).")
    if data.raw is None:
        raise ValueError(f"{data.name} holds no unstandardised rows to re-split: build it with "
                         "fnn.data.standardise (or a loader) so the statistics can be fitted without the "
                         "validation rows.")
    (x, y), test = data.raw["train"], data.raw["test"]
    val, train = split_rows(len(x), fraction, seed + 1, "validation")
    binary = data.task == "binary"
    out = standardise(data.name, (x[train], y[train]), test, task="classification" if binary else data.task,
                      num_classes=data.num_classes, standardise_targets=data.raw["standardise_targets"],
                      validation=(x[val], y[val]))
    if not binary:
        return out
    return dataclasses.replace(out, task="binary", **{k: as_binary_targets(getattr(out, k))
                                                      for k in ("y_train", "y_test", "y_val")})


def as_binary_targets(y) -> np.ndarray | None:
    """0/1 labels as float targets ``(N, 1)`` for a single sigmoid output (``None`` stays ``None``)."""
    return None if y is None else np.asarray(y, np.float32).reshape(-1, 1)


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)
