"""Folders one process holds from creation to finish: the base of the run and sweep folders.

A :class:`HeldFolder` is made and locked as one step (:meth:`~HeldFolder.make`): a second
process that wants the same folder is refused with one line naming the holder's PID, and
touches nothing. While held, the folder's contents are checked again under the lock, so two
starts racing for one folder cannot both pass. When the holder is done
(:meth:`~HeldFolder.close`), a folder that holds nothing worth keeping (a run without a
checkpoint, a sweep without one trained group) is removed again, with every folder above
it that this process created: an interrupted start leaves nothing behind.

A folder with a default name (``unique=True``, e.g. ``runs/DATASET-TIMESTAMP``) is never shared:
:meth:`~HeldFolder.make` takes the first of ``PATH``, ``PATH-2``, ``PATH-3``, ... that it can
create (``mkdir`` is atomic, so two starts in the same second get two folders).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import jax

from fnn.io.files import LOCK_NAME, TEMP_SUFFIX, FolderBusyError, FolderLock, lock_holder, remove_stale_temps


class HeldFolder:
    """A folder of ``FILES`` written by one process (process 0 of a multi-process run).

    Subclasses set ``FILES`` (every name they write; a folder holding only these, with nothing
    worth keeping, may be taken over by a new start), ``FLAG`` (the flag that names the
    folder, for messages) and override :meth:`worth_keeping` and :meth:`check_contents`.
    """

    FILES: tuple[str, ...] = ()
    FLAG = "--out"

    def __init__(self, path: str | os.PathLike, unique: bool = False):
        self.path = Path(path)
        self.unique = unique  # a default name: make() takes the next free PATH-2, PATH-3, ... if taken
        self.writer = jax.process_index() == 0
        self.lock: FolderLock | None = None
        self._made: list[Path] = []  # the folders this process created, deepest first

    def __str__(self) -> str:
        return str(self.path)

    def worth_keeping(self) -> bool:
        """Whether the folder holds results (then :meth:`close` leaves it)."""
        return True

    def leftovers(self) -> set[str]:
        """The names in the folder besides the lock and stale temporary files."""
        names = {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()
        return {n for n in names if not (n.startswith(".") and n.endswith(TEMP_SUFFIX))} - {LOCK_NAME}

    def check_contents(self) -> None:
        """Raises ``ValueError`` unless a new start may use the folder (default: absent or empty)."""
        if self.leftovers():
            raise ValueError(f"{self.path} is not empty: choose another {self.FLAG} (nothing was changed).")

    def check_free(self) -> None:
        """Raises unless the folder is free for a new start: not held by another process, and
        :meth:`check_contents` passes. Touches nothing. A ``unique`` folder is always free
        (:meth:`make` picks a free name)."""
        if self.unique:
            return
        holder = lock_holder(self.path) if self.lock is None else None
        if holder:
            raise FolderBusyError(f"{self.path} is in use by {holder}: wait for it to finish, or choose "
                                  f"another {self.FLAG} (nothing was changed).")
        self.check_contents()

    def make(self) -> None:
        """Creates the folder (and its parents), locks it and checks it again under the lock.

        Raises:
          FolderBusyError: another process holds it (nothing of theirs is touched).
          ValueError: another start filled it since :meth:`check_free`.
        """
        if self.unique:
            self._made = self._claim()
        else:
            self._made = [p for p in (self.path, *self.path.parents) if not p.exists()]
            self.path.mkdir(parents=True, exist_ok=True)
        self.hold()
        try:
            self.check_contents()
        except ValueError:
            self.release()  # not ours to touch
            raise
        remove_stale_temps(self.path)

    def _claim(self) -> list[Path]:
        """Creates the first of ``PATH``, ``PATH-2``, ``PATH-3``, ... that does not exist and makes it
        :attr:`path`; returns the folders this created, deepest first."""
        made = [p for p in self.path.parents if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        base = self.path
        for n in itertools.count(1):
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                path.mkdir()
            except FileExistsError:  # another run's, or another start's of this second
                continue
            self.path, self.unique = path, False
            return [path, *made]
        raise AssertionError("unreachable")

    def hold(self) -> None:
        """Locks the existing folder for this process (process 0 only); raises :class:`FolderBusyError`."""
        if self.writer and self.lock is None:
            self.lock = FolderLock(self.path, self.FLAG)

    def release(self) -> None:
        """Lets go of the folder's lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def close(self) -> bool:
        """Ends this process's hold. A folder with nothing worth keeping loses the files of
        ``FILES`` (and the folders this process made, if then empty). Returns whether it did."""
        if self.lock is None or self.worth_keeping():
            self.release()
            return False
        for name in self.FILES:
            (self.path / name).unlink(missing_ok=True)
        remove_stale_temps(self.path)
        self.release()
        for folder in self._made:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return True
