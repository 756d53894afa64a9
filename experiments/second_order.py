"""K-FAC against momentum and Adam: digits classification, a digits autoencoder and MNIST-1D classification.

Per problem, minibatches of 64 (``fnn.sweep``: every run of an arm one vmapped program):

- **Tuning, on selection seeds 100-102** (their own splits and initial weights, disjoint from the
  reported seeds): each arm's settings minimise the mean over those seeds of the best validation
  loss within the budget. A choice on a grid's edge extends the grid (``common.interior_choice``,
  at most 3 values); K-FAC's two settings (rate and damping) are tuned one at a time, the other
  held at its current choice, until a pass over both moves neither.
- **Reported seeds 0-9**: the chosen settings train on each seed's training split; the validation
  and test loss are evaluated after every epoch. The plateau rule (``common.plateau`` on the log
  validation loss, tolerance 1%) is checked per arm.
- **Steps to Adam's level**, per seed: Adam's validation-chosen epoch is the argmin of its
  validation loss; the levels are Adam's best validation loss and its test loss at that epoch. An
  arm's steps to a level are the first crossing of its curve (linear in the log loss between
  evaluations; the first epoch's steps when already below at the first evaluation). A run that
  never reaches the level counts as the budget's steps (a lower bound) and is counted.
- **Wall-clock = steps × the arm's median per-step cost**, measured in this run in interleaved
  rounds of 10 single steps (each round two K-FAC refreshes, period 5), not the wall-clock of the
  training runs (the CPU is shared). The per-step cost of every optimizer at other sizes is
  ``second_order_step_cost``'s.
- **K-FAC against Adam**: per-seed log-ratios paired over the seeds (``fnn.analysis.stats.paired``:
  t-interval, p, sign count), against 1 and against the goals (0.5× Adam's steps, 0.8× its
  wall-clock); Holm over every claim of the file. Gauss-Newton is tested against Adam the same
  way (without the goals); SGD and momentum are shown without a test.

The arms: plain minibatch SGD, heavy-ball momentum (0.9), Adam, K-FAC (``fnn.kfac`` at its defaults:
KFLR factors in a running average, ``(A ⊗ G + λI)⁻¹`` exactly through the factors'
eigendecompositions, refreshed every 5 steps) and Gauss-Newton
(``fnn.gauss_newton``: 10 conjugate-gradient steps on the GGN per update, Levenberg-Marquardt
damping adapted from its tuned starting value, which is also its floor). Gauss-Newton's and
K-FAC's rate and damping are tuned one at a time as above.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # K-FAC's eigh in XLA calls OpenBLAS: one thread

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fnn  # noqa: E402
from fnn.analysis.stats import holm, mean_ci, paired  # noqa: E402
from fnn.data import load, validation_split  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import figure, interior_choice, main, plateau, table  # noqa: E402

BATCH, PLATEAU_TOL = 64, 0.01
PROBLEMS = {
    "digits": dict(data="digits", sizes=(64, 64, 10), acts=("relu", "identity"), loss="softmax_cross_entropy",
                   auto=False, init="he", epochs=60),
    "autoencoder": dict(data="digits", sizes=(64, 32, 8, 32, 64), acts=("tanh",) * 3 + ("identity",), loss="mse",
                        auto=True, init="glorot", epochs=150),
    "mnist1d": dict(data="mnist1d", sizes=(40, 100, 100, 10), acts=("relu", "relu", "identity"),
                    loss="softmax_cross_entropy", auto=False, init="he", epochs=40),
}
ARMS = {  # name -> (optimizer, {setting: starting grid}, fixed settings)
    "sgd": ("sgd", {"lr": (0.03, 0.1, 0.3)}, {}),
    "momentum": ("momentum", {"lr": (0.01, 0.03, 0.1)}, {}),
    "adam": ("adam", {"lr": (1e-3, 3e-3, 1e-2)}, {}),
    "kfac": ("kfac", {"lr": (0.1, 0.3, 1.0), "damping": (0.1, 1.0, 10.0)}, {}),
    "gauss_newton": ("gauss_newton", {"lr": (0.3, 1.0, 3.0), "damping": (0.1, 1.0, 10.0)}, {"cg_iterations": 10}),
}
FULL = dict(problems=tuple(PROBLEMS), selection=(100, 101, 102), seeds=tuple(range(10)), extend=3, rounds=20,
            reps=10, epochs=None)
QUICK = dict(problems=("digits",), selection=(100, 101), seeds=(0, 1), extend=0, rounds=2, reps=5, epochs=3)
GOALS = {"steps": 0.5, "wall-clock": 0.8}


def _splits(problem: str, seeds) -> dict:
    """``train``, ``val`` and ``test`` ``(x, v)`` with a leading seed axis; each seed its own split."""
    p, out = PROBLEMS[problem], {"train": ([], []), "val": ([], []), "test": ([], [])}
    for s in seeds:
        d = validation_split(load(p["data"], s), seed=s)
        for part in out:
            x, y = getattr(d, f"x_{part}"), getattr(d, f"y_{part}")
            out[part][0].append(x)
            out[part][1].append(x if p["auto"] else y)
    return {part: (np.stack(x), np.stack(v)) for part, (x, v) in out.items()}


def _sweep(problem: str, arm: str, data: dict, seeds, epochs: int, settings: dict, grid=None, test=False):
    p = PROBLEMS[problem]
    return fnn.sweep(fnn.MLP(p["sizes"], p["acts"]), p["loss"], *data["train"], seeds=list(seeds), grid=grid,
                     validation=data["val"], test=data["test"] if test else None, epochs=epochs,
                     batch_size=BATCH, optimizer=ARMS[arm][0], init=p["init"], **ARMS[arm][2], **settings)


def _best(curves) -> np.ndarray:
    """Each run's lowest loss (NaN for a run with none finite)."""
    a = np.asarray(curves, np.float64)
    low = np.where(np.isfinite(a), a, np.inf).min(axis=-1)
    return np.where(np.isfinite(low), low, np.nan)


def _scorer(problem, arm, data, cfg, name, fixed, cache):
    """``interior_choice``'s score: per selection seed, the best validation loss (cached per setting)."""
    def key(a):
        return tuple(sorted({**fixed, name: float(a)}.items()))

    def score(values):
        todo = [a for a in values if key(a) not in cache]
        if todo:
            r = _sweep(problem, arm, data, cfg["selection"], cfg["epochs"], fixed, grid={name: list(todo)})
            points = np.array([c["point"] for c in r.configs])
            for g, a in enumerate(todo):
                bad = r.diverged[points == g] > 0
                cache[key(a)] = (np.where(bad, np.nan, _best(r.history["val_loss"][points == g])).tolist(),
                                 int(bad.sum()))
        return [cache[key(a)] for a in values]
    return score


def _tune(problem: str, arm: str, data: dict, cfg: dict) -> dict:
    """The arm's settings: each tuned by the grid-edge rule with the others held, until a pass moves none."""
    grids = {k: list(g) if cfg["extend"] else list(g[:1]) for k, g in ARMS[arm][1].items()}
    setting = {k: g[len(g) // 2] for k, g in grids.items()}
    cache, searches = {}, []
    for _ in range(3):
        moved = False
        for name in grids:
            fixed = {k: a for k, a in setting.items() if k != name}
            choice = interior_choice(_scorer(problem, arm, data, cfg, name, fixed, cache), grids[name],
                                     larger_is_better=False, extend=cfg["extend"])
            searches.append({"setting": name, "held": fixed, **choice})
            if choice["value"] is None:
                raise RuntimeError(f"{problem}/{arm}: every {name} of {grids[name]} diverged")
            moved |= choice["value"] != setting[name]
            setting[name], grids[name] = choice["value"], choice["grid"]
        if not moved or len(grids) == 1:
            break
    last = {s["setting"]: s for s in searches}
    return {"setting": setting, "searches": searches, "at_edge": {k: s["at_edge"] for k, s in last.items()},
            "notes": {k: s["note"] for k, s in last.items()}, "converged": not moved or len(grids) == 1}


def _reach(curve, level: float, per_epoch: int):
    """Steps at which a loss curve (one value per epoch) first reaches ``level``; None if never."""
    y, target = np.log(np.asarray(curve, np.float64)), np.log(level)
    hit = np.flatnonzero(y <= target + 1e-12)
    if not hit.size:
        return None
    i = int(hit[0])
    return float(per_epoch * (i + (y[i - 1] - target) / (y[i - 1] - y[i]))) if i else float(per_epoch)


def _analyse(runs: dict, per_epoch: int) -> dict:
    """Per arm and seed: the validation-chosen epoch and its test loss, the final test loss, the
    steps to Adam's best validation loss and to Adam's test loss at Adam's chosen epoch; plateau."""
    val_a, test_a = (np.asarray(runs["adam"][k], np.float64) for k in ("val_loss", "test_loss"))
    pick = lambda v: np.nanargmin(np.where(np.isfinite(v), v, np.inf), axis=1)
    seeds = np.arange(val_a.shape[0])
    val_level, test_level = val_a[seeds, pick(val_a)], test_a[seeds, pick(val_a)]
    out = {}
    for arm, r in runs.items():
        v, t = np.asarray(r["val_loss"], np.float64), np.asarray(r["test_loss"], np.float64)
        own = pick(v)
        out[arm] = {"val_chosen_step": ((own + 1) * per_epoch).tolist(), "best_val_loss": v[seeds, own].tolist(),
                    "test_loss_at_choice": t[seeds, own].tolist(), "test_loss_final": t[:, -1].tolist(),
                    "steps_to_adam_val": [_reach(c, a, per_epoch) for c, a in zip(v, val_level)],
                    "steps_to_adam_test": [_reach(c, a, per_epoch) for c, a in zip(t, test_level)],
                    "plateau": plateau(np.log(v), larger_is_better=False, tol=PLATEAU_TOL)}
        if "test_accuracy" in r:
            out[arm]["test_accuracy_at_choice"] = np.asarray(r["test_accuracy"])[seeds, own].tolist()
    return out


def _step_costs(problem: str, settings: dict, data: dict, rounds: int, reps: int) -> dict:
    """Median seconds per single step of each arm (interleaved rounds of ``reps`` steps along its own
    trajectory on seed 0's batches, the arms' order rotated), and each round's ratio to Adam's
    (median and quartiles)."""
    p = PROBLEMS[problem]
    net = fnn.MLP(p["sizes"], p["acts"])
    x, v = data["train"][0][0], data["train"][1][0]
    batches = [(x[i:i + BATCH], v[i:i + BATCH]) for i in range(0, x.shape[0] - BATCH + 1, BATCH)]
    params0, key = fnn.init(jax.random.key(0), net, p["init"]), jax.random.key(1)
    step, state = {}, {}
    for arm, s in settings.items():
        opt = fnn.get_optimizer(ARMS[arm][0], s["lr"], **ARMS[arm][2], **{k: a for k, a in s.items() if k != "lr"})
        step[arm] = fnn.make_update_step(net, p["loss"], opt, donate=False)
        state[arm] = (params0, opt.init(params0))
        state[arm] = step[arm](*state[arm], *batches[0], key)[:2]  # compiled outside the clock
    times = {arm: [] for arm in settings}
    names = list(settings)
    for r in range(rounds):
        for arm in names[r % len(names):] + names[:r % len(names)]:  # each arm first in turn
            jax.block_until_ready(state[arm])
            start = time.perf_counter()
            for i in range(reps):
                state[arm] = step[arm](*state[arm], *batches[(r * reps + i) % len(batches)], key)[:2]
            jax.block_until_ready(state[arm])
            times[arm].append((time.perf_counter() - start) / reps)
    ratios = {arm: np.asarray(t) / np.asarray(times["adam"]) for arm, t in times.items()}
    return {"rounds": rounds, "steps_per_round": reps, "seconds": {a: float(np.median(t)) for a, t in times.items()},
            "ratio_to_adam": {a: float(np.median(q)) for a, q in ratios.items()},
            "ratio_quartiles": {a: np.percentile(q, [25, 75]).tolist() for a, q in ratios.items()}}


def _problem(problem: str, cfg: dict) -> dict:
    epochs = cfg["epochs"] or PROBLEMS[problem]["epochs"]
    cfg = {**cfg, "epochs": epochs}
    selection, data = _splits(problem, cfg["selection"]), _splits(problem, cfg["seeds"])
    tuning = {arm: _tune(problem, arm, selection, cfg) for arm in ARMS}
    runs = {}
    for arm, t in tuning.items():
        r = _sweep(problem, arm, data, cfg["seeds"], epochs, t["setting"], test=True)
        runs[arm] = {k: np.where(np.isfinite(a), a, np.nan).tolist() for k, a in r.history.items()
                     if k in ("val_loss", "test_loss", "test_accuracy")}
        runs[arm]["diverged"] = r.diverged.tolist()
    per_epoch = data["train"][0].shape[1] // BATCH
    costs = _step_costs(problem, {a: t["setting"] for a, t in tuning.items()}, data, cfg["rounds"], cfg["reps"])
    return {"epochs": epochs, "steps_per_epoch": per_epoch, "budget_steps": epochs * per_epoch,
            "tuning": tuning, "runs": runs, "arms": _analyse(runs, per_epoch), "step_cost": costs}


TESTED = {"kfac": "K-FAC", "gauss_newton": "Gauss-Newton"}  # arms tested against Adam


def _claim_series(res: dict, arm: str) -> list:
    """(claim, per-seed log-ratio to Adam, reference, seeds that never reached) of one arm."""
    k, a, budget = res["arms"][arm], res["arms"]["adam"], res["budget_steps"]
    steps = lambda xs: np.log([budget if s is None else s for s in xs])
    never = sum(s is None for s in k["steps_to_adam_val"])
    val = steps(k["steps_to_adam_val"]) - steps(a["steps_to_adam_val"])
    wall = val + np.log(res["step_cost"]["ratio_to_adam"][arm])
    log = lambda key: np.log(k[key]) - np.log(a[key])
    goals = [("goal: steps <= 0.5x Adam's", val, GOALS["steps"], never),
             ("goal: wall-clock <= 0.8x Adam's", wall, GOALS["wall-clock"], never)] if arm == "kfac" else []
    return [("steps to Adam's best validation loss", val, 1.0, never), *goals[:1],
            ("wall-clock to Adam's best validation loss", wall, 1.0, never), *goals[1:],
            ("steps to Adam's test loss at its chosen step",
             steps(k["steps_to_adam_test"]) - steps(a["steps_to_adam_test"]), 1.0,
             sum(s is None for s in k["steps_to_adam_test"])),
            ("test loss at the validation-chosen step", log("test_loss_at_choice"), 1.0, 0),
            ("test loss at the end of the budget", log("test_loss_final"), 1.0, 0)]


def _claims(problems: dict) -> list[dict]:
    """K-FAC and Gauss-Newton against Adam per problem: per-seed log-ratios against 1 (and K-FAC's
    against the goals), Holm over all."""
    rows = []
    for name, res in problems.items():
        for arm in TESTED:
            for claim, d, ref, n in _claim_series(res, arm):
                c = paired(d, np.full(len(d), np.log(ref)))
                m = c.mean + np.log(ref)  # the mean log-ratio itself
                rows.append({"problem": name, "arm": arm, "claim": claim, "reference": ref,
                             "ratio": float(np.exp(m)),
                             "ci95": [float(np.exp(m - c.half_width)), float(np.exp(m + c.half_width))],
                             "p_value": c.p_value, "below": c.losses, "ties": c.ties, "above": c.wins, "n": c.n,
                             "never_reached": int(n), "per_seed": np.exp(d).tolist()})
    for row, p in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = p
        row["verdict"] = _verdict(row)
    return rows


def _verdict(row: dict) -> str:
    side, who = ("below" if row["ratio"] < row["reference"] else "above"), TESTED[row["arm"]]
    if row["claim"].startswith("goal"):
        if row["never_reached"]:
            return f"not met: {who} never reached the level on {row['never_reached']} of {row['n']} seeds"
        if row["p_holm"] < 0.05:
            return "met" if side == "below" else "not met"
        return f"not established: the interval spans {row['reference']:g}"
    if row["p_holm"] < 0.05:
        return f"{who} {side} Adam"
    return f"not distinguishable from 1; the interval allows {row['ci95'][0]:.2f}-{row['ci95'][1]:.2f}"


def run(quick: bool) -> dict:
    cfg = QUICK if quick else FULL
    with threadpool_limits(1, user_api="blas"):
        problems = {name: _problem(name, cfg) for name in cfg["problems"]}
    return {"batch_size": BATCH, "selection_seeds": list(cfg["selection"]), "seeds": list(cfg["seeds"]),
            "plateau_tol": PLATEAU_TOL, "goals": GOALS, "problems": problems, "claims": _claims(problems)}


def _median(values) -> str:
    got = [a for a in values if a is not None]
    never = len(values) - len(got)
    return (f"{np.median(got):.0f}" if got else "never") + (f" ({never} never)" if never and got else "")


def _mean(values, digits: int = 4) -> str:
    m, _, half, _ = mean_ci(values)
    return f"{m:.{digits}g} ± {half:.2g}"


def _tuning_text(t: dict) -> str:
    edge = [f"{k} on the grid's edge ({t['notes'][k] or 'no note'})" for k, e in t["at_edge"].items() if e]
    notes = [f"{k}: {n}" for k, n in t["notes"].items() if n and not t["at_edge"][k]]
    grids = "; ".join(f"{s['setting']} {[f'{g:g}' for g in s['grid']]} with {s['held'] or 'nothing'} held"
                      for s in t["searches"])
    return (", ".join(edge + notes) or "interior") + f". Scored: {grids}" + (
        "" if t["converged"] else "; the passes did not settle")


def _problem_lines(name: str, res: dict) -> list[str]:
    cost, rows = res["step_cost"], []
    for arm, a in res["arms"].items():
        t, pl = res["tuning"][arm], a["plateau"]
        acc = _mean(a["test_accuracy_at_choice"], 3) if "test_accuracy_at_choice" in a else "-"
        rows.append([arm, ", ".join(f"{k} {v:g}" for k, v in t["setting"].items()),
                     _mean(a["test_loss_at_choice"]), acc, _mean(a["test_loss_final"]),
                     _median(a["steps_to_adam_val"]), _median(a["steps_to_adam_test"]),
                     f"{1e3 * cost['seconds'][arm]:.3g}",
                     f"{cost['ratio_to_adam'][arm]:.2f} [{cost['ratio_quartiles'][arm][0]:.2f}, "
                     f"{cost['ratio_quartiles'][arm][1]:.2f}]",
                     ("yes" if pl["plateaued"] else "**no**") + f" ({pl['gain']:+.3f} ± {pl['ci95']:.3f})",
                     sum(d > 0 for d in res["runs"][arm]["diverged"])])
    lines = [f"## {name}: {res['epochs']} epochs = {res['budget_steps']} steps ({res['steps_per_epoch']} a epoch)",
             "", table(["arm", "setting", "test loss at val-chosen step", "test accuracy there", "final test loss",
                        "steps to Adam's best val (median)", "steps to Adam's test level (median)", "ms / step",
                        "step cost / Adam's [quartiles]", "plateau (log val gain)", "diverged"], rows), ""]
    lines += [f"- {arm} tuning: {_tuning_text(t)}." for arm, t in res["tuning"].items()]
    return lines + [""]


def _claims_lines(claims: list[dict]) -> list[str]:
    rows = [[c["problem"], TESTED[c["arm"]], c["claim"], f"{c['ratio']:.3g} [{c['ci95'][0]:.3g}, {c['ci95'][1]:.3g}]",
             f"{c['p_value']:.2g}", f"{c['p_holm']:.2g}", f"{c['below']}/{c['ties']}/{c['above']}",
             c["never_reached"], c["verdict"]] for c in claims]
    return ["## K-FAC and Gauss-Newton against Adam, paired over the reported seeds (Holm over every row)", "",
            "Ratio: the arm's over Adam's, the geometric mean over seeds with its 95% t-interval (of the mean "
            "log-ratio); p: paired t-test of the mean log-ratio against the row's reference (1, or the goal); "
            "seeds below/tied/above the reference. A seed where the arm never reached the level counts the "
            "budget's steps (a lower bound). Wall-clock is steps × the median per-step cost of this run's "
            "interleaved timing, so its interval leaves out the timing's own spread (the quartiles above).", "",
            table(["problem", "arm", "claim", "ratio [95%]", "p", "p Holm", "below/tie/above", "never", "verdict"], rows),
            ""]


def _draw_curves(ax, res: dict, name: str):
    per_epoch = res["steps_per_epoch"]
    for arm, r in res["runs"].items():
        logs = np.log(np.asarray(r["val_loss"], np.float64))
        steps = per_epoch * np.arange(1, logs.shape[1] + 1)
        stats = [mean_ci(logs[:, e]) for e in range(logs.shape[1])]
        mean, half = np.array([s[0] for s in stats]), np.nan_to_num(np.array([s[2] for s in stats]))
        line, = ax.plot(steps, np.exp(mean), label=arm, linewidth=1.8)
        ax.fill_between(steps, np.exp(mean - half), np.exp(mean + half), color=line.get_color(), alpha=0.25,
                        linewidth=0)
        ax.plot(steps, np.exp(logs).T, color=line.get_color(), alpha=0.2, linewidth=0.5)
    ax.set(title=f"{name}: validation loss", xlabel="step", ylabel="loss (geometric mean, 95% band; seeds thin)",
           yscale="log")
    ax.legend()


def _draw_ratios(ax, claims: list[dict], name: str):
    shown = [c for c in claims if c["problem"] == name and c["arm"] == "kfac" and not c["claim"].startswith("goal")]
    for i, c in enumerate(shown):
        ax.scatter(np.full(len(c["per_seed"]), i) + np.linspace(-0.15, 0.15, len(c["per_seed"])), c["per_seed"],
                   s=12, color="0.4", zorder=3)
        ax.errorbar(i + 0.3, c["ratio"], yerr=[[c["ratio"] - c["ci95"][0]], [c["ci95"][1] - c["ratio"]]],
                    fmt="o", color="C3", capsize=3)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.axhline(GOALS["steps"], color="C0", linestyle="--", linewidth=0.8, label="goal 0.5× (steps)")
    ax.axhline(GOALS["wall-clock"], color="C1", linestyle=":", linewidth=0.8, label="goal 0.8× (wall-clock)")
    labels = ["steps to\nAdam's best val", "wall-clock to\nAdam's best val", "steps to\nAdam's test level",
              "test loss at\nval-chosen step", "final\ntest loss"]
    ax.set_xticks(range(len(shown)), labels[:len(shown)], fontsize=8)
    ax.set(yscale="log", title=f"{name}: K-FAC / Adam per seed (red: mean, 95%)")
    ax.legend(fontsize=8)


def report(results: dict):
    lines = [__doc__.strip().splitlines()[0], "",
             f"Selection seeds {results['selection_seeds']}, reported seeds {results['seeds']}, minibatches of "
             f"{results['batch_size']}; the protocol is in `experiments/second_order.py`'s docstring.", ""]
    for name, res in results["problems"].items():
        lines += _problem_lines(name, res)
    lines += _claims_lines(results["claims"])
    plt = figure()
    n = len(results["problems"])
    fig, axes = plt.subplots(2, n, figsize=(5.5 * n, 9), squeeze=False)
    for i, (name, res) in enumerate(results["problems"].items()):
        _draw_curves(axes[0, i], res, name)
        _draw_ratios(axes[1, i], results["claims"], name)
    fig.tight_layout()
    return "\n".join(lines), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
