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
import csv  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

TRAIN_DEFAULTS = dict(
    dataset="digits", hidden=[128, 128], activation="relu", loss="auto", init="he",
    optimizer="adam", lr=1e-3, momentum=0.9, batch_size=32, epochs=30, seed=0,
    method="manual", l2=0.0, dropout=0.0, validation=False, data_dir="data/mnist",
    devices=1, x64=False,
)


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {s}")
    return v


def _rate(s: str) -> float:
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {s}")
    return v


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from fnn.activations import ACTIVATIONS
    from fnn.backprop import METHODS
    from fnn.data import DATASETS
    from fnn.losses import LOSSES
    from fnn.network import SCHEMES
    from fnn.optim import OPTIMIZERS

    d = TRAIN_DEFAULTS
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
    p.add_argument("--momentum", type=float, default=d["momentum"], help="for momentum/nesterov (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], help="(default: %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"], help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed for data split, init, shuffling (default: %(default)s)")
    p.add_argument("--method", default=d["method"], choices=list(METHODS),
                   help="gradient: manual (hand-written backward) or autodiff (jax.grad) (default: %(default)s)")
    p.add_argument("--l2", type=float, default=d["l2"], help="L2 weight decay λ (default: %(default)s)")
    p.add_argument("--dropout", type=_rate, default=d["dropout"], help="dropout rate on hidden layers (default: %(default)s)")
    p.add_argument("--validation", action="store_true",
                   help="evaluate on a validation split carved from the training data, not the test set "
                        "(use it to choose settings)")
    p.add_argument("--data-dir", default=d["data_dir"], help="folder with the MNIST IDX files (default: %(default)s)")
    p.add_argument("--devices", type=_positive_int, default=d["devices"],
                   help="data-parallel over this many devices (default: %(default)s)")
    p.add_argument("--x64", action="store_true", help="train in float64")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fnn", description="Feedforward neural networks in JAX with a hand-written backward pass.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a network (default: digits, hand-written backward)",
        description="Train an MLP. Runs the gradient check of the hand-written backward against jax.grad "
                    "first, then trains with one compiled lax.scan per epoch, and writes a run folder: "
                    "config.json, metrics.json, metrics.csv, curves.png, gradcheck.txt, checkpoint.npz.")
    _add_train_args(train)
    train.add_argument("--out", default=None, help="run folder (default: runs/DATASET-TIMESTAMP)")
    train.add_argument("--resume", default=None, metavar="RUN",
                       help="continue the run in folder RUN from its checkpoint, up to --epochs")
    train.add_argument("--no-gradcheck", action="store_true", help="skip the gradient check")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--no-plot", action="store_true", help="do not write curves.png")
    ev = sub.add_parser("evaluate", help="reload a run's checkpoint and report its test metrics")
    ev.add_argument("run", help="run folder written by fnn train")
    bench = sub.add_parser("bench", help="time one training step against jax.grad and peers")
    from fnn.bench import add_arguments

    add_arguments(bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
        if args.command == "evaluate":
            return evaluate(args.run)
        from fnn.bench import run

        return run(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"fnn {args.command}: error: {err}", file=sys.stderr)
        return 2


def _config_from_args(args) -> dict:
    return {k: getattr(args, k) for k in TRAIN_DEFAULTS}


def _setup(config: dict):
    """Dataset, network and loss for a run's configuration."""
    import jax

    if config["x64"]:
        jax.config.update("jax_enable_x64", True)
    from fnn import data as datasets
    from fnn.losses import get_loss
    from fnn.network import MLP

    kwargs = {"folder": config["data_dir"]} if config["dataset"] == "mnist" else {}
    data = datasets.load(config["dataset"], seed=config["seed"], **kwargs)
    if config["validation"]:
        data = datasets.validation_split(data, seed=config["seed"])
    loss_name = config["loss"]
    if loss_name == "auto":
        loss_name = "softmax_cross_entropy" if data.task == "classification" else "mse"
    loss = get_loss(loss_name)
    if (loss.kind == "multiclass") != (data.task == "classification"):
        raise ValueError(
            f"Loss {loss.name} does not fit the {data.task} dataset {data.name}: use --loss auto."
        )
    hidden = list(config["hidden"])
    net = MLP((data.in_dim, *hidden, data.out_dim), (config["activation"],) * len(hidden) + ("identity",))
    return data, net, loss


def train(args) -> int:
    import jax
    import numpy as np

    timings = {"import": time.perf_counter() - _T0}
    t = time.perf_counter()
    resume_ckpt = None
    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            raise FileNotFoundError(f"{run_dir} has no config.json: is it a run folder written by fnn train?")
        config = json.loads(cfg_path.read_text())["config"]
        config["epochs"] = args.epochs
    else:
        config = _config_from_args(args)
        run_dir = Path(args.out or f"runs/{config['dataset']}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    data, net, loss = _setup(config)
    timings["data"] = time.perf_counter() - t
    t = time.perf_counter()

    from fnn import checkpoint
    from fnn.gradcheck import gradcheck
    from fnn.network import init
    from fnn.optim import get_optimizer
    from fnn.train import NonFiniteLossError, TrainState, fit

    optimizer = get_optimizer(config["optimizer"], config["lr"], config["momentum"])
    key = jax.random.key(config["seed"])
    init_key, run_key, check_key = jax.random.split(key, 3)
    params = init(init_key, net, config["init"])
    print(f"fnn train: {data.name} ({len(data.x_train)} train / {len(data.x_test)} "
          f"{'validation' if config['validation'] else 'test'} examples), {net}, loss {loss.name}, "
          f"{config['optimizer']} lr={config['lr']}, gradients: {config['method']}")

    timings["setup (optax, init)"] = time.perf_counter() - t
    t = time.perf_counter()
    report = None
    if not args.no_gradcheck:
        n = min(32, len(data.x_train))
        report = gradcheck(net, loss, params, data.x_train[:n], data.y_train[:n], key=check_key)
        print(report)
        if not report.ok:
            print("fnn train: the hand-written backward disagrees with jax.grad; not training.", file=sys.stderr)
            return 1
    timings["gradcheck"] = time.perf_counter() - t

    state = None
    if args.resume:
        resume_ckpt = checkpoint.load(run_dir / "checkpoint.npz", net=net, opt_state_like=optimizer.init(params))
        state = TrainState(resume_ckpt.params, resume_ckpt.opt_state, resume_ckpt.step, resume_ckpt.key)
        print(f"resuming {run_dir} at epoch {state.epoch}")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "config.json", {"config": config, "net": net.to_dict(), "loss": loss.name})
    if report is not None:
        (run_dir / "gradcheck.txt").write_text(str(report) + "\n")

    history: dict[str, list] = {}
    if args.resume and (run_dir / "metrics.json").exists():
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
        history = {k: a[: state.epoch] for k, a in history.items()}
    epoch_times = []

    def save(state):
        checkpoint.save(run_dir / "checkpoint.npz", net=net, params=state.params, opt_state=state.opt_state,
                        step=state.epoch, key=state.key, meta={"loss": loss.name})

    def on_epoch(state, metrics):
        epoch_times.append(time.perf_counter())
        for k, a in metrics.items():
            history.setdefault(k, []).append(a)
        save(state)
        shown = "  ".join(f"{k} {a:.4f}" for k, a in metrics.items() if k != "epoch")
        message = f"epoch {metrics['epoch']:>3}  {shown}"
        if args.no_progress:
            print(message)
        else:
            from tqdm.auto import tqdm

            tqdm.write(message)

    t = time.perf_counter()
    status = 0
    fit_kwargs = dict(key=run_key, optimizer=optimizer, epochs=config["epochs"], batch_size=config["batch_size"],
                      method=config["method"], l2=config["l2"], dropout=config["dropout"],
                      test=(data.x_test, data.y_test), state=state, on_epoch=on_epoch,
                      progress=not args.no_progress)
    try:
        if config["devices"] > 1:
            from fnn.parallel import fit_parallel

            params, _ = fit_parallel(net, loss, params, data.x_train, data.y_train,
                                     devices=config["devices"], **fit_kwargs)
        else:
            params, _ = fit(net, loss, params, data.x_train, data.y_train, **fit_kwargs)
    except NonFiniteLossError as err:
        # The error carries the parameters from just before the bad step, which may lie
        # inside an epoch that no checkpoint has covered yet: save them, so none are lost.
        save(err.state)
        print(f"fnn train: {err} The last good checkpoint is {run_dir / 'checkpoint.npz'}.", file=sys.stderr)
        status = 1
    timings["compile + first epoch"] = (epoch_times[0] - t) if epoch_times else time.perf_counter() - t
    timings["train (other epochs)"] = (epoch_times[-1] - epoch_times[0]) if epoch_times else 0.0

    t = time.perf_counter()
    _write_metrics(run_dir, history)
    if not args.no_plot and history.get("epoch"):
        _plot(run_dir / "curves.png", history, f"{data.name}: {net}")
    timings["write"] = time.perf_counter() - t
    if history.get("epoch"):
        final = {k: a[-1] for k, a in history.items() if k.startswith("test_")}
        split = "validation" if config["validation"] else "test"
        print(f"final {split}: " + "  ".join(f"{k[5:]} {a:.4f}" for k, a in final.items()))
    timings["total"] = time.perf_counter() - _T0
    _write_json(run_dir / "timings.json", timings)
    print("time: " + ", ".join(f"{k} {a:.2f}s" for k, a in timings.items()))
    print(f"run folder: {run_dir}")
    return status


def _write_json(path: Path, obj) -> None:
    # Temp file then rename: a run folder never holds half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _write_metrics(run_dir: Path, history: dict) -> None:
    _write_json(run_dir / "metrics.json", {"history": history})
    tmp = run_dir / ".metrics.csv.tmp"
    keys = list(history)
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for row in zip(*(history[k] for k in keys)):
            writer.writerow(row)
    os.replace(tmp, run_dir / "metrics.csv")


def _plot(path: Path, history: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    second = "accuracy" if "test_accuracy" in history else "r2"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        axes[0].plot(history["epoch"], history[f"{split}_loss"], label=split)
        axes[1].plot(history["epoch"], history[f"{split}_{second}"], label=split)
    axes[0].set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    axes[1].set(xlabel="epoch", ylabel=second, title=second)
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def evaluate(run: str) -> int:
    from fnn import checkpoint
    from fnn.train import evaluate as evaluate_metrics

    run_dir = Path(run)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir} has no config.json: is it a run folder written by fnn train?")
    config = json.loads(cfg_path.read_text())["config"]
    data, net, loss = _setup(config)
    ckpt = checkpoint.load(run_dir / "checkpoint.npz", net=net)
    metrics = evaluate_metrics(net, loss, ckpt.params, data.x_test, data.y_test)
    split = "validation" if config["validation"] else "test"
    print(f"{run_dir} (epoch {ckpt.step}): {split} " + "  ".join(f"{k} {a:.4f}" for k, a in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
