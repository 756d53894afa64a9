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
resumed run continues it. Every file goes through :func:`fnn.io.files.atomic_write`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import time
from pathlib import Path
from typing import Any

import jax

from fnn.io import checkpoint as ckpt_io
from fnn.data import datasets
from fnn.io.files import atomic_write, check_writable_folder, read_json, remove_stale_temps, write_json
from fnn.io.folders import HeldFolder
from fnn.core.losses import Loss, get_loss
from fnn.core.network import MLP, init
from fnn.training.optim import DEFAULT_MOMENTUM, get_optimizer, make_update_fn
from fnn.training.schedules import make_schedule
from fnn.training.parallel import make_mesh
from fnn.data.tables import as_binary, is_data_file, load_table
from fnn.io.plots import figure_png, plot_diagnostics, plot_history
from fnn.training.train import EarlyStopping, TrainState, check_batch_size
from fnn.core.validation import check_params_finite, validate
from fnn.cli.config import DEFAULTS, LATER_KEYS, SECOND_ORDER_KEYS, check_config, resolve_optimizer, resume_config
from fnn.cli.records import check_data_file, data_record, named_validation, not_a_run, read_data_record
from fnn.cli.records import resolve_dataset
from fnn.cli.records import provenance as _provenance  # (sweeprun imports it from here too)

CURVES_EVERY_S = 5.0
# Every file fnn train writes in a run folder: a folder holding only these, without a checkpoint,
# is a start that never finished an epoch, and a new run may take it over.
RUN_FILES = ("config.json", "gradcheck.txt", "metrics.json", "metrics.csv", "curves.png", "diagnostics.png",
             "timings.json", "checkpoint.npz", "best.npz")


def build(config: dict) -> tuple[datasets.Dataset, MLP, Loss]:
    """The dataset, network and loss a configuration describes (raises ``ValueError`` on bad values).

    ``--loss auto`` picks softmax cross-entropy for several classes, binary cross-entropy for
    two, and MSE for a regression; a binary loss gets 0/1 targets and one sigmoid output.
    """
    data = _load_data(config)
    loss_name = config["loss"]
    if loss_name == "auto":
        loss_name = {"classification": "softmax_cross_entropy", "regression": "mse"}[data.task]
        if data.num_classes == 2:
            loss_name = "binary_cross_entropy"
    loss = get_loss(loss_name)
    if loss.kind == "binary":
        data = as_binary(data)
    elif (loss.kind == "multiclass") != (data.task == "classification"):
        raise ValueError(
            f"Loss {loss.name} does not fit the {data.task} dataset {data.name}: use --loss auto."
        )
    hidden = list(config["hidden"])
    net = MLP((data.in_dim, *hidden, data.out_dim), (config["activation"],) * len(hidden) + ("identity",))
    return data, net, loss


def _load_data(config: dict) -> datasets.Dataset:
    name = config["dataset"]
    if is_data_file(name):
        loss = None if config["loss"] == "auto" else get_loss(config["loss"])
        task = None if loss is None else "regression" if loss.kind == "regression" else "classification"
        data = load_table(name, config["target"], seed=config["seed"], task=task)
    elif config["target"] is not None:
        raise ValueError(f"--target names a column of your own data file; the built-in dataset {name} has none.")
    else:
        kwargs = {"folder": config["data_dir"]} if name == "mnist" else {}
        data = datasets.load(name, seed=config["seed"], **kwargs)
    if config["validation"]:
        data = datasets.validation_split(data, seed=config["seed"])
    return data


def make_optimizer(config: dict, steps_per_epoch: int):
    """The run's optimizer: constant learning rate, or the ``schedule`` over the run's steps
    (with ``warmup_epochs``), held in the optimizer state so that the history records it."""
    settings = {k: config.get(k) for k in SECOND_ORDER_KEYS if config.get(k) is not None}
    momentum = DEFAULT_MOMENTUM if config["momentum"] is None else config["momentum"]  # null: unused
    if config["schedule"] == "constant" and not config["warmup_epochs"]:
        return get_optimizer(config["optimizer"], config["lr"], momentum, **settings)
    warmup = None if config["warmup_epochs"] is None else config["warmup_epochs"] * steps_per_epoch
    schedule = make_schedule(config["schedule"], config["lr"], config["epochs"] * steps_per_epoch, warmup)
    return get_optimizer(config["optimizer"], schedule, momentum, **settings)


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
    stopping: EarlyStopping | None = None  # with --early-stopping, brought up to date on resume
    warning: str | None = None  # a changed data file, resumed with --allow-changed-data

    @property
    def stopped(self) -> bool:
        """Whether early stopping already ended this (resumed) run."""
        return self.stopping is not None and self.stopping.stop


def prepare(given: dict, *, out: str | None = None, resume: str | None = None, allow_changed_data=False) -> Plan:
    """Every check a run can fail, with nothing written. ``given``: the configuration keys the
    user set (all of them for a new run, only the explicit flags when resuming); ``allow_changed_data``:
    see :func:`fnn.cli.records.check_data_file`. A resumed run's
    folder is held from here on (:meth:`RunFolder.hold`); end with ``plan.folder.close()``.

    Raises:
      fnn.io.files.FolderBusyError: another process holds the folder (the message names its PID).
    """
    folder = None
    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise ValueError("--out cannot be combined with --resume: a resumed run continues in its own folder.")
        folder = RunFolder(resume)
        if folder.path.is_dir():
            folder.hold()
    try:
        return _prepare(given, out, resume, folder, allow_changed_data)
    except BaseException:
        if folder is not None:
            folder.release()
        raise


def _prepare(given: dict, out: str | None, resume: str | None, folder: "RunFolder | None", allow_changed) -> Plan:
    warning = None
    if resume is not None:
        stored = folder.read_config()
        warning = check_data_file(stored, read_data_record(folder.path), folder.path, allow_changed=allow_changed)
        config = resume_config(stored, given, folder.path)
        if config["epochs"] != stored["epochs"] and (stored["schedule"] != "constant" or stored["warmup_epochs"]):
            raise ValueError(f"The run in {folder.path} follows a {stored['schedule']} schedule over its "
                             f"{stored['epochs']} epochs: a resumed run cannot change --epochs (start a new run).")
    else:
        config = resolve_optimizer({**DEFAULTS, **given,
                                    "dataset": resolve_dataset(given.get("dataset", DEFAULTS["dataset"]))})
        name = Path(config["dataset"]).stem if is_data_file(config["dataset"]) else config["dataset"]
        # The default name is unique: create() takes it, or the next free -2, -3, ...
        folder = RunFolder(out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}", unique=out is None)
        folder.check_free()
    if config["early_stopping"] and not config["validation"]:
        raise ValueError("--early-stopping watches the validation loss: add --validation (stopping on the "
                         "test set would choose the run's length on it).")
    if config["x64"]:
        jax.config.update("jax_enable_x64", True)
    data, net, loss = build(config)
    check_batch_size(config["batch_size"], len(data.x_train))
    optimizer = make_optimizer(config, len(data.x_train) // config["batch_size"])
    # Building the update step checks the method, L2, dropout and DP settings together.
    make_update_fn(net, loss, optimizer, config["method"], l2=config["l2"], dropout=config["dropout"],
                   clip_norm=config["clip_norm"], noise_multiplier=config["noise_multiplier"])
    if config["devices"] > 1:
        make_mesh(config["devices"])  # enough devices?
    init_key, run_key, check_key = jax.random.split(jax.random.key(config["seed"]), 3)
    params = init(init_key, net, config["init"])
    if config["init_scale"] != 1.0:
        params = [{"W": layer["W"] * config["init_scale"], "b": layer["b"]} for layer in params]
    held = [(data.x_test, data.y_test)] + ([(data.x_val, data.y_val)] if data.x_val is not None else [])
    for xs, ys in [(data.x_train, data.y_train), *held]:
        validate(net, loss, params, xs, ys)
    plan = Plan(config, folder, data, net, loss, optimizer, params, run_key, check_key, warning=warning)
    if config["early_stopping"]:
        plan.stopping = EarlyStopping(config["early_stopping"], "val_loss")
    if resume is not None:
        _prepare_resume(plan)
        if plan.stopping is not None:
            plan.stopping.replay(plan.history)
    return plan


def _prepare_resume(plan: Plan) -> None:
    folder = plan.folder
    saved = folder.load_checkpoint(plan.net, plan.optimizer.init(plan.params))
    check_params_finite(saved.params)
    plan.state = TrainState(saved.params, saved.opt_state, saved.step, saved.key, saved.batch)
    plan.history = named_validation(folder.read_history(saved.step), plan.config["validation"])


class RunFolder(HeldFolder):
    """The files of one run. Only process 0 writes (all processes compute the same numbers).
    Held by one process from :meth:`create` (or, resuming, from :func:`prepare`) to
    :meth:`~fnn.io.folders.HeldFolder.close`, which removes a run that never wrote a checkpoint."""

    FILES = RUN_FILES

    def __init__(self, path: str | os.PathLike, unique: bool = False):
        super().__init__(path, unique)
        self._curves_at = time.monotonic()  # curves every CURVES_EVERY_S of training, and at the end
        self.saved_epoch: int | None = None  # the epoch of the last checkpoint.npz this process saved

    def worth_keeping(self) -> bool:
        """Whether a checkpoint exists: until then, the folder is not a run."""
        return self.checkpoint_path.exists()

    @property
    def checkpoint_path(self) -> Path:
        """``RUN/checkpoint.npz``."""
        return self.path / "checkpoint.npz"

    @property
    def best_path(self) -> Path:
        """``RUN/best.npz``: the checkpoint of the epoch with the best validation loss (early stopping)."""
        return self.path / "best.npz"

    # --- checks (touch nothing) --------------------------------------------------------------

    def check_free(self) -> None:
        """Raises unless a new run can be written here: the folder is writable, held by no other
        process, and absent, empty, or a start that never finished an epoch."""
        if self.writer:
            check_writable_folder(self.path)
            super().check_free()

    def check_contents(self) -> None:
        """Raises ``ValueError`` if the folder holds a run (a checkpoint) or files that are not fnn's."""
        names = self.leftovers()
        if names and not (names <= set(RUN_FILES) and "checkpoint.npz" not in names):
            what = "a run" if "config.json" in names else "files"
            advice = f"continue it with --resume {self.path}, or choose" if what == "a run" else "choose"
            raise ValueError(f"{self.path} already holds {what}: {advice} another --out (nothing was changed).")

    def read_config(self) -> dict:
        """The run's configuration from ``config.json``, checked key by key (:func:`check_config`)."""
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(not_a_run(self.path))
        doc = read_json(self.path / "config.json", "run configuration")
        config = doc.get("config") if isinstance(doc, dict) else None
        config = {**LATER_KEYS, **config} if isinstance(config, dict) else {}
        check_config(config, str(self.path / "config.json"))
        return config

    def load_checkpoint(self, net: MLP, opt_state_like=None, best: bool = False):
        """The run's checkpoint for ``net`` (see :func:`fnn.io.checkpoint.load`); ``best``: ``best.npz``."""
        if best:
            if not self.best_path.exists():
                raise FileNotFoundError(f"{self.path} has no best.npz: only runs with --early-stopping keep one.")
            return ckpt_io.load(self.best_path, net=net, opt_state_like=opt_state_like)
        if not self.checkpoint_path.exists():
            raise FileNotFoundError(
                f"{self.path} has no checkpoint.npz: the run stopped before its first epoch ended, so "
                f"there is nothing to continue. Start it again with --out {self.path}."
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
        """Makes and holds the folder (a new run; a resumed one is held already), removes temp files a
        killed write left, and writes ``config.json``: the configuration, the network and loss, and
        each command that ran in this folder with the versions and devices it ran on (and, for a data
        file, its path and sha256 then: a resume with --allow-changed-data keeps the earlier one).

        Raises:
          fnn.io.files.FolderBusyError: another process holds the folder; nothing was touched.
          ValueError: another run finished in the folder since :func:`prepare` checked it.
        """
        if not self.writer:
            return
        commands = []
        if self.lock is None:  # a new run: make and hold the folder, then clear an unfinished start
            self.make()
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
        else:
            remove_stale_temps(self.path)
            doc = read_json(self.path / "config.json", "run configuration")
            commands = doc.get("commands", []) if isinstance(doc, dict) else []
        record = data_record(config["dataset"])  # also per command: a resume may read a changed file
        commands.append({**_provenance(command), **({"data": record} if record else {})})
        write_json(self.path / "config.json",
                   {"config": config, "data": record, "net": net.to_dict(), "loss": loss.name, "commands": commands})

    def write_text(self, name: str, text: str) -> None:
        """``RUN/name``, atomically (process 0 only)."""
        if self.writer:
            atomic_write(self.path / name, text)

    def write_json(self, name: str, obj) -> None:
        """``RUN/name`` as JSON, atomically (process 0 only)."""
        if self.writer:
            write_json(self.path / name, obj)

    def save(self, net: MLP, loss: Loss, state: TrainState, best: bool = False) -> None:
        """Writes the checkpoint (``best``: ``best.npz``); refuses non-finite parameters, so a good one
        is never replaced by them."""
        check_params_finite(state.params)
        if self.writer:
            ckpt_io.save(self.best_path if best else self.checkpoint_path, net=net, params=state.params, opt_state=state.opt_state,
                         step=state.epoch, key=state.key, meta={"loss": loss.name}, batch=state.batch)
        if not best:
            self.saved_epoch = state.epoch

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
