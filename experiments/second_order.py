"""Second-order against first-order training: SGD, momentum, Adam, K-FAC and Gauss-Newton on digits classification, a digits autoencoder and MNIST-1D.

The autoencoder (64-32-8-32-64, tanh, MSE) reconstructs digits' raw pixels scaled to [0, 1], not
the standardised inputs of the classifiers: standardised with the training rows' statistics, a pixel
that is almost always 0 in a seed's training rows (standard deviation ~0.05) becomes a value of
~100 in the few validation rows where it is not, and those rows then dominate the squared error
(a first run had validation losses of 60-160 on two seeds against 9-20 on the others).

Per problem, minibatches of 64 (``fnn.sweep``: every run of an arm one vmapped program). Digits
(both problems) keeps one test split for every seed, selection and reported, so no test row is
seen in tuning; each seed draws its own training/validation split of the rest. MNIST-1D generates
each seed's data anew. Budgets: digits 60 epochs, the autoencoder 300, MNIST-1D 16 (it overfits
after ~300 steps, and one evaluation an epoch is 50 steps there: the times to a level are read
between evaluations, so their resolution is tens of steps).

- **Tuning, on selection seeds 100-102** (their own splits and initial weights, disjoint from the
  reported seeds): each arm's settings minimise the mean over those seeds of the best validation
  loss within the budget. A choice on a grid's edge extends the grid (``common.interior_choice``,
  at most 3 values); K-FAC's and Gauss-Newton's two settings (rate and damping) are tuned one at a
  time, the other held at its current choice, until a pass over both moves neither (a cross, not
  a joint grid).
- **Reported seeds 0-9**: the chosen settings train on each seed's training split; the validation
  and test loss are evaluated after every epoch. The plateau rule (``common.plateau`` on the log
  validation loss, tolerance 1%) is checked per arm.
- **Steps to Adam's level**, per seed: two levels, each within 1% (``LEVEL_TOL``) of a value of
  Adam's: its best validation loss, and its test loss at its validation-chosen epoch. Every arm's
  steps to a level, Adam's included, are the first crossing of its curve (linear in the log loss
  between evaluations; the first epoch's steps when already below at the first evaluation), so
  Adam's target is not the minimum of its own noisy curve that the others must then match. A run
  that never reaches a level is infinitely slow on that seed ("never"): medians count it so, and
  it is above every reference in the sign test.
- **Wall-clock = steps × the arm's median per-step cost ratio to Adam**, measured in this run as
  training runs a step (a jitted ``lax.scan`` over up to 50 minibatches, whole K-FAC refresh
  periods, compiled outside the clock), in 20 interleaved rounds along each arm's trajectory;
  not the wall-clock of the training runs (the CPU is shared) and without compile time. The
  per-step cost at other sizes is ``second_order_step_cost``'s.
- **Against Adam**, paired over the seeds: speed ratios (steps, wall-clock) by their median, a
  distribution-free order-statistic interval and the exact sign test; test-loss ratios by their
  geometric mean, t-interval and paired t-test. Two families, Holm within each: the primary one is
  the issue's goals for K-FAC (0.5× Adam's steps, 0.8× its wall-clock, on every problem); the
  secondary one holds every other K-FAC and Gauss-Newton comparison. SGD and momentum are shown
  without a test.

The arms: plain minibatch SGD, heavy-ball momentum (0.9), Adam, K-FAC (``fnn.kfac`` at its defaults:
KFLR factors in a running average, ``(A ⊗ G + λI)⁻¹`` exactly through the factors'
eigendecompositions, refreshed every 5 steps) and Gauss-Newton
(``fnn.gauss_newton``: 10 conjugate-gradient steps on the GGN per update, Levenberg-Marquardt
damping adapted from its tuned starting value, which is also its floor; 10 is a cap, as CG stops
early at a relative residual of 1e-5). Not run: K-FAC with momentum, the KL norm constraint or
adaptive damping (kfac-jax's standard recipe uses all three), and schedules for any arm.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # K-FAC's eigh in XLA calls OpenBLAS: one thread

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import binom, binomtest  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fnn  # noqa: E402
from fnn.analysis.stats import holm, mean_ci, paired  # noqa: E402
from fnn.data import load, validation_split  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import figure, interior_choice, main, plateau, table  # noqa: E402

BATCH, PLATEAU_TOL = 64, 0.01
LEVEL_TOL = 0.01  # a level is reached within 1% of Adam's value
DIGITS_PIXEL_MAX = 16.0  # digits' raw pixels are 0..16
PROBLEMS = {
    "digits": dict(data="digits", sizes=(64, 64, 10), acts=("relu", "identity"), loss="softmax_cross_entropy",
                   auto=False, init="he", epochs=60),
    "autoencoder": dict(data="digits", sizes=(64, 32, 8, 32, 64), acts=("tanh",) * 3 + ("identity",), loss="mse",
                        auto=True, init="glorot", epochs=300),
    "mnist1d": dict(data="mnist1d", sizes=(40, 100, 100, 10), acts=("relu", "relu", "identity"),
                    loss="softmax_cross_entropy", auto=False, init="he", epochs=16),
}
ARMS = {  # name -> (optimizer, {setting: starting grid}, fixed settings)
    "sgd": ("sgd", {"lr": (0.03, 0.1, 0.3)}, {}),
    "momentum": ("momentum", {"lr": (0.01, 0.03, 0.1)}, {}),
    "adam": ("adam", {"lr": (1e-3, 3e-3, 1e-2)}, {}),
    "kfac": ("kfac", {"lr": (0.1, 0.3, 1.0), "damping": (0.1, 1.0, 10.0)}, {}),
    "gauss_newton": ("gauss_newton", {"lr": (0.3, 1.0, 3.0), "damping": (0.1, 1.0, 10.0)}, {"cg_iterations": 10}),
}
FULL = dict(problems=tuple(PROBLEMS), selection=(100, 101, 102), seeds=tuple(range(10)), extend=3, rounds=20,
            reps=50, epochs=None)
QUICK = dict(problems=("digits",), selection=(100, 101), seeds=(0, 1), extend=0, rounds=2, reps=5, epochs=3)
GOALS = {"steps": 0.5, "wall-clock": 0.8}


def _splits(problem: str, seeds) -> dict:
    """``train``, ``val`` and ``test`` ``(x, v)`` with a leading seed axis. Digits: one test split
    for every seed (selection and reported), each seed its own training/validation split of the
    rest; MNIST-1D: each seed its own generated data."""
    p, out = PROBLEMS[problem], {"train": ([], []), "val": ([], []), "test": ([], [])}
    for s in seeds:
        d = validation_split(load(p["data"], 0 if p["data"] == "digits" else s), seed=s)
        for part in out:
            x, y = getattr(d, f"x_{part}"), getattr(d, f"y_{part}")
            if p["auto"]:  # pixels in [0, 1], as input and target (see the module docstring)
                x = ((x * d.x_std + d.x_mean) / DIGITS_PIXEL_MAX).astype(np.float32)
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
    """Per arm and seed: the validation-chosen epoch and its test loss, the final test loss, and the
    steps to two levels set by Adam, each within ``LEVEL_TOL`` of Adam's: its best validation loss,
    and its test loss at its validation-chosen epoch. Adam's own steps are its first crossing of the
    same level by the same rule (so every arm, Adam included, is timed alike); plateau."""
    val_a, test_a = (np.asarray(runs["adam"][k], np.float64) for k in ("val_loss", "test_loss"))
    pick = lambda v: np.nanargmin(np.where(np.isfinite(v), v, np.inf), axis=1)
    seeds = np.arange(val_a.shape[0])
    val_level = val_a[seeds, pick(val_a)] * (1 + LEVEL_TOL)
    test_level = test_a[seeds, pick(val_a)] * (1 + LEVEL_TOL)
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


def median_interval(values, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """The median of ``values`` (``inf`` allowed: a run that never reached) and the order-statistic
    interval ``(x_(k), x_(n+1−k))`` with the largest ``k`` whose coverage ``1 − 2·P(Bin(n, ½) < k)``
    is at least ``confidence`` (distribution-free); returns (median, low, high, coverage)."""
    x, n = np.sort(np.asarray(values, np.float64)), len(values)
    k = 1
    while k < n // 2 and 1 - 2 * binom.cdf(k, n, 0.5) >= confidence:
        k += 1
    return float(np.median(x)), float(x[k - 1]), float(x[n - k]), float(1 - 2 * binom.cdf(k - 1, n, 0.5))


def sign_test(ratios, reference: float) -> dict:
    """Seeds below / tied with / above ``reference`` and the two-sided exact sign test's p (ties dropped)."""
    r = np.asarray(ratios, np.float64)
    below, above = int(np.sum(r < reference)), int(np.sum(r > reference))
    p = binomtest(below, below + above, 0.5).pvalue if below + above else 1.0
    return {"below": below, "ties": len(r) - below - above, "above": above, "p_value": float(p)}


def _step_costs(problem: str, settings: dict, data: dict, rounds: int, reps: int) -> dict:
    """Median seconds per step of each arm, timed as training runs them: one jitted ``lax.scan``
    over ``reps`` minibatches of seed 0's training split (compiled outside the clock), along the
    arm's own trajectory, in interleaved rounds with the arms' order rotated; and each round's
    ratio to Adam's (median and quartiles)."""
    p = PROBLEMS[problem]
    net = fnn.MLP(p["sizes"], p["acts"])
    x, v = data["train"][0][0], data["train"][1][0]
    count = max(5, min(reps, x.shape[0] // BATCH) // 5 * 5)  # whole K-FAC refresh periods (5 steps)
    xs = jax.numpy.asarray(x[:count * BATCH].reshape(count, BATCH, -1))
    vs = jax.numpy.asarray(v[:count * BATCH].reshape(count, BATCH, *v.shape[1:]))
    params0, key = fnn.init(jax.random.key(0), net, p["init"]), jax.random.key(1)
    run, state = {}, {}
    for arm, s in settings.items():
        opt = fnn.get_optimizer(ARMS[arm][0], s["lr"], **ARMS[arm][2], **{k: a for k, a in s.items() if k != "lr"})
        step = fnn.make_update_step(net, p["loss"], opt, donate=False)
        body = lambda carry, batch, step=step: (tuple(step(*carry, *batch, key)[:2]), None)  # noqa: E731
        run[arm] = jax.jit(lambda carry, xs, vs, body=body: jax.lax.scan(body, carry, (xs, vs))[0])
        state[arm] = jax.block_until_ready(run[arm]((params0, opt.init(params0)), xs, vs))  # compiled here
    times = {arm: [] for arm in settings}
    names = list(settings)
    for r in range(rounds):
        for arm in names[r % len(names):] + names[:r % len(names)]:  # each arm first in turn
            start = time.perf_counter()
            state[arm] = jax.block_until_ready(run[arm](state[arm], xs, vs))
            times[arm].append((time.perf_counter() - start) / count)
    ratios = {arm: np.asarray(t) / np.asarray(times["adam"]) for arm, t in times.items()}
    return {"rounds": rounds, "steps_per_round": count, "seconds": {a: float(np.median(t)) for a, t in times.items()},
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
    """(claim, kind, per-seed ratio to Adam, reference) of one arm; a speed ratio is ``inf`` on a
    seed where the arm never reached the level."""
    k, a = res["arms"][arm], res["arms"]["adam"]
    steps = lambda xs: np.array([np.inf if s is None else s for s in xs])
    val = steps(k["steps_to_adam_val"]) / steps(a["steps_to_adam_val"])
    wall = val * res["step_cost"]["ratio_to_adam"][arm]
    test = steps(k["steps_to_adam_test"]) / steps(a["steps_to_adam_test"])
    loss = lambda key: np.asarray(k[key]) / np.asarray(a[key])
    goals = [("goal: steps <= 0.5x Adam's", "goal", val, GOALS["steps"]),
             ("goal: wall-clock <= 0.8x Adam's", "goal", wall, GOALS["wall-clock"])] if arm == "kfac" else []
    return [*goals, ("steps to Adam's best validation loss", "speed", val, 1.0),
            ("wall-clock to Adam's best validation loss", "speed", wall, 1.0),
            ("steps to Adam's test loss at its chosen step", "speed", test, 1.0),
            ("test loss at the validation-chosen step", "loss", loss("test_loss_at_choice"), 1.0),
            ("test loss at the end of the budget", "loss", loss("test_loss_final"), 1.0)]


def _claim_row(name: str, arm: str, claim: str, kind: str, ratios, ref: float) -> dict:
    """A speed or goal claim: median ratio, order-statistic interval, exact sign test (censored
    seeds are above any reference). A loss claim: geometric mean, t-interval, paired t-test."""
    row = {"problem": name, "arm": arm, "claim": claim, "kind": kind, "reference": ref, "n": len(ratios),
           "reached": int(np.isfinite(ratios).sum()), "per_seed": [float(r) for r in ratios]}
    if kind == "loss":
        c = paired(np.log(ratios), np.zeros(len(ratios)))
        row.update(summary="geometric mean", ratio=float(np.exp(c.mean)),
                   ci95=[float(np.exp(c.mean - c.half_width)), float(np.exp(c.mean + c.half_width))],
                   coverage=0.95, p_value=c.p_value, below=c.losses, ties=c.ties, above=c.wins)
    else:
        median, low, high, coverage = median_interval(ratios)
        row.update(summary="median", ratio=median, ci95=[low, high], coverage=coverage, **sign_test(ratios, ref))
    return row


def _claims(problems: dict) -> list[dict]:
    """K-FAC and Gauss-Newton against Adam per problem. Two families, Holm within each: the primary
    one is the issue's goals for K-FAC (steps and wall-clock, every problem); the secondary one
    is every other comparison with Adam."""
    rows = [_claim_row(name, arm, *series) for name, res in problems.items() for arm in TESTED
            for series in _claim_series(res, arm)]
    for family in ("goal", "other"):
        members = [r for r in rows if (r["kind"] == "goal") == (family == "goal")]
        for row, p in zip(members, holm([r["p_value"] for r in members])):
            row.update(family="primary" if family == "goal" else "secondary", p_holm=p, family_size=len(members))
            row["verdict"] = _verdict(row)
    return rows


def _verdict(row: dict) -> str:
    who, ref, side = TESTED[row["arm"]], row["reference"], row["ratio"] < row["reference"]
    significant = row["p_holm"] < 0.05
    if row["kind"] == "goal":
        if significant:
            return "met" if side else "not met"
        return f"not established (Holm p {row['p_holm']:.2g})"
    word = {"speed": ("faster than Adam", "slower than Adam"), "loss": ("lower test loss", "higher test loss")}
    if significant:
        return f"{who} {word[row['kind']][0 if side else 1]}"
    excludes = row["ci95"][1] < ref or row["ci95"][0] > ref
    return ("interval excludes 1 without adjustment, not after Holm" if excludes
            else "not distinguishable from 1")


def run(quick: bool) -> dict:
    cfg = QUICK if quick else FULL
    with threadpool_limits(1, user_api="blas"):
        problems = {name: _problem(name, cfg) for name in cfg["problems"]}
    return {"batch_size": BATCH, "selection_seeds": list(cfg["selection"]), "seeds": list(cfg["seeds"]),
            "plateau_tol": PLATEAU_TOL, "goals": GOALS, "problems": problems, "claims": _claims(problems)}


def _median(values) -> str:
    """The median steps over seeds, a seed that never reached counting as infinite, and how many reached."""
    steps = [np.inf if a is None else a for a in values]
    m, reached = np.median(steps), int(np.isfinite(steps).sum())
    return ("never" if not np.isfinite(m) else f"{m:.0f}") + f" ({reached}/{len(steps)})"


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
                        "steps to Adam's best val: median (reached)", "steps to Adam's test level: median (reached)",
                        "ms / step",
                        "step cost / Adam's [quartiles]", "plateau (log val gain)", "diverged"], rows), ""]
    lines += [f"- {arm} tuning: {_tuning_text(t)}." for arm, t in res["tuning"].items()]
    return lines + [""]


def _fmt(x: float) -> str:
    return "never" if not np.isfinite(x) else f"{x:.3g}"


def _claims_lines(claims: list[dict]) -> list[str]:
    rows = [[c["family"], c["problem"], TESTED[c["arm"]], c["claim"],
             f"{c['summary']} {_fmt(c['ratio'])} [{_fmt(c['ci95'][0])}, {_fmt(c['ci95'][1])}]",
             f"{c['reached']}/{c['n']}" if c["kind"] != "loss" else "-",
             f"{c['below']}/{c['ties']}/{c['above']}", f"{c['p_value']:.2g}", f"{c['p_holm']:.2g}", c["verdict"]]
            for c in sorted(claims, key=lambda c: c["family"] != "primary")]
    primary = [c for c in claims if c["family"] == "primary"]
    return ["## K-FAC and Gauss-Newton against Adam, paired over the reported seeds", "",
            f"Two families, Holm within each: the **primary** one is the issue's goals for K-FAC ({len(primary)} "
            "rows: steps ≤ 0.5× and wall-clock ≤ 0.8× Adam's, every problem), the secondary one every other "
            "comparison. Ratios are the arm's over Adam's on the same seed. A level is reached within "
            f"{LEVEL_TOL:.0%} of Adam's value, and Adam's own steps are its first crossing of the same level "
            "(interpolated in log loss between the once-an-epoch evaluations). **Speed rows** (steps, "
            "wall-clock): the median ratio over seeds with a distribution-free order-statistic interval (its "
            "exact coverage, ≥ 95%, is in the json), a seed where the arm never reached the level counting as "
            "infinitely slow ('never'), and the exact sign test of the ratios against the reference (1, or the "
            "goal). **Loss rows**: the geometric mean ratio with its 95% t-interval and the paired t-test of the "
            "log-ratios. Wall-clock = steps × this run's median per-step cost ratio (the step costs above; their "
            "spread is not carried into the interval). Seeds: below/tied/above the reference.", "",
            table(["family", "problem", "arm", "claim", "ratio [95%]", "reached", "below/tie/above", "p", "p Holm",
                   "verdict"], rows), ""]


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
    """Per claim, each tested arm's per-seed ratios (dots; open at the top: never reached) and its
    summary (median or geometric mean) with its interval."""
    shown_all = [c for c in claims if c["problem"] == name and c["kind"] != "goal"]
    finite = [r for c in shown_all for r in c["per_seed"] + c["ci95"] if np.isfinite(r) and r > 0]
    top = 2 * max(finite + [1.0])
    for j, (arm, who) in enumerate(TESTED.items()):
        shown = [c for c in shown_all if c["arm"] == arm]
        colour = ("C3", "C4")[j]
        for i, c in enumerate(shown):
            x = i + (j - 0.5) * 0.42
            ys = np.asarray(c["per_seed"])
            xs = x + np.linspace(-0.08, 0.08, len(ys))
            ax.scatter(xs[np.isfinite(ys)], ys[np.isfinite(ys)], s=8, color=colour, alpha=0.5, linewidth=0, zorder=3)
            ax.scatter(xs[~np.isfinite(ys)], np.full((~np.isfinite(ys)).sum(), top), s=14, facecolors="none",
                       edgecolors=colour, zorder=3)
            mid, low, high = (min(a, top) for a in (c["ratio"], *c["ci95"]))
            ax.errorbar(x + 0.13, mid, yerr=[[mid - low], [high - mid]], fmt="o", color=colour, capsize=3,
                        markersize=4, label=who if i == 0 else None)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.hlines([GOALS["steps"], GOALS["wall-clock"]], [-0.5, 0.5], [0.5, 1.5], colors=["C0", "C1"],
              linestyles=["--", ":"], linewidth=1.0, label="K-FAC's goals (0.5× steps, 0.8× wall-clock)")
    labels = ["steps to\nAdam's\nbest val", "wall-clock\nto Adam's\nbest val", "steps to\nAdam's\ntest level",
              "test loss\nat val\nchoice", "final\ntest loss"]
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set(yscale="log", ylabel="ratio to Adam (log)",
           title=f"{name}: over Adam per seed (open: never) and median or mean, 95%")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)


def report(results: dict):
    lines = [__doc__.strip().splitlines()[0], "",
             f"Selection seeds {results['selection_seeds']}, reported seeds {results['seeds']}, minibatches of "
             f"{results['batch_size']}; the protocol is in `experiments/second_order.py`'s docstring.", "",
             "**K-FAC's goals** (the primary family; median ratio to Adam over the seeds, its interval, seeds "
             "that reached Adam's level, the verdict after Holm):", ""]
    lines += [f"- {c['problem']}, {c['claim'][len('goal: '):]}: {_fmt(c['ratio'])} [{_fmt(c['ci95'][0])}, "
              f"{_fmt(c['ci95'][1])}], reached {c['reached']}/{c['n']}: **{c['verdict']}**"
              for c in results["claims"] if c["family"] == "primary"]
    lines.append("")
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
