"""Process-wide concerns of the ``fnn`` command: Ctrl-C, and joining a multi-process run.

Ctrl-C: an epoch's files are written together, and cleanup runs to its end.

* :func:`deferred` holds a Ctrl-C back while an epoch's ``metrics.json``, ``metrics.csv`` and
  ``checkpoint.npz`` are written, and raises it when they are, so that an interrupted run's
  history never stands an epoch ahead of its checkpoint.
* :func:`ignore` is called once the first ``KeyboardInterrupt`` is caught: the cleanup after it
  (the last metrics and figure, removing a run that kept nothing, JAX's own exit handlers)
  is not broken by a second Ctrl-C into a traceback.
* :func:`handler` and :func:`restore` put SIGINT back for callers of :func:`fnn.cli.main` in
  a process that goes on (a test, a notebook).

An interrupt that arrives while Python is still importing fnn and JAX comes before any of
fnn's code runs, so Python's own traceback is printed; nothing here can catch it.

Signal handlers can only be set from the main thread; from any other thread these do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import jax


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred():
    """Holds SIGINT back while the block runs; a Ctrl-C that came meanwhile raises
    ``KeyboardInterrupt`` once the block has ended (not if the block raised). Does nothing
    unless SIGINT has Python's default handler (it is not ignored, nor handled by someone else)."""
    if not _main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def ignore() -> None:
    """Ignores SIGINT from now on (until :func:`restore`): the cleanup after a Ctrl-C is not
    interrupted by another."""
    if _main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def handler():
    """SIGINT's handler now, for :func:`restore` (None off the main thread)."""
    return signal.getsignal(signal.SIGINT) if _main_thread() else None


def restore(previous) -> None:
    """Puts back the SIGINT handler :func:`handler` returned."""
    if _main_thread() and previous is not None:
        signal.signal(signal.SIGINT, previous)


def init_distributed(args) -> None:
    """Joins a multi-process run when ``--coordinator`` is given (checking ``--num-processes``
    and ``--process-id``); raises ``ValueError`` naming the missing or bad flag."""
    if args.coordinator is None:
        if args.num_processes is not None or args.process_id is not None:
            raise ValueError("--num-processes and --process-id need --coordinator HOST:PORT.")
        return
    if args.num_processes is None or args.process_id is None:
        raise ValueError("--coordinator needs --num-processes N and --process-id I (0 on the coordinator).")
    if not 0 <= args.process_id < args.num_processes:
        raise ValueError(f"--process-id must lie in [0, {args.num_processes}), got {args.process_id}.")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
