"""Atomic file writes and careful reads: the only way ``fnn`` puts a file on disk.

Every write goes to a temporary file in the target's folder, is flushed and
``fsync``-ed, then renamed over the target (and the folder entry is synced):
a crash, a kill or a full disk leaves either the old file or the new one,
never half of one. A failed write removes its temporary file; temporary files
left by a killed process (``.NAME.*.tmp``) are removed by
:func:`remove_stale_temps` on the next start.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Writes ``data`` to ``path`` atomically and durably.

    Args:
      path: the target; its folder must exist.
      data: bytes, text (written as UTF-8), or a function that writes to the
        open binary file it is given (e.g. ``lambda f: np.savez(f, **arrays)``).

    Raises:
      OSError: the folder is missing or unwritable, or the disk is full. The
        target is then unchanged and no temporary file is left behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _sync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON to ``path``, atomically (see :func:`atomic_write`)."""
    return atomic_write(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parses a JSON file; a missing, unreadable or malformed file raises one error naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist (the {what}).") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"Cannot read the {what} {path}: {err}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"The {what} {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): "
            "it is truncated or was edited by hand."
        ) from None


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files that interrupted :func:`atomic_write` calls left in ``folder``."""
    removed = []
    for p in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def check_writable_folder(path: str | os.PathLike) -> None:
    """Raises unless ``path`` is, or could be created as, a folder this process can write to.

    Touches nothing: walks up to the first existing ancestor and checks it.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise ValueError(f"Cannot create the folder {path}: {probe} is a broken symbolic link.")
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        raise ValueError(
            f"Cannot create the folder {path}: {probe} exists and is not a folder. Choose another path."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"Cannot write to {probe} (permission denied): choose a folder you can write to.")
