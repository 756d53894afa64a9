"""Compile once per process: fnn's compiled programs are built once per equal configuration, and
JAX's persistent compilation cache can carry them over to the next process.

``jax.jit`` keeps its compiled programs per function object, so a program built by a fresh
closure on every call (one ``fnn.fit`` after another, a notebook cell run again) is traced
and compiled again each time. :func:`program_cache` memoises such builders on their
arguments: the network (:class:`fnn.MLP`), the loss (:class:`fnn.Loss`) and the settings are
values that compare equal when they describe the same thing, so an equal configuration gets
the same jitted function back, and JAX's own cache then serves every later call with the
same shapes. Optax optimizers are pairs of functions compared by identity: equal settings
give the same optimizer object through :func:`fnn.get_optimizer` and :func:`fnn.plain_gd`
(both memoised here too), while ``optax.adam(1e-3)`` called twice gives two optimizers and
two programs.

:func:`enable_compile_cache` turns on JAX's persistent compilation cache (what ``fnn train``
does), so that a new process finds the programs an earlier one compiled.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

import jax
from jax.experimental.compilation_cache import compilation_cache as persistent_cache

F = TypeVar("F", bound=Callable)

# How many configurations each memoised builder keeps (least recently used first out). Each
# entry holds a jitted function and, through it, its compiled programs.
PROGRAMS_KEPT = 64

_CACHES: list = []


def program_cache(builder: F) -> F:
    """Memoises ``builder(*args, **kwargs)`` on its arguments (equal and hashable arguments give
    the same result object, whether given by position, by keyword or left at their defaults,
    and equal numbers are equal: ``l2=0`` is ``l2=0.0``). Arguments that cannot be hashed (a traced array, a list) build a
    fresh result every call, as without the cache. Exceptions are not cached."""
    cached = functools.lru_cache(maxsize=PROGRAMS_KEPT)(builder)
    _CACHES.append(cached)
    signature = inspect.signature(builder)

    @functools.wraps(builder)
    def build(*args, **kwargs):
        try:
            # One key per call, however it is spelt: defaults filled in, keywords in order.
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return builder(*args, **kwargs)  # the builder's own error
        bound.apply_defaults()
        try:
            hash((bound.args, tuple(bound.kwargs.items())))
        except TypeError:
            return builder(*args, **kwargs)
        return cached(*bound.args, **bound.kwargs)

    build.cache_info = cached.cache_info
    return build  # type: ignore[return-value]


def clear_programs() -> None:
    """Forgets every memoised program and optimizer, and JAX's in-memory compilation caches
    (``jax.clear_caches``): the next call of each compiles again. For freeing memory in a
    long session; nothing else needs it."""
    for cached in _CACHES:
        cached.cache_clear()
    jax.clear_caches()


def enable_compile_cache(path: str | os.PathLike | None = None) -> str:
    """Turns on JAX's persistent compilation cache, as ``fnn train`` does, so that a new
    process (a restarted notebook kernel, the next script) loads the programs an earlier one
    compiled instead of compiling them again.

    Args:
      path: the cache folder. Default: the folder JAX was already given
        (``JAX_COMPILATION_CACHE_DIR``), else ``FNN_CACHE_DIR``, else the user's cache folder:
        ``$XDG_CACHE_HOME/fnn/jax`` (``~/.cache/fnn/jax``), ``~/Library/Caches/fnn/jax`` on
        macOS, ``%LOCALAPPDATA%\\fnn\\jax`` on Windows.

    Returns:
      The folder in use (created by JAX on the first write).

    Every program is cached, however quickly it compiled (JAX's defaults skip those under
    1 s, which is all of fnn's at the usual sizes). Within one process fnn compiles an equal
    configuration only once anyway (:func:`program_cache`); this cache is for the next one.
    """
    if path is None:
        path = jax.config.jax_compilation_cache_dir or os.environ.get("FNN_CACHE_DIR") or str(
            _user_cache_root() / "fnn" / "jax")
    path = os.fspath(path)
    if path != jax.config.jax_compilation_cache_dir:
        persistent_cache.reset_cache()  # a cache already opened on another folder is closed
        jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _user_cache_root() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
