"""The ``fnn`` command line: its flags and their checks (argparse), for ``fnn train``,
``fnn evaluate`` and ``fnn bench``."""

from __future__ import annotations

import argparse
import copy
import difflib
import math
import re
from fnn import __version__
from fnn.core.activations import ACTIVATIONS
from fnn.core.backprop import METHODS
from fnn.bench import add_arguments as add_bench_arguments
from fnn.cli.config import CHANGEABLE_ON_RESUME, DEFAULTS, SWEEP_FLAGS, flag
from fnn.data.datasets import DATASETS
from fnn.core.losses import LOSSES
from fnn.core.network import SCHEMES
from fnn.training.optim import DEFAULT_LEARNING_RATE, OPTIMIZERS, default_learning_rate
from fnn.training.schedules import SCHEDULES
from fnn.data.tables import is_data_file


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fnn train: error: argument --lr: must be positive and finite,
    got -1 (see fnn train --help)``, with the close match for a mistyped choice."""

    def __init__(self, *args, **kwargs):
        # No prefix matching: "--epoch" is a typo to name, not a silent "--epochs".
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_did_you_mean(message)} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but a flag no command knows is named with the command given (``fnn train:
        error: unrecognized arguments: --bogus (see fnn train --help)``) and its closest flag."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            sub = self._subparsers._group_actions[0].choices.get(getattr(parsed, "command", None), self) \
                if self._subparsers else self
            close = difflib.get_close_matches(extra[0].split("=")[0], list(sub._option_string_actions), n=1, cutoff=0.8)
            sub.error(f"unrecognized arguments: {' '.join(extra)}" + (f": did you mean {close[0]}?" if close else ""))
        return parsed


def _did_you_mean(message: str) -> str:
    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message) or \
        re.search(r"unknown dataset '([^']*)': choose from ([^,]*(?:, [^,]*)*?), or", message)
    if not found:
        return message
    choices = [c.strip(" '") for c in found.group(2).split(",")]
    lower = {c.lower(): c for c in choices}
    match = lower.get(found.group(1).lower()) or next(iter(difflib.get_close_matches(
        found.group(1).lower(), list(lower), n=1, cutoff=0.6)), None)
    return f"{message}: did you mean {lower[match] if match in lower else match}?" if match else message


class _OneValueFormatter(argparse.HelpFormatter):
    """Shows ``--dataset NAME|PATH``, not list syntax, for the ``fnn sweep`` flags that take one value,
    and a one-element default as its value: ``(default: digits)``, not ``(default: ['digits'])``."""

    def _expand_help(self, action):
        if action.nargs == "+" and isinstance(action.default, list) and len(action.default) == 1:
            action = copy.copy(action)
            action.default = action.default[0]
        return super()._expand_help(action)

    def _format_args(self, action, default_metavar):
        if getattr(action, "one_value", False):
            return self._metavar_formatter(action, default_metavar)(1)[0]
        return super()._format_args(action, default_metavar)


def _registered(registry, *also: str):
    """An argparse type: a name ``registry`` knows (or one of ``also``), kept as given; the message
    names the closest one (:meth:`fnn.core.registry.Registry.lookup`)."""
    def parse(text: str):
        if text not in also:
            try:
                registry.lookup(text)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None
        return text
    return parse


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


def _add_train_args(p: argparse.ArgumentParser, explicit_only: bool = False, sweep: bool = False) -> None:
    # explicit_only: every default is SUPPRESS, so the namespace holds just the flags given.
    # sweep: every valued flag takes one or more values (fnn sweep checks which may have several).
    d = {k: argparse.SUPPRESS for k in DEFAULTS} if explicit_only else DEFAULTS
    add = _listing(p) if sweep else p.add_argument
    add("--dataset", default=d["dataset"], type=_dataset, metavar="NAME|PATH",
                   help=f"{', '.join(DATASETS)}, or your own .csv/.npz file (default: %(default)s, "
                        "scikit-learn's 8x8 digits)")
    add("--target", default=d["target"], metavar="COLUMN",
                   help="for a .csv dataset: the target column, by name or 0-based index (default: the last)")
    add("--hidden", type=_positive_int, nargs="*", default=d["hidden"], metavar="N",
                   help="hidden layer sizes (default: %(default)s); none for a linear model")
    add("--activation", default=d["activation"], type=_registered(ACTIVATIONS),
                   help=f"hidden activation: {', '.join(ACTIVATIONS)} or leaky_relu(ALPHA) (default: %(default)s)")
    add("--loss", default=d["loss"], type=_registered(LOSSES, "auto"),
                   help=f"loss: auto (softmax_cross_entropy, binary_cross_entropy for two classes, or mse), {', '.join(LOSSES)} (default: %(default)s)")
    add("--init", default=d["init"], choices=[*SCHEMES, "normal"],
                   help="weight init scheme (default: %(default)s)")
    add("--init-scale", type=_positive_float, default=d["init_scale"], metavar="S",
                   help="multiply the initial weights by S (default: %(default)s)")
    _add_optimization_args(add, d)


def _add_optimization_args(add, d: dict) -> None:
    add("--optimizer", default=d["optimizer"], choices=list(OPTIMIZERS),
                   help="gd is plain gradient descent written out; the rest are optax (default: %(default)s)")
    add("--lr", type=_positive_float, default=d["lr"],
        help=f"learning rate (default: each optimizer's own: {_own_rates()}; config.json records the rate used)")
    add("--schedule", default=d["schedule"], choices=list(SCHEDULES),
                   help="learning-rate schedule over the run, peaking at --lr (default: %(default)s)")
    add("--warmup-epochs", type=_non_negative_int, default=d["warmup_epochs"], metavar="N",
                   help="linear warmup from 0 to --lr over N epochs, before the schedule "
                        "(default: 0, or 5%% of the steps for warmup_cosine)")
    add("--early-stopping", type=_positive_int, default=d["early_stopping"], metavar="PATIENCE",
                   help="stop when the validation loss has not improved for PATIENCE epochs, keeping "
                        "best.npz (needs --validation)")
    add("--momentum", type=_rate, default=d["momentum"],
        help="for momentum/nesterov (default: 0.9; null in config.json for the optimizers that ignore it; "
             "K-FAC's own is --kfac-momentum)")
    add("--batch-size", type=_positive_int, default=d["batch_size"], help="(default: %(default)s)")
    add("--epochs", type=_positive_int, default=d["epochs"], help="(default: %(default)s)")
    add("--seed", type=_seed, default=d["seed"], help="seed for data split, init, shuffling (default: %(default)s)")
    add("--method", default=d["method"], choices=list(METHODS),
                   help="gradient: manual (hand-written backward) or autodiff (jax.grad) (default: %(default)s)")
    add("--l2", type=_non_negative, default=d["l2"], help="L2 weight decay λ (default: %(default)s)")
    add("--dropout", type=_rate, default=d["dropout"], help="dropout rate on hidden layers (default: %(default)s)")
    add("--validation", action="store_true", default=d["validation"],
                   help="evaluate on a validation split carved from the training data, not the test set "
                        "(use it to choose settings)")
    add("--data-dir", default=d["data_dir"], help="folder with the MNIST IDX files (default: %(default)s)")
    add("--devices", type=_positive_int, default=d["devices"],
                   help="data-parallel over this many devices (default: %(default)s)")
    add("--x64", action="store_true", default=d["x64"], help="train in float64")
    add("--diagnostics", action="store_true", default=d["diagnostics"],
                   help="record per-layer gradient norm, gradient SNR, per-example norm spread and GGN trace "
                        "every epoch (metrics diag_*, figure diagnostics.png)")
    _add_second_order_args(add, d)
    add("--clip-norm", type=_positive_float, default=d["clip_norm"], metavar="C",
                   help="DP-SGD: clip each example's gradient to norm C (one backward pass; default: off)")
    add("--noise-multiplier", type=_non_negative, default=d["noise_multiplier"], metavar="SIGMA",
                   help="DP-SGD: add Gaussian noise SIGMA*C to each batch's clipped sum (needs --clip-norm; "
                        "default: %(default)s)")


def _add_second_order_args(add, d: dict) -> None:
    what = "for the second-order optimizers"
    add("--damping", type=_non_negative, default=d["damping"], metavar="LAMBDA",
        help=f"{what} (kfac, ekfac, ggn_diag, gauss_newton, newton): Tikhonov damping λ in mean-risk "
             "curvature units; the initial λ for gauss_newton (default: each optimizer's own)")
    add("--inverse-update-period", type=_positive_int, default=d["inverse_update_period"], metavar="T",
        help="kfac/ekfac: eigendecompose the Kronecker factors every T steps (default: 5)")
    add("--curvature-ema", type=_rate, default=d["curvature_ema"], metavar="RHO",
        help="kfac/ekfac: weight of the old factors in their running average (default: 0.95)")
    add("--mc-samples", type=_non_negative_int, default=d["mc_samples"], metavar="M",
        help="kfac/ekfac/ggn_diag: 0 for the exact curvature (KFLR), M >= 1 for M sampled targets "
             "(KFAC, Monte Carlo) (default: 0)")
    add("--cg-iterations", type=_positive_int, default=d["cg_iterations"], metavar="N",
        help="gauss_newton: conjugate-gradient iterations per step (default: 20)")
    add("--damping-mode", default=d["damping_mode"], choices=["exact", "pi"],
        help="kfac: exact damping (A ⊗ G + λI) or factored pi-damping; ekfac takes exact only (default: exact)")
    add("--norm-constraint", type=_positive_float, default=d["norm_constraint"], metavar="KAPPA",
        help="kfac/ekfac: scale each step by min(1, sqrt(KAPPA / (η² Pᵀg))), Ba et al.'s KL clipping "
             "(default: off)")
    add("--kfac-momentum", type=_rate, default=d["kfac_momentum"], metavar="MU",
        help="kfac/ekfac: momentum of the preconditioned step, m ← μ m + P, without a (1 − μ), so the "
             "step grows to about η/(1 − μ): lower --lr with it (default: 0; --momentum is for momentum/nesterov)")


def _own_rates() -> str:
    """The ``--lr`` help's list, read from the transformations' defaults, e.g. ``0.1 for kfac and ekfac, ...``."""
    rates: dict[float, list[str]] = {}
    for name in OPTIMIZERS:
        rates.setdefault(default_learning_rate(name), []).append(name)
    def names(a):
        return " and ".join([", ".join(a[:-1]), a[-1]] if len(a) > 1 else a)
    return ", ".join([f"{r:g} for {names(a)}" for r, a in rates.items() if r != DEFAULT_LEARNING_RATE]
                     + [f"{DEFAULT_LEARNING_RATE:g} for the others"])


def _listing(p: argparse.ArgumentParser):
    """``add_argument`` for ``fnn sweep``: valued flags take a list (``--lr 1e-3 3e-3``), defaults
    become one-element lists; ``--hidden`` stays one architecture."""
    def add(*names, **kwargs):
        if kwargs.get("action") is None and names[0] != "--hidden":
            kwargs["nargs"] = "+"
            if kwargs.get("default") not in (None, argparse.SUPPRESS):
                kwargs["default"] = [kwargs["default"]]
            elif kwargs.get("default") is None:
                kwargs["default"] = [None]
        action = p.add_argument(*names, **kwargs)
        # Several values parse (so that fnn sweep can say which flags take one), but help shows one.
        action.one_value = action.dest not in SWEEP_FLAGS and action.nargs == "+"
        return action
    return add


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="CONFIG",
                   help="repeat a run: take every setting from RUN/config.json (or the run folder); flags "
                        "given as well override it (a new --optimizer drops the run's learning rate and the "
                        "settings it does not take)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use the persistent compilation cache (also: FNN_NO_COMPILE_CACHE=1)")
    p.add_argument("--out", default=None, help="run folder, new or empty (default: runs/DATASET-TIMESTAMP, "
                   "with -2, -3, ... when taken)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in folder RUN from its checkpoint, with its configuration; only "
                        f"{', '.join(flag(k) for k in CHANGEABLE_ON_RESUME)} may be given anew")
    p.add_argument("--allow-changed-data", action="store_true",
                   help="with --resume: continue even if the run's data file changed since it ran (default: refuse)")
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
    parser = _Parser(
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
    ev.add_argument("--split", choices=["train", "validation", "test"], default=None,
                    help="the split to evaluate on (default: validation for a --validation run, else test)")
    ev.add_argument("--allow-changed-data", action="store_true",
                    help="evaluate even if the run's data file changed since it ran (default: refuse)")
    sw = sub.add_parser(
        "sweep", formatter_class=_OneValueFormatter,
        help="train seeds x a grid of settings as one compiled program per group",
        description="Train many runs: every seed (--seeds) with every combination of the values given to "
                    f"{', '.join(flag(k) for k in SWEEP_FLAGS)} (several values each). Traced settings "
                    "(learning rate, momentum, L2, dropout, init scale, damping) share one vmapped program; the others "
                    "make one program per value. Each run equals fnn train with the same --seed and settings, to rounding (which a run at the edge of divergence can amplify). "
                    "Writes sweep.json, summary.csv, summary.md, curves.png and params.npz.")
    _add_train_args(sw, sweep=True)
    sw.add_argument("--seeds", type=_non_negative_int, nargs="+", default=[5], metavar="N",
                    help="one number: that many seeds (0..N-1); several: those seeds (default: 5)")
    sw.add_argument("--select", default=None, metavar="METRIC",
                    help="the final metric that picks the best grid point (default: test_accuracy for "
                         "classification, else test_loss; with --validation, on the validation split)")
    sw.add_argument("--out", default=None,
                    help="sweep folder, new or empty (default: sweeps/DATASET-TIMESTAMP, with -2, -3, ... when taken)")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.add_argument("--no-plot", action="store_true", help="do not write curves.png")
    sw.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent compilation cache")
    bench = sub.add_parser("bench", help="time one training step against jax.grad and peers")
    add_bench_arguments(bench)
    return parser
