"""``fnn sweep``: the configurations of a sweep from its flags, every check before anything is
written, the runs by :func:`fnn.sweep`, and the sweep folder.

The folder holds ``sweep.json`` (the command, versions, every run's configuration, history
and divergence, and the summary), ``summary.csv`` and ``summary.md`` (mean ± 95% CI over
seeds per grid point), ``curves.png`` (the mean curve of each grid point with its 95%
band) and ``params.npz`` (every run's final parameters, with a leading run axis; one
array set per activation). Every file goes through :func:`fnn.io.files.atomic_write`.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import time
from pathlib import Path

import jax
import numpy as np

from fnn.cli.config import DEFAULTS, SECOND_ORDER_KEYS, SWEEP_FLAGS, check_config, flag
from fnn.io.files import atomic_write, write_json
from fnn.training.optim import DEFAULT_MOMENTUM, default_learning_rate
from fnn.training.parallel import make_mesh
from fnn.io.plots import figure_png, plot_sweep
from fnn.cli.records import data_record, resolve_dataset
from fnn.cli.runs import _provenance, build
from fnn.analysis.stats import by_seed, higher_is_better, lead
from fnn.training.sweep import check_select, sweep
from fnn.cli.sweepfolder import SweepFolder
from fnn.data.tables import is_data_file

# The share of physical memory a sweep's parameters, optimizer states and data may take.
MEMORY_SHARE = 0.5


def configurations(values: dict[str, list]) -> tuple[list[int], dict, dict]:
    """``(seeds, base, grid)`` from the parsed flags (each a list of values): ``base`` holds the
    one-valued settings, ``grid`` the several-valued ones. Raises ``ValueError`` for a flag that
    cannot take several values, or a bad value."""
    given = values.pop("seeds")
    seeds = list(range(given[0])) if len(given) == 1 else given
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds gives a count (one number >= 1) or distinct seeds, got {' '.join(map(str, given))}.")
    base, grid = {}, {}
    for key, given in values.items():
        if key not in DEFAULTS:
            continue
        if key == "hidden" or not isinstance(given, list):
            base[key] = given  # one architecture; switches (--validation, --x64, ...)
        elif len(given) == 1:
            base[key] = given[0]
        elif key in SWEEP_FLAGS:
            if len(set(map(str, given))) != len(given):
                raise ValueError(f"{flag(key)} gives each grid value once, got {' '.join(map(str, given))}.")
            grid[key] = list(given)
        else:
            raise ValueError(f"{flag(key)} takes one value in a sweep (got {len(given)}): the flags that may "
                             f"take several are {', '.join(flag(k) for k in SWEEP_FLAGS)}.")
    if "seed" in values and len(values["seed"]) == 1 and values["seed"][0] != DEFAULTS["seed"]:
        raise ValueError("fnn sweep takes --seeds (a count or a list), not --seed.")
    if base.get("early_stopping"):
        raise ValueError("--early-stopping is not available in a sweep: every run trains its --epochs.")
    if base.get("diagnostics"):
        raise ValueError("--diagnostics is not available in a sweep: use fnn train --diagnostics for one run.")
    base = {**DEFAULTS, **base}
    base["momentum"] = DEFAULT_MOMENTUM if base["momentum"] is None else base["momentum"]
    if base["lr"] is None and "optimizer" not in grid:  # else each point's optimizer's own (fnn.sweep)
        base["lr"] = default_learning_rate(base["optimizer"])
    base["dataset"] = resolve_dataset(base["dataset"])  # the sweep folder records where its data file is
    return seeds, base, grid


class SweepPlan:
    """A sweep that passed every check, before anything was written."""

    def __init__(self, seeds, base, grid, out, select):
        self.seeds, self.base, self.grid, self.select = seeds, base, grid, select
        activations = self.activations = grid.pop("activation", [base["activation"]])
        self.points = [{**base, **dict(zip(grid, combo))} for combo in itertools.product(*grid.values())] \
            if grid else [dict(base)]
        for point in self.points:  # no --lr: each optimizer's own (as fnn.sweep does with lr=None)
            point["lr"] = point["lr"] or default_learning_rate(point["optimizer"])
        for point in self.points:
            for activation in activations:
                check_config({**point, "activation": activation}, "the sweep's flags")
        if base["x64"]:
            jax.config.update("jax_enable_x64", True)
        self.runs = len(self.seeds) * len(self.points) * len(activations)
        first = build({**base, "seed": self.seeds[0]})
        self.data, self.data_record = first[0], data_record(base["dataset"])
        if select is not None:  # a wrong name fails now, not after the training
            check_select(select, first[2], ["val" if self.data.x_val is not None else "test"])
        self._check_memory(first[1])  # before loading a split per seed
        if base["devices"] > 1:
            make_mesh(base["devices"])  # enough devices?
        self.groups = {}  # activation -> (net, loss, train, held-out: {"val" or "test": (x, v)})
        for activation in activations:
            # The first seed's split with the base activation is already built (MNIST-1D generates
            # its data, seconds per seed): reuse it.
            splits = [first if s == self.seeds[0] and activation == base["activation"] else
                      build({**base, "activation": activation, "seed": s}) for s in self.seeds]
            self.groups[activation] = (splits[0][1], splits[0][2], *_stack([d for d, _, _ in splits]))
        name = Path(base["dataset"]).stem if is_data_file(base["dataset"]) else base["dataset"]
        # The default name is unique: make() takes it, or the next free -2, -3, ...
        self.store = SweepFolder(out or f"sweeps/{name}-{time.strftime('%Y%m%d-%H%M%S')}", {
            "seeds": seeds, "base": base, "grid": grid, "select": select, "activations": activations},
            unique=out is None)
        self.store.check_free()  # empty, or an unfinished sweep of these settings (continued)

    @property
    def folder(self) -> Path:
        """The sweep folder (a default name gets its -2, -3, ... when the store makes it)."""
        return self.store.path

    def _check_memory(self, net) -> None:
        weights = sum(a * b + b for a, b in zip(net.sizes[:-1], net.sizes[1:]))
        itemsize = 8 if self.base["x64"] else 4
        need = self.runs * weights * itemsize * 4  # params, gradients and two optimizer moments
        data = sum(a.nbytes for a in (self.data.x_train, self.data.y_train, self.data.x_test, self.data.y_test))
        need += data * len(self.seeds) * len(self.activations)  # at worst one split per seed
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
        if need > MEMORY_SHARE * have:
            raise ValueError(f"{self.runs} runs need about {need / 2**30:.1f} GiB for their parameters, optimizer "
                             f"states and data, more than half of this machine's {have / 2**30:.1f} GiB: use "
                             "fewer seeds or grid values, or split the sweep.")


def _stack(splits):
    """``((x, v), {"val" or "test": (x_held, v_held)})``: the training data and the held-out split
    the sweep evaluates (the validation split when there is one: the test split stays unseen),
    shared when every seed has the same split (MNIST), otherwise stacked with a leading seed axis."""
    held = "val" if splits[0].x_val is not None else "test"
    names = ("x_train", "y_train", f"x_{held}", f"y_{held}")
    first = [getattr(splits[0], n) for n in names]
    if all(np.array_equal(a, getattr(d, n)) for d in splits[1:] for a, n in zip(first, names)):
        x, v, xt, vt = first
    else:
        x, v, xt, vt = (np.stack([getattr(d, n) for d in splits]) for n in names)
    return (x, v), {held: (xt, vt)}


def run(plan: SweepPlan, progress: bool) -> list[tuple[str, object]]:
    """Trains every group; ``[(activation, SweepResult), ...]``."""
    keys = ("lr", "momentum", "l2", "dropout", "init_scale", "optimizer", "batch_size", "schedule",
            "warmup_epochs", "method", "init", "epochs", *SECOND_ORDER_KEYS)
    settings = {k: plan.base[k] for k in keys}
    grid = {k: a for k, a in plan.grid.items() if k in keys}
    mesh = make_mesh(plan.base["devices"]) if plan.base["devices"] > 1 else None
    out = []
    for index, (activation, (net, loss, train, test)) in enumerate(plan.groups.items()):
        result = plan.store.load_group(index)  # trained by an earlier, unfinished run of this sweep
        if result is not None:
            out.append((activation, result))
            continue
        result = sweep(net, loss, *train, seeds=plan.seeds, grid=grid, **{"validation" if k == "val" else k: a
                                                                          for k, a in test.items()},
                       select=plan.select,
                       progress=progress, clip_norm=plan.base["clip_norm"],
                       noise_multiplier=plan.base["noise_multiplier"], mesh=mesh, **settings)
        plan.store.save_group(index, activation, result)
        out.append((activation, result))
    return out


def write(plan: SweepPlan, results, command: list[str], plot: bool) -> dict:
    """Writes the sweep folder; returns the summary rows (with their activation)."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    rows, runs, arrays = [], [], {}
    for activation, r in results:
        rows += [{"activation": activation, **row} for row in r.summary]
        for i, config in enumerate(r.configs):
            runs.append({"config": {**plan.base, **config, "activation": activation},
                         "diverged_epoch": int(r.diverged[i]),
                         "history": {k: [None if not np.isfinite(a) else float(a) for a in h[i]]
                                     for k, h in r.history.items()}})
        for l, layer in enumerate(r.params, 1):
            for name, a in layer.items():
                arrays[f"{activation}/{name}{l}"] = np.asarray(a)
    split = "validation" if plan.base["validation"] else "test"
    buffer = io.BytesIO()  # the parameters first, sweep.json (the sign of a finished sweep) last
    np.savez(buffer, **arrays)
    atomic_write(plan.folder / "params.npz", buffer.getvalue())
    atomic_write(plan.folder / "summary.csv", _csv(rows))
    atomic_write(plan.folder / "summary.md", summary_markdown(rows, plan.grid, split, len(plan.activations) > 1))
    if plot:
        atomic_write(plan.folder / "curves.png", figure_png(plot_sweep(results, plan.grid, split)))
    write_json(plan.folder / "sweep.json", {"command": _provenance(command), "seeds": plan.seeds,
                                            "split": split, "data": plan.data_record, "runs": runs,
                                            "summary": _finite(rows)})
    plan.store.finish()
    return rows


def _finite(rows):
    return [{k: (None if isinstance(a, float) and not np.isfinite(a) else a) for k, a in row.items()} for row in rows]


def _csv(rows) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def summary_markdown(rows, grid: dict, split: str, activations: bool = False) -> str:
    """The summary as a markdown table: the swept settings, then final metrics as mean ± 95% CI."""
    swept = ["activation"] * activations + list(grid)
    metrics = [k[:-5] for k in rows[0] if k.endswith("_mean") and k[:-5].startswith(("train_", "val_", "test_"))]
    head = [*swept, "seeds", "diverged", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row[k]) for k in swept] + [str(row["n"]), str(row["diverged"])]
        cells += [_pm(row[f"{m}_mean"], row[f"{m}_ci95"]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nFinal-epoch metrics, mean ± half-width of the 95% t-interval over seeds " \
                              "(runs that diverged left out).\n"


def _pm(mean, half) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.4f}" + (f" ± {half:.4f}" if np.isfinite(half) else "")


def best_lines(plan: SweepPlan, results, split: str) -> list[str]:
    """What ``fnn sweep`` says about its best point: the settings, and whether the runner-up
    (across activations too) is distinguishable from it, paired over the seeds they share."""
    held = "val" if "val_loss" in results[0][1].history else "test"
    metric = plan.select or (f"{held}_accuracy" if f"{held}_accuracy" in results[0][1].history else f"{held}_loss")
    sign = -1.0 if higher_is_better(metric) else 1.0
    live = [(sign * row[f"{metric}_mean"], a, r, g) for a, r in results for g, row in enumerate(r.summary)
            if row["diverged"] == 0 and np.isfinite(row[f"{metric}_mean"])]
    if not live:
        return []
    live.sort(key=lambda c: c[0])
    name = lambda a, r, g: ", ".join([f"{flag(k)} {r.summary[g][k]}" for k in plan.grid]
                                     + [f"--activation {a}"] * (len(plan.activations) > 1)) or "the one grid point"
    what = metric.replace("val_", "validation ").replace("test_", "test ")
    lines = [f"best by {what}: {name(*live[0][1:])}"]
    if len(live) > 1:
        (_, a, r, g), (_, a2, r2, g2) = live[:2]
        first, second = by_seed(r.configs, r.history[metric], r.diverged, g), \
            by_seed(r2.configs, r2.history[metric], r2.diverged, g2)
        c = lead([first[s] for s in plan.seeds], [second[s] for s in plan.seeds], metric)
        verdict = "is behind it" if c.significant() else "is not distinguishable from it"
        ahead = "best − runner-up" if sign < 0 else "runner-up − best (lower is better)"
        lines.append(f"runner-up {name(a2, r2, g2)} {verdict}: {ahead} {c.text(digits=4)}, over {c.n} seeds")
    return lines

