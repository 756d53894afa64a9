"""The ``fnn`` command: ``fnn train``, ``fnn evaluate RUN``, ``fnn bench``."""

from __future__ import annotations

import time


def _process_start() -> float:
    # perf_counter time at which this process started, so that "import" counts the
    # interpreter and the imports before this module too (Linux; elsewhere: now).
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        import os as _os

        return time.perf_counter() - (uptime - start_ticks / _os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter()


_T0 = _process_start()

import argparse  # noqa: E402
import errno  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

from fnn import __version__  # noqa: E402
from fnn.activations import ACTIVATIONS  # noqa: E402
from fnn.backprop import METHODS  # noqa: E402
from fnn.bench import add_arguments as add_bench_arguments  # noqa: E402
from fnn.bench import run as run_bench  # noqa: E402
from fnn.data import DATASETS  # noqa: E402
from fnn.gradcheck import gradcheck  # noqa: E402
from fnn.losses import LOSSES  # noqa: E402
from fnn.network import SCHEMES  # noqa: E402
from fnn.optim import OPTIMIZERS  # noqa: E402
from fnn.parallel import make_mesh  # noqa: E402
from fnn.runs import CHANGEABLE_ON_RESUME, DEFAULTS, Plan, RunFolder, build, flag, prepare  # noqa: E402
from fnn.train import NonFiniteLossError, fit  # noqa: E402
from fnn.train import evaluate as evaluate_metrics  # noqa: E402
from fnn.validation import check_params_finite  # noqa: E402

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


def _add_train_args(p: argparse.ArgumentParser, explicit_only: bool = False) -> None:
    # explicit_only: every default is SUPPRESS, so the namespace holds just the flags given.
    d = {k: argparse.SUPPRESS for k in DEFAULTS} if explicit_only else DEFAULTS
    p.add_argument("--dataset", default=d["dataset"], choices=list(DATASETS),
                   help="dataset (default: %(default)s, scikit-learn's 8x8 digits)")
    p.add_argument("--hidden", type=_positive_int, nargs="*", default=d["hidden"], metavar="N",
                   help="hidden layer sizes (default: %(default)s); none for a linear model")
    p.add_argument("--activation", default=d["activation"],
                   help=f"hidden activation: {', '.join(ACTIVATIONS)} or leaky_relu(ALPHA) (default: %(default)s)")
    p.add_argument("--loss", default=d["loss"],
                   help=f"loss: auto (softmax_cross_entropy or mse by task), {', '.join(LOSSES)} (default: %(default)s)")
    p.add_argument("--init", default=d["init"], choices=[*SCHEMES, "normal"],
                   help="weight init scheme (default: %(default)s)")
    p.add_argument("--optimizer", default=d["optimizer"], choices=list(OPTIMIZERS),
                   help="gd is plain gradient descent written out; the rest are optax (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=d["lr"], help="learning rate (default: %(default)s)")
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
    bench = sub.add_parser("bench", help="time one training step against jax.grad and peers")
    add_bench_arguments(bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``fnn`` command. Returns the exit status: 0 done, 1 the run failed (gradient check,
    divergence, non-finite checkpoint), 2 bad input or a file problem, 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            explicit = vars(build_parser(explicit_only=True).parse_args(argv))
            return train(args, explicit)
        if args.command == "evaluate":
            return evaluate(args.run)
        return run_bench(args)
    except KeyboardInterrupt:
        print(f"fnn {args.command}: interrupted.", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as err:
        print(f"fnn {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # the last resort: one line, never a traceback
        if os.environ.get("FNN_DEBUG"):
            raise
        print(f"fnn {args.command}: internal error: {type(err).__name__}: {err} "
              "(set FNN_DEBUG=1 to see the traceback, and please report it)", file=sys.stderr)
        return 1


def _describe(err: Exception) -> str:
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        where = f" ({err.filename})" if err.filename else ""
        advice = " Free some space and run again; files already written are intact." if err.errno == errno.ENOSPC \
            else ""
        return f"{err.strerror}{where}.{advice}"
    return str(err)


def _say(*a, **kw) -> None:
    # In a multi-process run every process computes the same numbers; process 0 reports them.
    if jax.process_index() == 0:
        print(*a, **kw)


def _init_distributed(args) -> None:
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


def train(args, explicit: dict) -> int:
    """``fnn train``: prepare (every check, nothing written), gradient check, then train."""
    timings = {"import": time.perf_counter() - _T0}
    t = time.perf_counter()
    _init_distributed(args)
    given = {k: explicit[k] for k in DEFAULTS if k in explicit} if args.resume else \
        {k: getattr(args, k) for k in DEFAULTS}
    plan = prepare(given, out=args.out, resume=args.resume)
    config, data, net, loss = plan.config, plan.data, plan.net, plan.loss
    timings["data, checks, init"] = time.perf_counter() - t
    split = "validation" if config["validation"] else "test"
    _say(f"fnn train: {data.name} ({len(data.x_train)} train / {len(data.x_test)} {split} examples), {net}, "
         f"loss {loss.name}, {config['optimizer']} lr={config['lr']}, gradients: {config['method']}")
    if plan.state is not None:
        if plan.state.epoch >= config["epochs"] and plan.state.batch == 0:
            _say(f"{plan.folder} is already at epoch {plan.state.epoch}: nothing to train "
                 f"(give --epochs more than {plan.state.epoch} to continue).")
            return 0
        at = f" (batch {plan.state.batch})" if plan.state.batch else ""
        _say(f"resuming {plan.folder} at epoch {plan.state.epoch}{at}, up to epoch {config['epochs']}")

    t = time.perf_counter()
    report = None
    if not args.no_gradcheck:
        report = _gradcheck(plan)
        if not report.ok:
            print("fnn train: the hand-written backward disagrees with jax.grad; not training "
                  "(nothing was written).", file=sys.stderr)
            return 1
    timings["gradcheck"] = time.perf_counter() - t
    return _train(plan, args, report, timings)


def _gradcheck(plan: Plan):

    params = plan.state.params if plan.state is not None else plan.params
    n = min(32, len(plan.data.x_train))
    report = gradcheck(plan.net, plan.loss, params, plan.data.x_train[:n], plan.data.y_train[:n],
                       key=plan.check_key)
    note = " (on the resumed parameters)" if plan.state is not None else ""
    _say(f"{report}{note}")
    return report


def _train(plan: Plan, args, report, timings: dict) -> int:
    """Creates the run folder, trains with a checkpoint and metrics after every epoch, reports."""
    config, folder, net, loss, data = plan.config, plan.folder, plan.net, plan.loss, plan.data
    folder.create(config, net, loss, command=[Path(sys.argv[0]).name, *sys.argv[1:]])
    if report is not None:
        folder.write_text("gradcheck.txt", str(report) + "\n")
    history = {k: list(a) for k, a in plan.history.items()}
    split = "validation" if config["validation"] else "test"
    title = None if args.no_plot else f"{data.name}: {net}"
    epoch_times = []

    def on_epoch(state, metrics):
        epoch_times.append(time.perf_counter())
        for k, a in metrics.items():
            history.setdefault(k, []).append(a)
        # History first: a kill between the two writes leaves a history one epoch ahead of the
        # checkpoint, which --resume trims, never a checkpoint ahead of its history.
        folder.write_history(history, title, split)
        folder.save(net, loss, state)
        shown = "  ".join(f"{k} {a:.4f}" for k, a in metrics.items() if k != "epoch" and not k.startswith("diag_"))
        _echo(f"epoch {metrics['epoch']:>3}  {shown}", args.no_progress)

    t = time.perf_counter()
    status = _fit(plan, on_epoch, history, progress=not args.no_progress and folder.writer)
    timings["compile + first epoch"] = (epoch_times[0] - t) if epoch_times else time.perf_counter() - t
    timings["train (other epochs)"] = (epoch_times[-1] - epoch_times[0]) if epoch_times else 0.0
    t = time.perf_counter()
    folder.write_history(history, title, split, final=True)
    timings["write"] = time.perf_counter() - t
    if history.get("epoch") and status == 0:
        final = {k: a[-1] for k, a in history.items() if k.startswith("test_")}
        _say(f"final {split}: " + "  ".join(f"{k[5:]} {a:.4f}" for k, a in final.items()))
    timings["total"] = time.perf_counter() - _T0
    folder.write_json("timings.json", timings)
    _say("time: " + ", ".join(f"{k} {a:.2f}s" for k, a in timings.items()))
    _say(f"run folder: {folder}")
    return status


def _fit(plan: Plan, on_epoch, history: dict, progress: bool) -> int:
    """Runs :func:`fnn.fit` for the plan; 0 done, 1 diverged (last good state saved), 130 interrupted."""
    config, folder, net, loss, data = plan.config, plan.folder, plan.net, plan.loss, plan.data
    mesh = make_mesh(config["devices"]) if config["devices"] > 1 else None
    try:
        fit(net, loss, plan.params, data.x_train, data.y_train, key=plan.key, optimizer=plan.optimizer,
            epochs=config["epochs"], batch_size=config["batch_size"], method=config["method"],
            l2=config["l2"], dropout=config["dropout"], test=(data.x_test, data.y_test), state=plan.state,
            mesh=mesh, on_epoch=on_epoch, progress=progress, clip_norm=config["clip_norm"],
            noise_multiplier=config["noise_multiplier"], diagnostics=config["diagnostics"])
    except NonFiniteLossError as err:
        # The error carries the last state with a finite loss, perhaps from inside an epoch
        # that no checkpoint covers yet: save it, so nothing finite is lost.
        folder.save(net, loss, err.state)
        print(f"fnn train: {err} The last good checkpoint is {folder.checkpoint_path}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        done = history["epoch"][-1] if history.get("epoch") else 0
        print(f"fnn train: interrupted. {folder} holds the checkpoint and metrics of epoch {done}: "
              f"continue with fnn train --resume {folder}", file=sys.stderr)
        return 130
    return 0


def _echo(message: str, plain: bool) -> None:
    if plain:
        _say(message)
    else:
        from tqdm.auto import tqdm

        tqdm.write(message)


def evaluate(run: str) -> int:
    """``fnn evaluate RUN``: the test metrics of the run's checkpoint; exit 1 if they are not finite."""

    folder = RunFolder(run)
    config = folder.read_config()
    if config["x64"]:
            jax.config.update("jax_enable_x64", True)
    data, net, loss = build(config)
    ckpt = folder.load_checkpoint(net)
    try:
        check_params_finite(ckpt.params)
    except ValueError as err:
        print(f"fnn evaluate: {folder.checkpoint_path}: {err}", file=sys.stderr)
        return 1
    metrics = evaluate_metrics(net, loss, ckpt.params, data.x_test, data.y_test)
    split = "validation" if config["validation"] else "test"
    print(f"{folder} (epoch {ckpt.step}): {split} " + "  ".join(f"{k} {a:.4f}" for k, a in metrics.items()))
    if not all(math.isfinite(a) for a in metrics.values()):
        print(f"fnn evaluate: the checkpoint's {split} metrics are not finite: the parameters in "
              f"{folder.checkpoint_path} are unusable.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
