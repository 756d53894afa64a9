"""Shared plumbing for the experiments: argument parsing and writing results/NAME.{json,md,png}."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fnn.files import atomic_write, write_json
from fnn.plots import figure_png

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (what the test suite runs)")
    p.add_argument("--out", default=str(RESULTS), help="results folder (default: experiments/results)")
    return p.parse_args(argv)


def main(module, argv=None) -> dict:
    """The command line of every experiment module: ``python experiments/NAME.py [--quick] [--out DIR]``.

    Calls ``module.run(quick)`` and ``module.report(results)``, writes NAME.{json,md,png} and
    prints the markdown. Keys listed in ``module.JSON_OMITS`` (data the figure needs but the
    json should not hold) are left out of the json. Returns the results as written.
    """
    name = Path(module.__file__).stem
    args = parse_args(module.__doc__, argv)
    results = module.run(args.quick)
    markdown, fig = module.report(results)
    for key in getattr(module, "JSON_OMITS", ()):
        results.pop(key)
    write(name, results, markdown, fig, args.out)
    print(markdown)
    return results


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write(name: str, results: dict, markdown: str, fig, out: str | os.PathLike = RESULTS) -> Path:
    """Writes NAME.json, NAME.md and NAME.png into ``out`` (each via a temp file and rename)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", json.loads(json.dumps(results, default=float)))
    atomic_write(out / f"{name}.md", markdown.rstrip() + "\n")
    atomic_write(out / f"{name}.png", figure_png(fig))
    return out


def table(header: list[str], rows: list[list]) -> str:
    fmt = lambda a: f"{a:.4g}" if isinstance(a, float) else str(a)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(a) for a in row) + " |" for row in rows]
    return "\n".join(lines)


# --- sweeps: several seeds, a learning rate tuned per arm on a validation split -------------------

def seed_splits(load, seeds, validation: bool):
    """Train and held-out arrays with a leading seed axis: ``load(seed)`` per seed, and with
    ``validation`` the held-out part carved from its training split (the test split unused)."""
    import numpy as np

    from fnn.data import validation_split

    splits = [load(s) for s in seeds]
    if validation:
        splits = [validation_split(d, seed=s) for d, s in zip(splits, seeds)]
    stack = lambda name: np.stack([getattr(d, name) for d in splits])
    return (stack("x_train"), stack("y_train")), (stack("x_test"), stack("y_test"))


def auc(curves):
    """The mean over epochs of each run's curve: one number that rewards fast and good."""
    import numpy as np

    return np.nanmean(np.asarray(curves), axis=-1)


def tune_and_test(net, loss, load, *, seeds, lr_grid, epochs, metric="test_accuracy", **settings) -> dict:
    """The learning rate of one arm, chosen on validation splits, then its runs on the test splits.

    Every grid value trains on each seed's validation split (``fnn.sweep``, one program); the
    chosen rate has the best mean over seeds of the area under the validation ``metric`` curve
    (the mean over epochs: fast and good; lower is better for a loss). The chosen rate then
    trains on the full training splits and is evaluated on the test splits, seed by seed.
    Returns the validation curve over the grid (mean and 95% half-width), the chosen rate,
    and the test histories ``(seeds, epochs)`` with their per-epoch mean and half-width.
    """
    import numpy as np

    from fnn import sweep
    from fnn.stats import mean_ci

    sign = 1.0 if metric.endswith(("accuracy", "r2")) else -1.0
    train, held = seed_splits(load, seeds, validation=True)
    tuned = sweep(net, loss, *train, seeds=seeds, grid={"lr": list(lr_grid)}, test=held, epochs=epochs,
                  **settings)
    scores = auc(tuned.history[metric])
    points = np.array([c["point"] for c in tuned.configs])
    curve = [mean_ci(np.where(tuned.diverged[points == g] > 0, np.nan, scores[points == g]))
             for g in range(len(lr_grid))]
    usable = [g for g in range(len(lr_grid)) if (tuned.diverged[points == g] == 0).all()]
    best = max(usable, key=lambda g: sign * curve[g][0])
    train, test = seed_splits(load, seeds, validation=False)
    final = sweep(net, loss, *train, seeds=seeds, test=test, epochs=epochs, lr=float(lr_grid[best]), **settings)
    history = {k: final.history[k] for k in final.history}
    bands = {k: [mean_ci(a[:, e])[::2] for e in range(a.shape[1])] for k, a in history.items()}
    return {"lr_grid": [float(a) for a in lr_grid], "val_auc": [c[0] for c in curve],
            "val_auc_ci95": [c[2] for c in curve], "diverged_at_lr": [int((tuned.diverged[points == g] > 0).sum())
                                                                     for g in range(len(lr_grid))],
            "lr": float(lr_grid[best]), "lr_at_grid_edge": best in (0, len(lr_grid) - 1) and len(lr_grid) > 1,
            "history": {k: a.tolist() for k, a in history.items()},
            "mean": {k: [b[0] for b in v] for k, v in bands.items()},
            "ci95": {k: [b[1] for b in v] for k, v in bands.items()}, "seeds": list(seeds)}


def band(ax, arm: dict, key: str, **kwargs):
    """Draws the mean curve of ``arm[key]`` over seeds with its 95% band; epoch k at x = k."""
    import numpy as np

    mean, half = np.asarray(arm["mean"][key]), np.nan_to_num(np.asarray(arm["ci95"][key]))
    epochs = np.arange(1, len(mean) + 1)
    line, = ax.plot(epochs, mean, **kwargs)
    ax.fill_between(epochs, mean - half, mean + half, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def pm(mean, half, digits: int = 3) -> str:
    """``mean ± half`` for tables."""
    import math

    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if half == half else f"{mean:.{digits}f}"
