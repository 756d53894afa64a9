"""JAX's persistent compilation cache for the ``fnn`` command: where it lives, and one line
instead of a warning per program when it cannot be used.

JAX warns once per compiled program when a cache entry cannot be read or written (a cache
path that is a file, a read-only folder, damaged entries): 2 to 50 warnings in one run.
:func:`quiet_compile_cache` checks the folder first (unusable: one line, and the run trains without
the cache), and folds JAX's cache warnings and log records into one line per process. An
entry JAX cannot read is removed (JAX never rewrites an entry that exists, so a damaged one
would fail, and be reported, on every later run): the program is compiled anew and stored.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import jax

from fnn.io.files import check_writable_folder
from fnn.core.programs import _user_cache_root, enable_compile_cache

# What JAX's cache warnings and log records say (jax/_src/compiler.py, lru_cache.py).
CACHE_MESSAGES = ("persistent compilation cache", "Cache value for key", "unable to generate cache key")


def compile_cache(disabled: bool, command: str = "fnn") -> str | None:
    """What the ``fnn`` command calls: :func:`quiet_compile_cache` unless ``disabled``
    (``--no-compile-cache``) or ``FNN_NO_COMPILE_CACHE`` is set to anything but ``0``. Returns
    the folder in use, or ``None``."""
    if disabled or os.environ.get("FNN_NO_COMPILE_CACHE", "0") not in ("", "0"):
        return None
    return quiet_compile_cache(command)


def quiet_compile_cache(command: str = "fnn") -> str | None:
    """Turns on JAX's persistent compilation cache (:func:`fnn.core.programs.enable_compile_cache`, in
    its default folder) for a command line run, quietly: a folder that cannot be used (a file,
    not writable) gets one line on stderr, starting with ``command``, and the run compiles
    without the cache; entries JAX cannot read or write (damaged, read-only) get one line in
    all, however many programs hit them. Returns the folder in use, or ``None``."""
    folder = jax.config.jax_compilation_cache_dir or os.environ.get("FNN_CACHE_DIR") or str(
        _user_cache_root() / "fnn" / "jax")
    problem = _unusable(folder)
    if problem:
        _OneLine(folder, command).say(problem, whole=True)
        return None
    folder = enable_compile_cache(folder)
    report = _OneLine(folder, command)
    show = warnings.showwarning
    warnings.showwarning = report.wrap(getattr(show, "wrapped", show))
    logger = logging.getLogger("jax._src.compiler")
    for old in [f for f in logger.filters if isinstance(f, _OneLine)]:
        logger.removeFilter(old)
    logger.addFilter(report)
    return folder


class _OneLine(logging.Filter):
    """Says the first cache problem in one line and swallows the rest (warnings and log records)."""

    def __init__(self, folder: str, command: str):
        super().__init__()
        self.folder, self.command, self.said = folder, command, False

    def say(self, text: str, whole: bool = False) -> None:
        """One line: the cache cannot be used at all (``whole``), or some entries cannot."""
        self.remove_damaged(text)
        if not self.said:
            self.said = True
            reason = text.split("': ", 1)[-1] if "': " in text else text
            what = ("cannot be used ({}); compiling without it" if whole else
                    "has entries that cannot be read or written ({}); compiling those anew and "
                    "replacing the unreadable ones").format(reason)
            print(f"{self.command}: note: the compile cache {self.folder} {what} (delete or fix the folder, "
                  "or give --no-compile-cache).", file=sys.stderr)

    def remove_damaged(self, text: str) -> None:
        """Deletes the entries a read error names: ``'KEY'`` (one entry) or ``'PROGRAM'`` (its
        entries for every shape, which are compiled anew once)."""
        found = re.search(r"Error reading persistent compilation cache entry for '([^'/\\]+)'", text)
        if found:
            for path in Path(self.folder).glob(glob.escape(found.group(1)) + "-*"):
                if path.name.endswith(("-cache", "-atime")):
                    path.unlink(missing_ok=True)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(m in text for m in CACHE_MESSAGES):
            self.say(text)
            return False
        return True

    def wrap(self, show):
        def showwarning(message, category, filename, lineno, file=None, line=None):
            text = str(message)
            if any(m in text for m in CACHE_MESSAGES):
                self.say(text)
            else:
                show(message, category, filename, lineno, file, line)
        showwarning.wrapped = show
        return showwarning


def _unusable(folder: str) -> str | None:
    path = Path(folder)
    if path.exists() and not path.is_dir():
        return "it is a file, not a folder"
    try:
        check_writable_folder(path)
    except ValueError:
        return "it cannot be created or written"
    return None
