"""The run folder: everything ``fnn train`` reads and writes, and every check before it starts.

A run is prepared in two phases. :func:`prepare` does every check that can
fail (the configuration and, on ``--resume``, its compatibility with the run;
the data and labels against the loss; batch size; devices; the checkpoint;
whether the output folder can be written) while touching nothing on disk.
Only then does :meth:`RunFolder.create` make the folder. So a start that
fails leaves no new folder, and an existing one byte-identical.

During training the folder is rewritten after every epoch: ``checkpoint.npz``,
``metrics.json`` and ``metrics.csv`` every time, ``curves.png`` at most every
few seconds and at the end. A killed run keeps its whole history, and a
resumed run continues it. Every file goes through :func:`fnn.files.atomic_write`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
from pathlib import Path
from typing import Any

import jax

from fnn import checkpoint as ckpt_io
from fnn import data as datasets
from fnn.files import atomic_write, check_writable_folder, read_json, remove_stale_temps, write_json
from fnn.losses import Loss, get_loss
from fnn.network import MLP, init
from fnn.optim import get_optimizer, make_update_fn
from fnn.parallel import make_mesh
from fnn.plots import figure_png, plot_diagnostics, plot_history
from fnn.train import TrainState, check_batch_size
from fnn.validation import check_params_finite, validate

# The configuration of a run, with the defaults of `fnn train`.
DEFAULTS: dict[str, Any] = dict(
    dataset="digits", hidden=[128, 128], activation="relu", loss="auto", init="he",
    optimizer="adam", lr=1e-3, momentum=0.9, batch_size=32, epochs=30, seed=0,
    method="manual", l2=0.0, dropout=0.0, validation=False, data_dir="data/mnist",
    devices=1, x64=False, clip_norm=None, noise_multiplier=0.0, diagnostics=False,
)
# Keys added after the first release: a config.json without them gets these values.
LATER_KEYS = {"clip_norm": None, "noise_multiplier": 0.0, "diagnostics": False}
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
    "momentum": (lambda v: _is_real(v, 0, 1), "a number in [0, 1)"),
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
}


def check_config(config: dict, source: str) -> None:
    """Raises one ``ValueError`` naming the first value of ``config`` that breaks :data:`CONFIG_RULES`."""
    missing = sorted(set(DEFAULTS) - set(config))
    if missing:
        raise ValueError(f"{source} is not an fnn run configuration (missing: {', '.join(missing)}).")
    for key, (ok, requirement) in CONFIG_RULES.items():
        if not ok(config[key]):
            raise ValueError(f"{source}: {key} is {config[key]!r}, but it must be {requirement} ({flag(key)}).")
CURVES_EVERY_S = 5.0


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


def build(config: dict) -> tuple[datasets.Dataset, MLP, Loss]:
    """The dataset, network and loss a configuration describes (raises ``ValueError`` on bad values)."""
    kwargs = {"folder": config["data_dir"]} if config["dataset"] == "mnist" else {}
    data = datasets.load(config["dataset"], seed=config["seed"], **kwargs)
    if config["validation"]:
        data = datasets.validation_split(data, seed=config["seed"])
    loss_name = config["loss"]
    if loss_name == "auto":
        loss_name = "softmax_cross_entropy" if data.task == "classification" else "mse"
    loss = get_loss(loss_name)
    if (loss.kind == "multiclass") != (data.task == "classification"):
        raise ValueError(
            f"Loss {loss.name} does not fit the {data.task} dataset {data.name}: use --loss auto."
        )
    hidden = list(config["hidden"])
    net = MLP((data.in_dim, *hidden, data.out_dim), (config["activation"],) * len(hidden) + ("identity",))
    return data, net, loss


@dataclasses.dataclass
class Plan:
    """A run that passed every check, before anything was written."""

    config: dict
    folder: "RunFolder"
    data: datasets.Dataset
    net: MLP
    loss: Loss
    optimizer: Any
    params: list
    key: jax.Array
    check_key: jax.Array
    state: TrainState | None = None  # set when resuming
    history: dict = dataclasses.field(default_factory=dict)


def prepare(given: dict, *, out: str | None = None, resume: str | None = None) -> Plan:
    """Every check a run can fail, with nothing written. ``given``: the configuration keys the
    user set (all of them for a new run, only the explicit flags when resuming)."""
    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise ValueError("--out cannot be combined with --resume: a resumed run continues in its own folder.")
        folder = RunFolder(resume)
        stored = folder.read_config()
        config = resume_config(stored, given, folder.path)
    else:
        config = {**DEFAULTS, **given}
        folder = RunFolder(out or f"runs/{config['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.check_new()
    if config["x64"]:
        jax.config.update("jax_enable_x64", True)
    data, net, loss = build(config)
    optimizer = get_optimizer(config["optimizer"], config["lr"], config["momentum"])
    # Building the update step checks the method, L2, dropout and DP settings together.
    make_update_fn(net, loss, optimizer, config["method"], l2=config["l2"], dropout=config["dropout"],
                   clip_norm=config["clip_norm"], noise_multiplier=config["noise_multiplier"])
    check_batch_size(config["batch_size"], len(data.x_train))
    if config["devices"] > 1:
        make_mesh(config["devices"])  # enough devices?
    init_key, run_key, check_key = jax.random.split(jax.random.key(config["seed"]), 3)
    params = init(init_key, net, config["init"])
    validate(net, loss, params, data.x_train, data.y_train)
    validate(net, loss, params, data.x_test, data.y_test)
    plan = Plan(config, folder, data, net, loss, optimizer, params, run_key, check_key)
    if resume is not None:
        _prepare_resume(plan)
    return plan


def _prepare_resume(plan: Plan) -> None:
    folder = plan.folder
    saved = folder.load_checkpoint(plan.net, plan.optimizer.init(plan.params))
    check_params_finite(saved.params)
    plan.state = TrainState(saved.params, saved.opt_state, saved.step, saved.key, saved.batch)
    plan.history = folder.read_history(saved.step)


class RunFolder:
    """The files of one run. Only process 0 writes (all processes compute the same numbers)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.writer = jax.process_index() == 0
        self._curves_at = -float("inf")  # curves after the first epoch, then every CURVES_EVERY_S

    def __str__(self) -> str:
        return str(self.path)

    @property
    def checkpoint_path(self) -> Path:
        """``RUN/checkpoint.npz``."""
        return self.path / "checkpoint.npz"

    # --- checks (touch nothing) --------------------------------------------------------------

    def check_new(self) -> None:
        """Raises unless a new run can be written here: the folder is absent or empty, and writable."""
        if not self.writer:
            return
        check_writable_folder(self.path)
        if self.path.is_dir() and any(self.path.iterdir()):
            what = "a run" if (self.path / "config.json").exists() else "files"
            raise ValueError(
                f"{self.path} already holds {what}: continue it with --resume {self.path}, or choose "
                "another --out (nothing was changed)."
            )

    def read_config(self) -> dict:
        """The run's configuration from ``config.json``, checked key by key (:func:`check_config`)."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path} is not a folder: give a run folder written by fnn train.")
        doc = read_json(self.path / "config.json", "run configuration")
        config = doc.get("config") if isinstance(doc, dict) else None
        config = {**LATER_KEYS, **config} if isinstance(config, dict) else {}
        check_config(config, str(self.path / "config.json"))
        return config

    def load_checkpoint(self, net: MLP, opt_state_like=None):
        """The run's checkpoint for ``net`` (see :func:`fnn.checkpoint.load`)."""
        if not self.checkpoint_path.exists():
            raise FileNotFoundError(
                f"{self.path} has no checkpoint.npz: the run stopped before its first epoch ended. "
                "Start it again with --out."
            )
        return ckpt_io.load(self.checkpoint_path, net=net, opt_state_like=opt_state_like)

    def read_history(self, epochs: int) -> dict:
        """The history of the first ``epochs`` epochs from ``metrics.json`` (empty if absent)."""
        path = self.path / "metrics.json"
        if not path.exists():
            return {}
        doc = read_json(path, "metrics history")
        history = doc.get("history") if isinstance(doc, dict) else None
        if not isinstance(history, dict) or not all(isinstance(a, list) for a in history.values()):
            raise ValueError(f"{path} is not an fnn metrics history: delete it to resume without the history.")
        return {k: a[:epochs] for k, a in history.items()}

    # --- writes ------------------------------------------------------------------------------

    def create(self, config: dict, net: MLP, loss: Loss, command: list[str] | None = None) -> None:
        """Makes the folder (removing temp files a killed write left) and writes ``config.json``:
        the configuration, the network and loss, and each command that ran in this folder with
        the versions and devices it ran on."""
        if not self.writer:
            return
        commands = []
        if (self.path / "config.json").exists():
            doc = read_json(self.path / "config.json", "run configuration")
            commands = doc.get("commands", []) if isinstance(doc, dict) else []
        commands.append(_provenance(command))
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        try:
            write_json(self.path / "config.json",
                       {"config": config, "net": net.to_dict(), "loss": loss.name, "commands": commands})
        except OSError:
            for folder in missing:  # a full disk at the very start: leave no new, empty folders behind
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise

    def write_text(self, name: str, text: str) -> None:
        """``RUN/name``, atomically (process 0 only)."""
        if self.writer:
            atomic_write(self.path / name, text)

    def write_json(self, name: str, obj) -> None:
        """``RUN/name`` as JSON, atomically (process 0 only)."""
        if self.writer:
            write_json(self.path / name, obj)

    def save(self, net: MLP, loss: Loss, state: TrainState) -> None:
        """Writes the checkpoint; refuses non-finite parameters, so a good one is never replaced by them."""
        check_params_finite(state.params)
        if self.writer:
            ckpt_io.save(self.checkpoint_path, net=net, params=state.params, opt_state=state.opt_state,
                         step=state.epoch, key=state.key, meta={"loss": loss.name}, batch=state.batch)

    def write_history(self, history: dict, title: str, split: str, *, final: bool = False) -> None:
        """``metrics.json`` and ``metrics.csv`` now; ``curves.png`` when ``final`` or every few seconds."""
        if not self.writer:
            return
        write_json(self.path / "metrics.json", {"history": history})
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(list(history))
        writer.writerows(zip(*history.values()))
        atomic_write(self.path / "metrics.csv", text.getvalue())
        now = time.monotonic()
        if title and history.get("epoch") and (final or now - self._curves_at >= CURVES_EVERY_S):
            atomic_write(self.path / "curves.png", figure_png(plot_history(history, title, ("train", split))))
            if any(k.startswith("diag_") for k in history):
                atomic_write(self.path / "diagnostics.png", figure_png(plot_diagnostics(history, title)))
            self._curves_at = time.monotonic()



def _provenance(command: list[str] | None) -> dict:
    import importlib.metadata
    import platform

    versions = {}
    for package in ("fnn", "jax", "jaxlib", "optax", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions,
        "python": platform.python_version(), "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()], "processes": jax.process_count(),
    }
