"""The ``fnn`` command: ``fnn train``, ``fnn evaluate RUN``, ``fnn bench``."""

from __future__ import annotations

import fnn

# Timings start when fnn's import began: the first moment this process runs fnn's code. (The
# process's start time in /proc counts from a fork, which under `bash -c '... && fnn train'`
# includes whatever bash ran before; the interpreter's own start-up, about 20 ms, is left out.)
_T0 = fnn._IMPORT_STARTED

import errno  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

from fnn.bench import run as run_bench  # noqa: E402
from fnn.cli.args import build_parser  # noqa: E402
import fnn.cli.process as process  # noqa: E402
from fnn.core.gradcheck import gradcheck  # noqa: E402
from fnn.training.parallel import make_mesh  # noqa: E402
from fnn.io.cache import compile_cache  # noqa: E402
from fnn.cli.config import flag, inherit  # noqa: E402
from fnn.cli.records import check_data_file, read_data_record  # noqa: E402
from fnn.cli.runs import DEFAULTS, Plan, RunFolder, build, prepare  # noqa: E402
from fnn.cli.sweeprun import SweepPlan, best_lines, configurations, summary_markdown  # noqa: E402
from fnn.cli.sweeprun import run as sweeprun  # noqa: E402
from fnn.cli.sweeprun import write as write_sweep  # noqa: E402
from fnn.training.train import NonFiniteLossError, fit, evaluate as evaluate_metrics  # noqa: E402
from fnn.core.validation import check_params_finite  # noqa: E402

def main(argv: list[str] | None = None) -> int:
    """The ``fnn`` command. Returns the exit status: 0 done, 1 the run failed (gradient check,
    divergence, non-finite checkpoint), 2 bad input or a file problem, 130 interrupted."""
    console, argv = argv is None, sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in config.json
    sigint = process.handler()
    try:
        if args.command == "train":
            explicit = vars(build_parser(explicit_only=True).parse_args(argv))
            compile_cache(args.no_compile_cache, f"fnn {args.command}")
            return train(args, explicit)
        if args.command == "evaluate":
            compile_cache(False, "fnn evaluate")
            return evaluate(args.run, best=args.best, split=args.split, allow_changed=args.allow_changed_data)
        if args.command == "sweep":
            compile_cache(args.no_compile_cache, f"fnn {args.command}")
            return sweep_command(args)
        return run_bench(args)  # no cache: the benchmark measures compilation
    except KeyboardInterrupt:
        process.ignore()  # a second Ctrl-C must not break what is left into a traceback
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
    finally:  # the fnn command itself keeps ignoring Ctrl-C through JAX's exit handlers
        process.restore(None if console else sigint)


def _describe(err: Exception) -> str:
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        where = f" ({err.filename})" if err.filename else ""
        advice = " Free some space and run again; files already written are intact." if err.errno == errno.ENOSPC \
            else ""
        return f"{err.strerror}{where}.{advice}"
    return str(err)


def _warn(command: str, warning: str | None) -> None:
    if warning and jax.process_index() == 0:
        print(f"fnn {command}: {warning}", file=sys.stderr)


def _say(*a, **kw) -> None:
    # In a multi-process run every process computes the same numbers; process 0 reports them.
    if jax.process_index() == 0:
        print(*a, **kw)


class Stopwatch:
    """Contiguous phases since the process began running fnn: they sum to the total."""

    def __init__(self):
        self.times, self._last = {}, _T0

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._last
        self._last = now

    def total(self) -> dict:
        self.lap("report")
        return {**self.times, "total": self._last - _T0}


def train(args, explicit: dict) -> int:
    """``fnn train``: prepare (every check, nothing written), gradient check, then train."""
    clock = Stopwatch()
    clock.lap("import")
    process.init_distributed(args)
    given = _given(args, explicit)
    plan = prepare(given, out=args.out, resume=args.resume, allow_changed_data=args.allow_changed_data)
    config, data, net, loss = plan.config, plan.data, plan.net, plan.loss
    _warn("train", plan.warning)
    clock.lap("data, checks, init")
    split = "validation" if config["validation"] else "test"
    schedule = "" if config["schedule"] == "constant" else f" ({config['schedule']} schedule)"
    held = len(data.x_val if config["validation"] else data.x_test)
    _say(f"fnn train: {data.name} ({len(data.x_train)} train / {held} {split} examples), {net}, "
         f"loss {loss.name}, {config['optimizer']} lr={config['lr']}{schedule}, gradients: {config['method']}")
    if plan.state is not None:
        if (plan.state.epoch >= config["epochs"] and plan.state.batch == 0) or plan.stopped:
            why = "early stopping ended it" if plan.stopped else f"it is already at epoch {plan.state.epoch}"
            _say(f"{plan.folder}: nothing to train ({why}; give --epochs more than {plan.state.epoch} "
                 "to continue a run that ran out of epochs).")
            return 0
        at = f" (batch {plan.state.batch})" if plan.state.batch else ""
        _say(f"resuming {plan.folder} at epoch {plan.state.epoch}{at}, up to epoch {config['epochs']}")

    report = None
    if not args.no_gradcheck:
        report = _gradcheck(plan)
        if not report.autodiff_ok:
            print(f"fnn train: the hand-written backward disagrees with jax.grad (column 'vs jax.grad') "
                  f"first at layer {report.suspect_layer}; not training (nothing was written).", file=sys.stderr)
            return 1
        if not report.ok:  # only the finite differences: the backward agrees with jax.grad, so train
            print(f"fnn train: warning: only the finite differences disagree (column 'vs finite differences', "
                  f"layer {report.suspect_layer}) while the backward agrees with jax.grad; training anyway.",
                  file=sys.stderr)
    clock.lap("gradcheck")
    try:
        return _train(plan, args, report, clock)
    except KeyboardInterrupt:
        process.ignore()  # the cleanup below runs to its end
        raise
    finally:
        plan.folder.close()  # a run that wrote no checkpoint is removed again


def _given(args, explicit: dict) -> dict:
    """The configuration keys the user set: every flag (new run), the explicit flags (resume),
    or a stored configuration with the explicit flags on top (``--config``)."""
    if args.config is not None:
        if args.resume:
            raise ValueError("--config cannot be combined with --resume: a resumed run keeps its own configuration.")
        path = Path(args.config)
        folder = RunFolder(path.parent if path.name == "config.json" else path)
        stored = folder.read_config()
        if "dataset" not in explicit:
            _warn("train", check_data_file(stored, read_data_record(folder.path), folder.path, new_run=True))
        given = {k: explicit[k] for k in DEFAULTS if k in explicit}
        return inherit(stored, given, folder.path, lambda warning: _warn("train", warning))
    if args.resume:
        return {k: explicit[k] for k in DEFAULTS if k in explicit}
    return {k: getattr(args, k) for k in DEFAULTS}


def _gradcheck(plan: Plan):
    params = plan.state.params if plan.state is not None else plan.params
    n = min(32, len(plan.data.x_train))
    report = gradcheck(plan.net, plan.loss, params, plan.data.x_train[:n], plan.data.y_train[:n],
                       key=plan.check_key)
    note = " (on the resumed parameters)" if plan.state is not None else ""
    _say(f"{report}{note}")
    return report


def _train(plan: Plan, args, report, clock: Stopwatch) -> int:
    """Creates the run folder, trains with a checkpoint and metrics after every epoch, reports."""
    config, folder, net, loss, data = plan.config, plan.folder, plan.net, plan.loss, plan.data
    folder.create(config, net, loss, command=["fnn", *args.argv])
    if report is not None:
        folder.write_text("gradcheck.txt", str(report) + "\n")
    history = {k: list(a) for k, a in plan.history.items()}
    split = "validation" if config["validation"] else "test"
    title = None if args.no_plot else f"{data.name}: {net}"
    clock.lap("run folder")
    epochs_seen = []

    def on_epoch(state, metrics):
        clock.lap("train (other epochs)" if epochs_seen else "compile + first epoch")
        epochs_seen.append(metrics["epoch"])
        with process.deferred():  # a Ctrl-C waits until the epoch's files are all written
            for k, a in metrics.items():
                history.setdefault(k, []).append(a)
            # History first: a kill between the two writes leaves a history one epoch ahead of the
            # checkpoint, which --resume (and an interrupt) trims, never a checkpoint ahead of it.
            folder.write_history(history, title, split)
            folder.save(net, loss, state)
            if plan.stopping is not None and plan.stopping.improved:
                folder.save(net, loss, state, best=True)
            shown = "  ".join(f"{k} {a:.4g}" if k == "lr" else f"{k} {a:.4f}" for k, a in metrics.items()
                              if k != "epoch" and not k.startswith("diag_"))
            _echo(f"epoch {metrics['epoch']:>3}  {shown}", args.no_progress)  # shown before the Ctrl-C lands

    status = _fit(plan, on_epoch, history, progress=not args.no_progress and folder.writer)
    if not folder.worth_keeping() and folder.writer:
        return status  # interrupted before the first checkpoint: close() removes the folder
    clock.lap("train (other epochs)" if epochs_seen else "compile + first epoch")
    folder.write_history(history, title, split, final=True)
    clock.lap("write")
    if history.get("epoch") and status == 0:
        prefix = "val_" if config["validation"] else "test_"
        final = {k[len(prefix):]: a[-1] for k, a in history.items() if k.startswith(prefix)}
        _say(f"final {split}: " + "  ".join(f"{k} {a:.4f}" for k, a in final.items()))
        if plan.stopping is not None:
            _report_best(plan, history, split)
    timings = clock.total()
    folder.write_json("timings.json", timings)
    _say("time: " + ", ".join(f"{k} {a:.2f}s" for k, a in timings.items()))
    _say(f"run folder: {folder}")
    return status


def _report_best(plan: Plan, history: dict, split: str) -> None:
    stopping, last = plan.stopping, history["epoch"][-1]
    why = (f"stopped early at epoch {last}: no better {split} loss for {stopping.patience} epochs"
           if stopping.stop else f"ran all {last} epochs")
    if stopping.best_epoch is None:
        _say(f"{why}; no epoch had a finite {split} loss, so there is no best.npz.")
        return
    i = history["epoch"].index(stopping.best_epoch)
    best = "  ".join(f"{k[4:]} {history[k][i]:.4f}" for k in history if k.startswith("val_"))
    _say(f"{why}; best epoch {stopping.best_epoch} ({split} {best}) is in {plan.folder.best_path} "
         f"(its test metrics, once settings are final: fnn evaluate {plan.folder} --best --split test)")


def _fit(plan: Plan, on_epoch, history: dict, progress: bool) -> int:
    """Runs :func:`fnn.fit` for the plan; 0 done, 1 diverged (last good state saved), 130 interrupted."""
    config, folder, net, loss, data = plan.config, plan.folder, plan.net, plan.loss, plan.data
    mesh = make_mesh(config["devices"]) if config["devices"] > 1 else None
    try:
        fit(net, loss, plan.params, data.x_train, data.y_train, key=plan.key, optimizer=plan.optimizer,
            epochs=config["epochs"], batch_size=config["batch_size"], method=config["method"],
            l2=config["l2"], dropout=config["dropout"], state=plan.state,
            **({"validation": (data.x_val, data.y_val)} if config["validation"] else {"test": (data.x_test, data.y_test)}),
            mesh=mesh, on_epoch=on_epoch, progress=progress, clip_norm=config["clip_norm"],
            noise_multiplier=config["noise_multiplier"], diagnostics=config["diagnostics"],
            early_stopping=plan.stopping)
    except NonFiniteLossError as err:
        # The error carries the last state with a finite loss, perhaps from inside an epoch
        # that no checkpoint covers yet: save it, so nothing finite is lost.
        folder.save(net, loss, err.state)
        print(f"fnn train: {err} The last good checkpoint is {folder.checkpoint_path}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        process.ignore()  # a second Ctrl-C must not break the cleanup into a traceback
        done = folder.saved_epoch if folder.saved_epoch is not None else plan.state.epoch if plan.state else 0
        kept = sum(e <= done for e in history.get("epoch", []))
        for a in history.values():  # the metrics end where the checkpoint does
            del a[kept:]
        print(f"fnn train: interrupted. {folder} holds the checkpoint and metrics of epoch {done}: continue with "
              f"fnn train --resume {folder}" if folder.checkpoint_path.exists() else  # else close() removes it
              "fnn train: interrupted before the first epoch ended: nothing was kept.", file=sys.stderr)
        return 130
    return 0


def sweep_command(args) -> int:
    """``fnn sweep``: every check, then the runs, then the sweep folder and its summary."""
    clock = Stopwatch()
    clock.lap("import")
    values = {k: getattr(args, k) for k in (*DEFAULTS, "seeds")}
    seeds, base, grid = configurations(values)
    plan = SweepPlan(seeds, base, grid, args.out, args.select)
    clock.lap("data, checks")
    swept = ", ".join(f"{flag(k)} {' '.join(map(str, a))}" for k, a in {**grid, **(
        {"activation": plan.activations} if len(plan.activations) > 1 else {})}.items()) or "no grid"
    _say(f"fnn sweep: {plan.data.name}, {plan.runs} runs ({len(seeds)} seeds × {swept}), "
         f"{base['epochs']} epochs each")
    plan.store.make(["fnn", *args.argv])
    try:
        results = sweeprun(plan, progress=not args.no_progress)
        clock.lap("train")
        rows = write_sweep(plan, results, ["fnn", *args.argv], plot=not args.no_plot)
    except (KeyboardInterrupt, OSError) as err:  # one line: what failed, and the trained groups kept
        return plan.store.failed(err, len(plan.groups), _describe)
    finally:
        plan.store.close()  # a sweep that trained no group is removed again
    clock.lap("write")
    split = "validation" if base["validation"] else "test"
    _say(summary_markdown(rows, plan.grid, split, len(plan.activations) > 1).rstrip())
    for line in best_lines(plan, results, split):
        _say(line)
    diverged = sum(int((r.diverged > 0).sum()) for _, r in results)
    if diverged:
        _say(f"{diverged} of {plan.runs} runs diverged (non-finite loss): left out of the statistics.")
    _say("time: " + ", ".join(f"{k} {a:.2f}s" for k, a in clock.total().items()))
    _say(f"sweep folder: {plan.folder}")
    return 0


def _echo(message: str, plain: bool) -> None:
    if plain:
        _say(message)
    else:
        from tqdm.auto import tqdm

        tqdm.write(message)


def evaluate(run: str, best: bool = False, split: str | None = None, allow_changed: bool = False) -> int:
    """``fnn evaluate RUN [--best] [--split train|validation|test]``: the metrics of the run's
    checkpoint (or of ``best.npz``) on ``split`` (default: the split the run was evaluated on,
    ``validation`` for a ``--validation`` run, else ``test``); exit 1 if they are not finite.
    Refuses when the run's data file changed (:func:`fnn.cli.records.check_data_file`) unless
    ``allow_changed``."""
    folder = RunFolder(run)
    config = folder.read_config()
    _warn("evaluate", check_data_file(config, read_data_record(run), folder.path, allow_changed=allow_changed))
    split = split or ("validation" if config["validation"] else "test")
    if split == "validation" and not config["validation"]:
        raise ValueError(f"The run in {folder} has no validation split (it ran without --validation): "
                         "use --split test or --split train.")
    jax.config.update("jax_enable_x64", True) if config["x64"] else None
    data, net, loss = build(config)
    ckpt = folder.load_checkpoint(net, best=best)
    path = folder.best_path if best else folder.checkpoint_path
    try:
        check_params_finite(ckpt.params)
    except ValueError as err:
        print(f"fnn evaluate: {path}: {err}", file=sys.stderr)
        return 1
    arrays = {"train": (data.x_train, data.y_train), "validation": (data.x_val, data.y_val),
              "test": (data.x_test, data.y_test)}[split]
    metrics = evaluate_metrics(net, loss, ckpt.params, *arrays)
    which = "best, " if best else ""
    print(f"{folder} ({which}epoch {ckpt.step}): {split} " + "  ".join(f"{k} {a:.4f}" for k, a in metrics.items()))
    if not all(math.isfinite(a) for a in metrics.values()):
        print(f"fnn evaluate: the checkpoint's {split} metrics are not finite: the parameters in "
              f"{path} are unusable.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
