"""Shared plumbing for the experiments: argument parsing and writing results/NAME.{json,md,png}."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fnn.io.files import atomic_write, write_json
from fnn.io.plots import figure_png

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (what the test suite runs)")
    p.add_argument("--out", default=str(RESULTS), help="results folder (default: experiments/results)")
    return p.parse_args(argv)


def main(module, argv=None) -> dict:
    """The command line of every experiment module: ``python experiments/NAME.py [--quick] [--out DIR]``.

    Calls ``module.run(quick)`` and ``module.report(results)``, writes NAME.{json,md,png} and
    prints the markdown. The json's ``provenance`` (:func:`provenance`, taken when the run
    starts) names the commit and the hash of the script that wrote it; ``tests/test_experiments.py`` checks it. Keys listed in ``module.JSON_OMITS`` (data the figure needs but the
    json should not hold) are left out of the json. Returns the results as written.
    """
    name = Path(module.__file__).stem
    args = parse_args(module.__doc__, argv)
    # Taken before the run: the script and inputs as they were when it started. A script edited
    # during a long run then no longer matches its result, instead of vouching for code that did
    # not write it (the running process keeps the version it imported).
    started = provenance(module.__file__, [RESULTS / f"{n}.json" for n in getattr(module, "INPUTS", ())])
    results = module.run(args.quick)
    markdown, fig = module.report(results)
    for key in getattr(module, "JSON_OMITS", ()):
        results.pop(key)
    results["provenance"] = started
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

    from fnn.data.datasets import validation_split

    splits = [load(s) for s in seeds]
    if validation:
        splits = [validation_split(d, seed=s) for d, s in zip(splits, seeds)]
    stack = lambda name: np.stack([getattr(d, name) for d in splits])
    held = "val" if validation else "test"  # validation_split keeps the test split apart, in x_test
    return (stack("x_train"), stack("y_train")), (stack(f"x_{held}"), stack(f"y_{held}"))


def auc(curves):
    """The mean over epochs of each run's curve: one number that rewards fast and good."""
    import numpy as np

    return np.nanmean(np.asarray(curves), axis=-1)


def tune_and_test(net, loss, load, *, seeds, lr_grid, epochs, metric="test_accuracy", extend: int = 3,
                  max_epochs: int | None = None, **settings) -> dict:
    """The learning rate of one arm, chosen on validation splits, then its runs on the test splits.

    Every grid value trains on each seed's validation split (``fnn.sweep``, one program); the
    chosen rate has the best mean over seeds of the area under the validation ``metric`` curve
    (the mean over epochs: fast and good; lower is better for a loss). A choice on the grid's
    edge extends the grid (:func:`interior_choice`, at most ``extend`` new values). The chosen
    rate then trains on the full training splits and is evaluated on the test splits, seed by
    seed; with ``max_epochs`` the budget doubles until the test curves plateau
    (:func:`plateau`) or ``max_epochs`` is reached. ``flat_tol`` (in ``settings``, default 0) is
    :func:`interior_choice`'s flat-objective tolerance. Returns the grid search (``lr_grid``,
    ``val_auc``, ``val_auc_ci95``, ``diverged_at_lr``, ``lr``, ``lr_at_grid_edge``, ``grid_note``,
    ``flat_objective``, ``runner_up``), the test histories ``(seeds, epochs)`` with their per-epoch mean and
    half-width, ``epochs`` run and the ``plateau`` verdict.
    """
    import numpy as np

    from fnn import sweep
    from fnn.analysis.stats import mean_ci

    sign = 1.0 if metric.endswith(("accuracy", "r2")) else -1.0
    flat_tol = settings.pop("flat_tol", 0.0)
    train, held = seed_splits(load, seeds, validation=True)

    def score(values):
        tuned = sweep(net, loss, *train, seeds=seeds, grid={"lr": list(values)}, test=held, epochs=epochs,
                      **settings)
        scores, points = auc(tuned.history[metric]), np.array([c["point"] for c in tuned.configs])
        return [(np.where(tuned.diverged[points == g] > 0, np.nan, scores[points == g]),
                 int((tuned.diverged[points == g] > 0).sum())) for g in range(len(values))]

    choice = interior_choice(score, lr_grid, larger_is_better=sign > 0, extend=extend, flat_tol=flat_tol)
    train, test = seed_splits(load, seeds, validation=False)
    while True:
        final = sweep(net, loss, *train, seeds=seeds, test=test, epochs=epochs, lr=choice["value"], **settings)
        flat = plateau(final.history[metric], larger_is_better=sign > 0)
        if flat["plateaued"] or max_epochs is None or 2 * epochs > max_epochs:
            break
        epochs *= 2
    history = {k: final.history[k] for k in final.history}
    bands = {k: [mean_ci(a[:, e])[::2] for e in range(a.shape[1])] for k, a in history.items()}
    return {"lr_grid": choice["grid"], "val_auc": choice["mean"], "val_auc_ci95": choice["ci95"],
            "diverged_at_lr": choice["diverged"], "lr": choice["value"], "lr_at_grid_edge": choice["at_edge"],
            "grid_note": choice["note"], "flat_objective": choice["flat"], "runner_up": choice["runner_up"],
            "epochs": epochs, "plateau": flat,
            "history": {k: a.tolist() for k, a in history.items()},
            "mean": {k: [b[0] for b in v] for k, v in bands.items()},
            "ci95": {k: [b[1] for b in v] for k, v in bands.items()}, "seeds": list(seeds)}


def counted(values, failure):
    """``values`` with every non-finite entry (a diverged run) replaced by ``failure`` (a scalar,
    or one value per row), and the number replaced: a diverged run counts as a failure in means
    and paired tests instead of dropping out of them (which flatters the arms that diverge)."""
    import numpy as np

    a = np.array(values, np.float64)
    fail = np.broadcast_to(np.asarray(failure, np.float64).reshape((-1,) + (1,) * (a.ndim - 1)), a.shape)
    bad = ~np.isfinite(a)
    a[bad] = fail[bad]
    return a, int(bad.any(axis=tuple(range(1, a.ndim))).sum()) if a.ndim > 1 else int(bad.sum())


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


# --- the grid-edge rule, the plateau rule, provenance ----------------------------------------------

def interior_choice(score, grid, *, larger_is_better: bool = True, extend: int = 3, flat_tol: float = 0.0) -> dict:
    """The best value of a geometric ``grid``, extending the grid while the best sits on its edge.

    ``score(values)`` returns, per value, ``(per_seed_scores, diverged_runs)``: a value with a
    diverged run is not a candidate. When the best value is the grid's smallest or largest, one
    more value beyond it (the grid's own ratio at that end) is scored, and the choice is made
    again, at most ``extend`` times. The choice counts as interior when a usable value lies on
    each side of it, or when the value beyond it diverged (larger steps are then ruled out by
    divergence, which the note says). Otherwise ``at_edge`` stays true and ``note`` says why
    (extension limit reached, a one-value grid, or a flat objective, :func:`flat_objective`:
    the best and the worst usable value differ by at most ``flat_tol`` even at the far end of
    the 95% interval of their paired difference, as when no rate moves a network off the
    majority class; with the default ``flat_tol=0`` only exactly equal scores are flat). A flat
    objective still returns the best value, but the grid did not choose it: a caller reports
    such an arm as one that no rate of the grid trains, not as a choice.

    Returns ``grid`` (ascending, extensions included), ``mean`` and ``ci95`` (95% t-interval)
    of the scores per value, ``diverged`` runs per value, the chosen ``value``, ``at_edge``,
    ``extended`` (the values added), ``note``, ``flat`` (the flat-objective rule fired), and ``runner_up``: the second-best usable value
    compared with the best, paired over seeds (:func:`fnn.stats.paired`).
    """
    import numpy as np

    from fnn.analysis.stats import mean_ci, paired

    sign = 1.0 if larger_is_better else -1.0
    values = sorted(float(a) for a in grid)
    scored = dict(zip(values, score(values)))
    added, note, flat = [], "", False
    while True:
        values = sorted(scored)
        usable = [a for a in values if scored[a][1] == 0 and np.isfinite(np.nanmean(scored[a][0]))]
        if not usable:
            note = "every value of the grid diverged"
            break
        ranked = sorted(usable, key=lambda a: -sign * np.nanmean(scored[a][0]))
        i = values.index(ranked[0])
        flat = len(usable) > 1 and flat_objective(scored[ranked[0]][0], scored[ranked[-1]][0], flat_tol)
        if flat:
            note = ("every usable value scores the same (a flat objective): the grid cannot choose" if not flat_tol
                    else f"a flat objective: best and worst usable value within {flat_tol:g} (95% interval of "
                         "their paired difference): the grid cannot choose")
            break
        beyond = [i - 1, i + 1]
        blocked = [j for j in beyond if 0 <= j < len(values) and scored[values[j]][1] > 0]
        if 0 < i < len(values) - 1:
            if blocked:
                note = f"{values[blocked[0]]:g} beyond the choice diverged ({scored[values[blocked[0]]][1]} runs)"
            break
        if len(values) < 2:
            note = "a one-value grid: no edge rule"
            break
        if len(added) >= extend:
            note = (f"still on the grid's edge after {extend} extensions: a wider grid is needed" if extend
                    else "on the grid's edge; the grid was not extended (extend=0)")
            break
        new = values[0] ** 2 / values[1] if i == 0 else values[-1] ** 2 / values[-2]
        scored[new] = score([new])[0]
        added.append(new)
    values = sorted(scored)
    stats = [mean_ci(scored[a][0]) for a in values]
    chosen = ranked[0] if usable else None
    at_edge = chosen is not None and len(values) > 1 and values.index(chosen) in (0, len(values) - 1)
    second = None
    if usable and len(ranked) > 1:
        c = paired(scored[ranked[0]][0], scored[ranked[1]][0])
        second = {"value": ranked[1], "difference": c.mean, "ci95": c.half_width, "p_value": c.p_value,
                  "wins": c.wins, "ties": c.ties, "losses": c.losses, "distinguishable": c.significant()}
    return {"grid": values, "mean": [m[0] for m in stats], "ci95": [m[2] for m in stats],
            "diverged": [scored[a][1] for a in values], "value": chosen, "at_edge": bool(at_edge),
            "extended": added, "note": note, "flat": bool(flat), "runner_up": second}


def flat_objective(best, worst, tol: float = 0.0) -> bool:
    """Whether a grid's objective is flat: the per-seed scores of its ``best`` and ``worst``
    usable values differ by at most ``tol`` at either end of the 95% t-interval of their paired
    difference (:func:`fnn.stats.paired`; one seed: the difference itself). An equivalence
    test, like :func:`plateau`: noisy scores whose difference is merely not significant are not
    flat, and a small but consistent trend (chance-level scores drifting with the rate) is flat
    when it stays within ``tol``. ``tol=0`` asks for exactly equal scores."""
    import numpy as np

    from fnn.analysis.stats import paired

    c = paired(best, worst)
    if c.n == 0:
        return False
    bound = abs(c.mean) + (c.half_width if c.n > 1 else 0.0)
    return bool(np.isfinite(bound) and bound <= tol)


def plateau(curves, *, larger_is_better: bool = True, tol: float = 0.005, window: float = 0.25) -> dict:
    """Whether training curves ``(seeds, epochs)`` have stopped improving.

    Compares, seed by seed, the mean of the last ``window`` fraction of epochs with the mean of
    the window before it (:func:`fnn.stats.paired`). The curves plateau when the upper end of
    the 95% interval of that gain (in the direction ``larger_is_better``) is below ``tol``: a
    further improvement larger than ``tol`` is ruled out. Noisy curves therefore do not count
    as flat merely because their gain is not significant. Returns ``plateaued``, the mean
    ``gain``, its ``ci95`` and ``p_value``. Fewer than four epochs never count as a plateau.
    """
    import numpy as np

    from fnn.analysis.stats import paired

    a = np.asarray(curves, np.float64)
    if a.ndim == 1:
        a = a[None]
    w = max(1, int(round(a.shape[1] * window)))
    if a.shape[1] < 4 or a.shape[1] < 2 * w:
        return {"plateaued": False, "gain": float("nan"), "ci95": float("nan"), "p_value": float("nan")}
    sign = 1.0 if larger_is_better else -1.0
    last, before = np.nanmean(a[:, -w:], axis=1), np.nanmean(a[:, -2 * w:-w], axis=1)
    c = paired(sign * last, sign * before)
    flat = bool(c.mean + c.half_width < tol) if a.shape[0] > 1 else bool(c.mean < tol)
    return {"plateaued": flat, "gain": c.mean, "ci95": c.half_width, "p_value": c.p_value}


def script_hash(path) -> str:
    """sha256 of a script's bytes: what a result's provenance is checked against."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def provenance(script, inputs=()) -> dict:
    """What wrote a result: the script (relative to the repository), the sha256 of its content
    at the time, the git commit checked out (``dirty`` when the script differed from it), and
    the sha256 of every result file in ``inputs`` it read (a re-analysis)."""
    import subprocess

    script = Path(script).resolve()
    root = script.parents[1]
    git = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True, timeout=30)
    try:
        commit = git("rev-parse", "HEAD").stdout.strip() or None
        dirty = bool(git("status", "--porcelain", "--", str(script)).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"script": str(script.relative_to(root)), "script_sha256": script_hash(script), "commit": commit,
            "script_dirty": dirty, "inputs": {Path(p).name: script_hash(p) for p in inputs}}


def provenance_problem(result_json, script) -> str | None:
    """Why a result file does not certify that ``script``, as it is now, wrote it (``None``
    when it does): no provenance recorded, another script, or another version of the script."""
    doc = json.loads(Path(result_json).read_text())
    p = doc.get("provenance") if isinstance(doc, dict) else None
    if not p:
        return f"{Path(result_json).name} records no provenance: rerun {Path(script).name}"
    if Path(p["script"]).name != Path(script).name:
        return f"{Path(result_json).name} was written by {p['script']}, not {Path(script).name}"
    if p["script_sha256"] != script_hash(script):
        return (f"{Path(result_json).name} was written by another version of {Path(script).name} "
                f"(commit {p['commit']}): rerun it")
    for name, digest in p.get("inputs", {}).items():
        source = Path(result_json).with_name(name)
        if not source.exists() or script_hash(source) != digest:
            return f"{Path(result_json).name} read a {name} that has changed since: rerun {Path(script).name}"
    return None
