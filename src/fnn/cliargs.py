"""The ``fnn`` command line: its flags and their checks (argparse), for ``fnn train``,
``fnn evaluate`` and ``fnn bench``."""

from __future__ import annotations

import argparse
import math
from fnn import __version__
from fnn.activations import ACTIVATIONS
from fnn.backprop import METHODS
from fnn.bench import add_arguments as add_bench_arguments
from fnn.config import CHANGEABLE_ON_RESUME, DEFAULTS, flag
from fnn.data import DATASETS
from fnn.losses import LOSSES
from fnn.network import SCHEMES
from fnn.optim import OPTIMIZERS
from fnn.schedules import SCHEDULES
from fnn.tables import is_data_file


def _number(kind, test, requirement):
    """An argparse type: ``kind(text)`` that passes ``test``; the message says it must ``requirement``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must {requirement}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must {requirement}, got {text}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "be a positive integer")
_positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "be positive and finite")
_rate = _number(float, lambda v: 0 <= v < 1, "lie in [0, 1)")
_non_negative = _number(float, lambda v: math.isfinite(v) and v >= 0, "be a finite number >= 0")
_seed = _number(int, lambda v: 0 <= v < 2**63, "be an integer in [0, 2**63)")
_non_negative_int = _number(int, lambda v: v >= 0, "be an integer >= 0")


def _dataset(text: str) -> str:
    """A built-in dataset name or a path to a .csv/.npz file."""
    if text in DATASETS or is_data_file(text):
        return text
    raise argparse.ArgumentTypeError(
        f"unknown dataset {text!r}: choose from {', '.join(DATASETS)}, or give a path to a .csv or .npz file")


def _add_train_args(p: argparse.ArgumentParser, explicit_only: bool = False) -> None:
    # explicit_only: every default is SUPPRESS, so the namespace holds just the flags given.
    d = {k: argparse.SUPPRESS for k in DEFAULTS} if explicit_only else DEFAULTS
    p.add_argument("--dataset", default=d["dataset"], type=_dataset, metavar="NAME|PATH",
                   help=f"{', '.join(DATASETS)}, or your own .csv/.npz file (default: %(default)s, "
                        "scikit-learn's 8x8 digits)")
    p.add_argument("--target", default=d["target"], metavar="COLUMN",
                   help="for a .csv dataset: the target column, by name or 0-based index (default: the last)")
    p.add_argument("--hidden", type=_positive_int, nargs="*", default=d["hidden"], metavar="N",
                   help="hidden layer sizes (default: %(default)s); none for a linear model")
    p.add_argument("--activation", default=d["activation"],
                   help=f"hidden activation: {', '.join(ACTIVATIONS)} or leaky_relu(ALPHA) (default: %(default)s)")
    p.add_argument("--loss", default=d["loss"],
                   help=f"loss: auto (softmax_cross_entropy, binary_cross_entropy for two classes, or mse), {', '.join(LOSSES)} (default: %(default)s)")
    p.add_argument("--init", default=d["init"], choices=[*SCHEMES, "normal"],
                   help="weight init scheme (default: %(default)s)")
    p.add_argument("--optimizer", default=d["optimizer"], choices=list(OPTIMIZERS),
                   help="gd is plain gradient descent written out; the rest are optax (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=d["lr"], help="learning rate (default: %(default)s)")
    p.add_argument("--schedule", default=d["schedule"], choices=list(SCHEDULES),
                   help="learning-rate schedule over the run, peaking at --lr (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=_non_negative_int, default=d["warmup_epochs"], metavar="N",
                   help="linear warmup from 0 to --lr over N epochs, before the schedule "
                        "(default: 0, or 5%% of the steps for warmup_cosine)")
    p.add_argument("--early-stopping", type=_positive_int, default=d["early_stopping"], metavar="PATIENCE",
                   help="stop when the validation loss has not improved for PATIENCE epochs, keeping "
                        "best.npz (needs --validation)")
    p.add_argument("--momentum", type=_rate, default=d["momentum"], help="for momentum/nesterov (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], help="(default: %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"], help="(default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=d["seed"], help="seed for data split, init, shuffling (default: %(default)s)")
    p.add_argument("--method", default=d["method"], choices=list(METHODS),
                   help="gradient: manual (hand-written backward) or autodiff (jax.grad) (default: %(default)s)")
    p.add_argument("--l2", type=_non_negative, default=d["l2"], help="L2 weight decay λ (default: %(default)s)")
    p.add_argument("--dropout", type=_rate, default=d["dropout"], help="dropout rate on hidden layers (default: %(default)s)")
    p.add_argument("--validation", action="store_true", default=d["validation"],
                   help="evaluate on a validation split carved from the training data, not the test set "
                        "(use it to choose settings)")
    p.add_argument("--data-dir", default=d["data_dir"], help="folder with the MNIST IDX files (default: %(default)s)")
    p.add_argument("--devices", type=_positive_int, default=d["devices"],
                   help="data-parallel over this many devices (default: %(default)s)")
    p.add_argument("--x64", action="store_true", default=d["x64"], help="train in float64")
    p.add_argument("--diagnostics", action="store_true", default=d["diagnostics"],
                   help="record per-layer gradient norm, gradient SNR, per-example norm spread and GGN trace "
                        "every epoch (metrics diag_*, figure diagnostics.png)")
    p.add_argument("--clip-norm", type=_positive_float, default=d["clip_norm"], metavar="C",
                   help="DP-SGD: clip each example's gradient to norm C (one backward pass; default: off)")
    p.add_argument("--noise-multiplier", type=_non_negative, default=d["noise_multiplier"], metavar="SIGMA",
                   help="DP-SGD: add Gaussian noise SIGMA*C to each batch's clipped sum (needs --clip-norm; "
                        "default: %(default)s)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="CONFIG",
                   help="repeat a run: take every setting from RUN/config.json (or the run folder); flags "
                        "given as well override it")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use the persistent compilation cache (also: FNN_NO_COMPILE_CACHE=1)")
    p.add_argument("--out", default=None, help="run folder, new or empty (default: runs/DATASET-TIMESTAMP)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in folder RUN from its checkpoint, with its configuration; only "
                        f"{', '.join(flag(k) for k in CHANGEABLE_ON_RESUME)} may be given anew")
    p.add_argument("--no-gradcheck", action="store_true", help="skip the gradient check")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="do not write curves.png")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-host: the address of process 0, for jax.distributed.initialize "
                        "(with --num-processes and --process-id)")
    p.add_argument("--num-processes", type=_positive_int, default=None, help="multi-host: how many processes")
    p.add_argument("--process-id", type=_number(int, lambda v: v >= 0, "be an integer >= 0"), default=None, help="multi-host: this process's index")


def build_parser(explicit_only: bool = False) -> argparse.ArgumentParser:
    """The ``fnn`` argument parser; with ``explicit_only`` the ``train`` flags have no defaults,
    so a parse holds just the flags given (what ``--resume`` compares with the run's own)."""
    parser = argparse.ArgumentParser(
        prog="fnn", description="Feedforward neural networks in JAX with a hand-written backward pass.")
    parser.add_argument("--version", action="version", version=f"fnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a network (default: digits, hand-written backward)",
        description="Train an MLP. Runs the gradient check of the hand-written backward against jax.grad "
                    "first, then trains with one compiled lax.scan per epoch, and writes a run folder: "
                    "config.json, metrics.json, metrics.csv, curves.png, gradcheck.txt, checkpoint.npz "
                    "(rewritten after every epoch).")
    _add_train_args(train, explicit_only)
    _add_run_args(train)
    ev = sub.add_parser("evaluate", help="reload a run's checkpoint and report its test metrics")
    ev.add_argument("run", help="run folder written by fnn train")
    ev.add_argument("--best", action="store_true", help="evaluate best.npz (early stopping) instead of the last checkpoint")
    bench = sub.add_parser("bench", help="time one training step against jax.grad and peers")
    add_bench_arguments(bench)
    return parser
