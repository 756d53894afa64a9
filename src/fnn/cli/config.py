"""The configuration of a run: its keys and defaults (those of ``fnn train``), what each value
must be, and what a resumed run may change."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from fnn.training.optim import DEFAULT_MOMENTUM, DEFAULT_OPTIMIZER, OPTIMIZERS, default_learning_rate

# The configuration of a run, with the defaults of `fnn train`. lr and momentum None: the
# optimizer's own (see resolve_optimizer_settings); a run's config.json records the values used.
DEFAULTS: dict[str, Any] = dict(
    dataset="digits", hidden=[128, 128], activation="relu", loss="auto", init="he",
    optimizer=DEFAULT_OPTIMIZER, lr=None, momentum=None, batch_size=32, epochs=30, seed=0,
    method="manual", l2=0.0, dropout=0.0, validation=False, data_dir="data/mnist",
    devices=1, x64=False, clip_norm=None, noise_multiplier=0.0, diagnostics=False,
    schedule="constant", warmup_epochs=None, early_stopping=None, target=None, init_scale=1.0,
    damping=None, inverse_update_period=None, curvature_ema=None, mc_samples=None, cg_iterations=None,
    norm_constraint=None, damping_mode=None, kfac_momentum=None,
)
# The second-order optimizers' own settings (None: that optimizer's default; see fnn.get_optimizer).
SECOND_ORDER_KEYS = ("damping", "inverse_update_period", "curvature_ema", "mc_samples", "cg_iterations",
                     "norm_constraint", "damping_mode", "kfac_momentum")
# What `fnn sweep` may give several values: traced in one program, or one program per value.
SWEEP_FLAGS = ("lr", "momentum", "l2", "dropout", "init_scale", "damping", "optimizer", "batch_size", "schedule",
               "warmup_epochs", "init", "epochs", "method", "activation", "inverse_update_period",
               "curvature_ema", "mc_samples", "cg_iterations", "norm_constraint", "damping_mode", "kfac_momentum")
# Keys added after the first release: a config.json without them gets these values.
LATER_KEYS = {"clip_norm": None, "noise_multiplier": 0.0, "diagnostics": False, "schedule": "constant",
              "warmup_epochs": None, "early_stopping": None, "target": None, "init_scale": 1.0,
              **dict.fromkeys(SECOND_ORDER_KEYS)}
# What a resumed run may change: how long it trains, where it finds its data, how many
# devices share each batch (the same numbers, up to the order of float reductions).
CHANGEABLE_ON_RESUME = ("epochs", "data_dir", "devices")


def _is_int(v, least):
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _is_real(v, least, below=float("inf"), strict=False):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
        v > least if strict else v >= least) and v < below


# What each configuration value must be, for config.json files read back (flags are checked by argparse).
CONFIG_RULES = {
    "dataset": (lambda v: isinstance(v, str), "a dataset name"),
    "hidden": (lambda v: isinstance(v, list) and all(_is_int(a, 1) for a in v), "a list of positive integers"),
    "activation": (lambda v: isinstance(v, str), "an activation name"),
    "loss": (lambda v: isinstance(v, str), "a loss name"),
    "init": (lambda v: isinstance(v, str), "an init scheme name"),
    "optimizer": (lambda v: isinstance(v, str), "an optimizer name"),
    "lr": (lambda v: _is_real(v, 0, strict=True), "a positive finite number"),
    "momentum": (lambda v: v is None or _is_real(v, 0, 1), "a number in [0, 1) or null"),
    "batch_size": (lambda v: _is_int(v, 1), "a positive integer"),
    "epochs": (lambda v: _is_int(v, 1), "a positive integer"),
    "seed": (lambda v: _is_int(v, 0) and v < 2**63, "an integer in [0, 2**63)"),
    "method": (lambda v: isinstance(v, str), "a gradient method name"),
    "l2": (lambda v: _is_real(v, 0), "a finite number >= 0"),
    "dropout": (lambda v: _is_real(v, 0, 1), "a number in [0, 1)"),
    "validation": (lambda v: isinstance(v, bool), "true or false"),
    "data_dir": (lambda v: isinstance(v, str), "a folder path"),
    "devices": (lambda v: _is_int(v, 1), "a positive integer"),
    "x64": (lambda v: isinstance(v, bool), "true or false"),
    "clip_norm": (lambda v: v is None or _is_real(v, 0, strict=True), "a positive finite number or null"),
    "noise_multiplier": (lambda v: _is_real(v, 0), "a finite number >= 0"),
    "diagnostics": (lambda v: isinstance(v, bool), "true or false"),
    "schedule": (lambda v: isinstance(v, str), "a schedule name"),
    "warmup_epochs": (lambda v: v is None or _is_int(v, 0), "an integer >= 0 or null"),
    "early_stopping": (lambda v: v is None or _is_int(v, 1), "a positive integer or null"),
    "init_scale": (lambda v: _is_real(v, 0, strict=True), "a positive finite number"),
    "damping": (lambda v: v is None or _is_real(v, 0), "a finite number >= 0 or null"),
    "inverse_update_period": (lambda v: v is None or _is_int(v, 1), "a positive integer or null"),
    "curvature_ema": (lambda v: v is None or _is_real(v, 0, 1), "a number in [0, 1) or null"),
    "mc_samples": (lambda v: v is None or _is_int(v, 0), "an integer >= 0 or null"),
    "cg_iterations": (lambda v: v is None or _is_int(v, 1), "a positive integer or null"),
    "norm_constraint": (lambda v: v is None or _is_real(v, 0, strict=True), "a positive finite number or null"),
    "damping_mode": (lambda v: v is None or v in ("exact", "pi"), "exact, pi or null"),
    "kfac_momentum": (lambda v: v is None or _is_real(v, 0, 1), "a number in [0, 1) or null"),
    "target": (lambda v: v is None or isinstance(v, (str, int)) and not isinstance(v, bool),
               "a column name, a column index or null"),
}


# Names other tools use for a configuration key, for the hint on an unknown key.
SYNONYMS = {"learning_rate": "lr", "weight_decay": "l2", "layers": "hidden", "hidden_sizes": "hidden",
            "num_epochs": "epochs", "n_epochs": "epochs", "data": "dataset", "patience": "early_stopping",
            "optim": "optimizer", "batchsize": "batch_size", "val": "validation", "scheduler": "schedule"}


def closest_key(key: str) -> str:
    """The configuration key closest to ``key``: a known synonym, else the nearest by
    :func:`difflib.get_close_matches` (always one)."""
    normal = key.strip().lower().replace("-", "_").lstrip("_")
    if normal in DEFAULTS:
        return normal
    return SYNONYMS.get(normal) or difflib.get_close_matches(normal, list(DEFAULTS), n=1, cutoff=0.0)[0]


def check_config(config: dict, source: str) -> None:
    """Raises one ``ValueError`` naming the first key of ``config`` that is not a configuration key
    (with the closest valid one) or the first value that breaks :data:`CONFIG_RULES`."""
    for key in config:
        if key not in DEFAULTS:
            raise ValueError(f"{source}: {key!r} is not a configuration key: did you mean {closest_key(str(key))!r} "
                             f"({flag(closest_key(str(key)))})? Fix or remove it.")
    missing = sorted(set(DEFAULTS) - set(config))
    if missing:
        raise ValueError(f"{source} is not an fnn run configuration (missing: {', '.join(missing)}).")
    for key, (ok, requirement) in CONFIG_RULES.items():
        if not ok(config[key]):
            raise ValueError(f"{source}: {key} is {config[key]!r}, but it must be {requirement} ({flag(key)}).")


def flag(key: str) -> str:
    """The command-line flag of a configuration key (``batch_size`` -> ``--batch-size``)."""
    return "--" + key.replace("_", "-")


def resume_config(stored: dict, given: dict, run_dir: Path) -> dict:
    """The configuration of a resumed run: ``stored``, with the changeable keys of ``given``.

    Raises ``ValueError`` naming the flag and the run's value if ``given`` would
    change anything else (network, loss, data, optimizer, seed, ...).
    """
    config = dict(stored)
    for key, value in given.items():
        if key not in DEFAULTS:
            continue
        if key in CHANGEABLE_ON_RESUME:
            config[key] = value
        elif value != stored.get(key):
            raise ValueError(
                f"{flag(key)} {_show(value)} would change the run in {run_dir}, which has "
                f"{flag(key)} {_show(stored.get(key))}. A resumed run keeps its configuration (only "
                f"{', '.join(flag(k) for k in CHANGEABLE_ON_RESUME)} may change): drop the flag, or start a "
                "new run with --out."
            )
    return config


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def takes(optimizer: str, key: str) -> bool:
    """Whether ``optimizer`` (a name of :func:`fnn.get_optimizer`) uses the configuration key
    ``key``: ``momentum`` (momentum and nesterov) or one of :data:`SECOND_ORDER_KEYS`."""
    build = OPTIMIZERS.lookup(optimizer)
    return getattr(build, "uses_momentum", False) if key == "momentum" else key in getattr(build, "settings", ())


def resolve_optimizer(config: dict) -> dict:
    """A new run's configuration with the values its optimizer uses: ``lr`` None becomes the
    optimizer's own rate (:func:`fnn.training.optim.default_learning_rate`); ``momentum`` becomes
    null for an optimizer that ignores it (0.9 when None for momentum and nesterov). Raises
    ``ValueError`` for a ``momentum`` given to a second-order optimizer (K-FAC's is ``kfac_momentum``)."""
    config, name = dict(config), config["optimizer"]
    if config["lr"] is None:
        config["lr"] = default_learning_rate(name)
    if takes(name, "momentum"):
        config["momentum"] = DEFAULT_MOMENTUM if config["momentum"] is None else config["momentum"]
    elif config["momentum"] is not None and getattr(OPTIMIZERS.lookup(name), "settings", None) is not None:
        own = " (its own momentum is --kfac-momentum)" if takes(name, "kfac_momentum") else ""
        raise ValueError(f"--momentum is for the momentum and nesterov optimizers; {name} does not use it{own}: "
                         "drop it.")
    else:
        config["momentum"] = None
    return config


def inherit(stored: dict, explicit: dict, source, warn=None) -> dict:
    """``fnn train --config``: the stored configuration with the ``explicit`` flags on top. The stored
    ``momentum`` and second-order settings the (new) optimizer does not use are dropped (explicit
    ones stay, and are refused by the optimizer with one line); when ``explicit`` changes the
    optimizer, so is the stored ``lr`` (then the new optimizer's own, unless ``--lr`` is given),
    and ``warn`` is told in one line when that changes the rate."""
    config = {**stored, **explicit}
    name = config["optimizer"]
    for key in ("momentum", *SECOND_ORDER_KEYS):
        if key not in explicit and not takes(name, key):
            config[key] = None
    if name != stored["optimizer"] and "lr" not in explicit:
        config["lr"] = default_learning_rate(name)
        if warn is not None and config["lr"] != stored["lr"]:
            warn(f"--optimizer {name} does not inherit {source}'s {stored['optimizer']} learning rate "
                 f"{stored['lr']}: it trains at its own {config['lr']} (give --lr to choose).")
    return config
