"""Atomic file writes and careful reads: the only way ``fnn`` puts a file on disk.

Every write goes to a temporary file in the target's folder, is flushed and
``fsync``-ed, then renamed over the target (and the folder entry is synced):
a crash, a kill or a full disk leaves either the old file or the new one,
never half of one. A failed write removes its temporary file; temporary files
left by a killed process (``.NAME.*.tmp``) are removed by
:func:`remove_stale_temps` on the next start. A written file gets the permissions of any
other file the user makes (``0o666 & ~umask``), not the temporary file's ``0o600``.

:class:`FolderLock` holds a run or sweep folder for one process (``fcntl.flock`` on
``FOLDER/.fnn-lock``, which records the holder's PID); the kernel releases it when the
process ends, however it ends, so a lock is never stale.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, IO

try:
    import fcntl
except ImportError:  # Windows: msvcrt's byte-range lock instead
    fcntl = None
    import msvcrt

TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".fnn-lock"
_umask_lock = threading.Lock()


def file_mode() -> int:
    """The permissions a new file of this user gets: ``0o666 & ~umask`` (e.g. ``0o644`` under
    umask 022, ``0o664`` under 002, ``0o600`` under 077)."""
    try:  # Linux reports the umask without changing it
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        with _umask_lock:  # elsewhere: set it and put it back
            umask = os.umask(0o22)
            os.umask(umask)
    return 0o666 & ~umask


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
            os.chmod(tmp, file_mode())  # mkstemp makes it 0o600
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


class FolderBusyError(ValueError):
    """Another process holds the folder (its :class:`FolderLock`)."""


class FolderLock:
    """An exclusive, non-blocking lock on ``folder`` (which must exist) for this process.

    Why ``fcntl.flock`` and not a lock package: the refusal must name the holder's PID, so the
    holder writes it into the locked file itself, and the kernel drops the lock when the
    holder dies (no stale locks after a kill). Release with :meth:`release`; the lock is also
    released when the object is garbage-collected or the process exits.

    Raises:
      FolderBusyError: another process holds it; the message names its PID and command.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.path = Path(folder) / LOCK_NAME
        for _ in range(3):  # a holder that removes the folder as it lets go leaves an unlinked lock file
            self.file = open(self.path, "a+", opener=lambda p, flags: os.open(p, flags, file_mode()))
            try:
                _lock(self.file)
            except OSError:
                self.file.close()
                holder = lock_holder(folder)
                raise FolderBusyError(
                    f"{folder} is in use by {holder or 'another fnn process'}: wait for it to finish, or "
                    f"choose another {what} (nothing was changed).") from None
            if _same_file(self.file, self.path):
                break
            self.file.close()
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        """Lets go of the folder (idempotent) and removes the lock file, leaving the folder as it
        was. (A process that opened the file just before sees it unlinked and opens it anew.)"""
        if not self.file.closed:
            try:
                if _same_file(self.file, self.path):
                    self.path.unlink()
            except OSError:
                pass
            self.file.close()


def _same_file(f, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except OSError:
        return False


def _lock(f) -> None:
    if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # pragma: no cover - Windows
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)


def lock_holder(folder: str | os.PathLike) -> str | None:
    """``"fnn process PID"`` if another process holds ``folder``'s lock, else ``None``. Touches nothing."""
    path = Path(folder) / LOCK_NAME
    try:
        f = open(path, "r")
    except OSError:
        return None
    with f:
        try:
            _lock(f)  # released when f closes
            return None
        except OSError:
            pid = f.read().strip()
            return f"fnn process {pid}" if pid.isdigit() else "another fnn process"
