"""What a run folder records about its data file, so that the run can be replayed from anywhere.

A run (or sweep) on your own ``.csv``/``.npz`` file stores the file's absolute, resolved path
as its ``dataset`` and, next to the configuration in ``config.json`` (``sweep.json``), a
record ``{"path", "sha256", "bytes"}`` of its content. Whatever reads the run again checks the
file against the record (:func:`check_data_file`):

- the file is gone (moved, renamed, another machine): one-line error naming the path;
- the file's content changed: ``fnn evaluate`` and ``fnn train --resume`` refuse (their numbers
  would silently describe other data) unless given ``--allow-changed-data``; ``fnn train
  --config`` starts a new run, which records the new content, so it goes ahead with a one-line
  warning.

Built-in datasets have no record (their content comes with fnn and its dependencies).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import jax

from fnn.io.files import read_json
from fnn.data.tables import is_data_file

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file's bytes, as 64 hex digits (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_dataset(dataset: str) -> str:
    """A data file's absolute, resolved path (symbolic links followed); a built-in name unchanged."""
    return str(Path(dataset).expanduser().resolve()) if is_data_file(dataset) else dataset


def data_record(dataset: str) -> dict | None:
    """``{"path", "sha256", "bytes"}`` of a data file (``None`` for a built-in dataset or a file
    that does not exist: loading it reports that)."""
    if not is_data_file(dataset) or not Path(dataset).is_file():
        return None
    path = Path(resolve_dataset(dataset))
    return {"path": str(path), "sha256": file_sha256(path), "bytes": path.stat().st_size}


def check_data_file(config: dict, record: dict | None, run: str | Path, *, allow_changed: bool = False,
                    new_run: bool = False) -> str | None:
    """Checks the data file of the run in ``run`` against its ``record``.

    Returns ``None`` when there is nothing to report, or a one-line warning when the file
    changed and ``allow_changed`` (or ``new_run``: ``--config``, which records the new content).

    Raises:
      FileNotFoundError: the file is no longer at its recorded path.
      ValueError: the file's SHA-256 differs from the record, and neither ``allow_changed``
        nor ``new_run``.
    """
    dataset = config["dataset"]
    if not is_data_file(dataset):
        return None
    path = Path(record["path"] if record else dataset)
    if not path.is_file():
        where = "" if path.is_absolute() else (" (a relative path: this run is from before fnn recorded "
                                               "absolute paths, run the command from the folder it ran in)")
        fix = "give --dataset NEW_PATH" if new_run else "put it back there"
        raise FileNotFoundError(f"The run in {run} was trained on {path}, which no longer exists{where}: {fix}.")
    if not record:
        return None
    now = file_sha256(path)
    if now == record["sha256"]:
        return None
    what = (f"{path} changed since the run in {run} used it (sha256 was {record['sha256'][:12]}…, "
            f"now {now[:12]}…)")
    if new_run:
        return f"warning: {what}; the new run records the file as it is now."
    if not allow_changed:
        raise ValueError(f"{what}: restore the file, or pass --allow-changed-data to use it as it is now.")
    return f"warning: {what}; going ahead (--allow-changed-data)."


def read_data_record(run: str | Path) -> dict | None:
    """The data record in ``run/config.json`` (``None`` for a built-in dataset or an older run)."""
    doc = read_json(Path(run) / "config.json", "run configuration")
    record = doc.get("data") if isinstance(doc, dict) else None
    return record if isinstance(record, dict) and {"path", "sha256"} <= set(record) else None


def named_validation(history: dict, validation: bool) -> dict:
    """A history read back from a run: runs from before validation metrics were named ``val_*``
    recorded them as ``test_*``; a ``--validation`` run's are renamed ``val_*``."""
    if not validation or "val_loss" in history:
        return history
    return {k.replace("test_", "val_", 1): a for k, a in history.items()}


def provenance(command: list[str] | None) -> dict:
    """What ran: the command, the time, the versions of fnn, jax, jaxlib, optax and numpy, Python,
    the platform, the devices and the number of processes (one entry of ``config.json``'s ``commands``)."""
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


def not_a_run(path: str | Path) -> str:
    """One line on why ``path`` is no run folder (missing, a file, a sweep or benchmark folder,
    or no ``config.json``) and what to give instead: for ``fnn evaluate``, ``--resume``, ``--config``."""
    path, give = Path(path), "give a run folder written by fnn train, or the config.json in one"
    if not path.exists():
        return f"{path} does not exist; {give}."
    if not path.is_dir():
        return f"{path} is not a folder but a file; {give} (a copied configuration must be named config.json)."
    if (path / "sweep.json").exists() or any(path.glob("group-*.npz")):
        return (f"{path} is a sweep folder (fnn sweep), not a run: its results are in summary.md and sweep.json, "
                f"its runs' final parameters in params.npz. To evaluate one configuration, train it with "
                f"fnn train and the same flags; {give}.")
    if any(path.glob("benchmark*.json")):
        return f"{path} is a benchmark folder (fnn bench), not a run: its results are in benchmark*.json; {give}."
    return f"{path} holds no config.json, so it is not a run folder; {give}."
