"""The sweep folder as one unit: made and held by one process, each trained group saved as
soon as it is trained, and the final files written params first, ``sweep.json`` last.

A group (one compiled program: one activation of the sweep) is saved as ``group-K.npz``
(its :class:`fnn.training.sweep.SweepResult`: parameters, histories, divergence, summary, and the
sweep's settings) the moment it finishes. A sweep that is interrupted, or whose final writes
fail (a full disk), keeps those groups: running the same ``fnn sweep`` command on the same
``--out`` again loads them instead of training them, and writes the final files. When
``sweep.json`` (written last) is in place, the group files are removed. A sweep interrupted
before its first group finished leaves nothing.
"""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np

import fnn.cli.process as process
from fnn.io.files import atomic_write, check_writable_folder
from fnn.io.folders import HeldFolder
from fnn.training.sweep import SweepResult

FINAL_FILES = ("params.npz", "summary.csv", "summary.md", "curves.png", "sweep.json")


class SweepFolder(HeldFolder):
    """The folder of one sweep whose settings are ``settings`` (a JSON-able dict: seeds, base
    configuration, grid, activations, select), with ``command`` the command line that runs it."""

    FILES = FINAL_FILES

    def __init__(self, path: str | os.PathLike, settings: dict, command: list[str] | None = None,
                 unique: bool = False):
        super().__init__(path, unique)
        self.settings = json.loads(json.dumps(settings, default=_plain))
        self.command = command

    def make(self, command: list[str] | None = None) -> None:
        """Creates and holds the folder (:meth:`fnn.io.folders.HeldFolder.make`); ``command`` is
        recorded in each group file, for the message of a later sweep with other settings."""
        self.command = command if command is not None else self.command
        super().make()

    def groups(self) -> list[str]:
        """The names of the saved group files."""
        return sorted(n for n in self.leftovers() if n.startswith("group-") and n.endswith(".npz"))

    def worth_keeping(self) -> bool:
        """Whether a trained group or a finished sweep is in the folder."""
        return bool(self.groups()) or (self.path / "sweep.json").exists()

    def check_free(self) -> None:
        """Raises unless this sweep may start (or continue) here; touches nothing."""
        if self.writer:
            check_writable_folder(self.path)
            super().check_free()

    def check_contents(self) -> None:
        """Empty, a start that saved nothing, or an unfinished sweep with the same settings."""
        names = self.leftovers()
        groups = self.groups()
        if "sweep.json" in names or not names <= {*FINAL_FILES, *groups}:
            what = "a finished sweep" if "sweep.json" in names else "files"
            raise ValueError(f"{self.path} already holds {what}: choose another --out (nothing was changed).")
        for name in groups:
            header = _header(self.path / name)
            if header.get("settings") != self.settings:
                command = " ".join(header.get("command") or []) or "its own command"
                raise ValueError(f"{self.path} holds an unfinished sweep with other settings: run {command} "
                                 "again to finish it, or choose another --out (nothing was changed).")

    def save_group(self, index: int, activation: str, result: SweepResult) -> None:
        """Writes ``group-INDEX.npz``: every array of ``result`` and a JSON header."""
        if not self.writer:
            return
        arrays = {f"params/{l}/{k}": np.asarray(a) for l, layer in enumerate(result.params) for k, a in layer.items()}
        arrays.update({f"history/{k}": np.asarray(a) for k, a in result.history.items()})
        arrays["diverged"] = np.asarray(result.diverged)
        header = {"settings": self.settings, "command": self.command, "activation": activation,
                  "configs": result.configs, "summary": result.summary, "best": result.best}
        arrays["header"] = np.frombuffer(json.dumps(header, default=_plain).encode(), np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(self.path / f"group-{index}.npz", buffer.getvalue())

    def load_group(self, index: int) -> SweepResult | None:
        """The saved result of group ``index``, or ``None`` if it has not been trained."""
        path = self.path / f"group-{index}.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
        layers = sorted({int(k.split("/")[1]) for k in arrays if k.startswith("params/")})
        params = [{k.split("/")[2]: a for k, a in arrays.items() if k.startswith(f"params/{l}/")} for l in layers]
        history = {k[len("history/"):]: a for k, a in arrays.items() if k.startswith("history/")}
        return SweepResult(header["configs"], params, history, arrays["diverged"], header["summary"], header["best"])

    def finish(self) -> None:
        """After the final files: the group files are no longer needed."""
        for name in self.groups():
            (self.path / name).unlink(missing_ok=True)

    def kept(self, total: int) -> str:
        """What an interrupted or failed sweep leaves, in words."""
        done = len(self.groups())
        if not done:
            return "nothing was kept: run the same fnn sweep command again to start it afresh."
        return (f"{done} of {total} trained groups are kept in {self.path}: run the same fnn sweep command "
                "again to finish.")


    def failed(self, err: BaseException, total: int, describe) -> int:
        """One line on stderr for an interrupted (``KeyboardInterrupt``: returns 130) or failed
        (``OSError``, worded by ``describe``: returns 2) sweep, saying what is kept."""
        if isinstance(err, KeyboardInterrupt):
            process.ignore()  # a second Ctrl-C must not break the cleanup into a traceback
        what = "interrupted;" if isinstance(err, KeyboardInterrupt) else f"error: {describe(err)}"
        print(f"fnn sweep: {what} {self.kept(total)}", file=sys.stderr)
        return 130 if isinstance(err, KeyboardInterrupt) else 2


def _header(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
        return header if isinstance(header, dict) else {}
    except (OSError, ValueError, KeyError, EOFError):
        return {}


def _plain(value):
    """JSON for numpy scalars and arrays."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
