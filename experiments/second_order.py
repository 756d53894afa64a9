"""Second-order optimizers against GD, momentum and Adam: digits classification and a digits autoencoder.

Each arm's learning rate (and damping, for K-FAC and Gauss-Newton) is tuned on a validation split
(seed 0: best validation loss within the step budget); the chosen settings then train every seed.
Reported per arm and seed: the best validation loss, and the steps and wall-clock seconds to reach
tuned Adam's best validation loss of the same seed (median and min–max over seeds, ratios to Adam
paired by seed). A second table times one step of each optimizer against an Adam step at the
digits size and at the MNIST size (784-1024-1024-10, B = 256), in interleaved rounds (medians),
K-FAC's eigendecompositions amortised over its inverse_update_period.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn.data import load
from fnn.splits import validation_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import figure, main, table  # noqa: E402

PROBLEMS = {  # name -> (sizes, activations, loss, targets are the inputs)
    "digits": ((64, 64, 10), ("relu", "identity"), "softmax_cross_entropy", False),
    "autoencoder": ((64, 32, 8, 32, 64), ("tanh", "tanh", "tanh", "identity"), "mse", True),
}
GRIDS = {  # name -> list of get_optimizer settings (learning rate first)
    "gd": [dict(lr=lr) for lr in (0.03, 0.1, 0.3)],
    "momentum": [dict(lr=lr) for lr in (0.01, 0.03, 0.1)],
    "adam": [dict(lr=lr) for lr in (1e-3, 3e-3, 1e-2)],
    "kfac": [dict(lr=lr, damping=d) for lr in (0.1, 0.3, 1.0) for d in (0.1, 1.0, 10.0)],
    # min_damping=1e-6: the Levenberg-Marquardt rule as the committed results ran it (fnn.gauss_newton's
    # floor was 1e-6 then; it is the initial damping now).
    "gauss_newton": [dict(lr=1.0, damping=d, cg_iterations=10, min_damping=1e-6) for d in (0.1, 1.0, 10.0)],
}


def _data(problem: str, seed: int, validation: bool):
    d = load("digits", seed)
    d = validation_split(d, seed=seed) if validation else d
    held_x, held_y = (d.x_val, d.y_val) if validation else (d.x_test, d.y_test)
    auto = PROBLEMS[problem][3]
    return (d.x_train, d.x_train if auto else d.y_train), (held_x, held_x if auto else held_y)


def _optimizer(name: str, setting: dict):
    s = dict(setting)
    return fnn.get_optimizer(name, s.pop("lr"), **s)


def _train(problem: str, name: str, setting: dict, seed: int, steps: int, every: int, validation: bool) -> dict:
    """Minibatch training (B = 64) for ``steps`` steps; the validation loss every ``every`` steps
    with the wall-clock seconds spent in steps so far (evaluation not counted)."""
    sizes, acts, loss, _ = PROBLEMS[problem]
    net = fnn.MLP(sizes, acts)
    (x, v), (hx, hv) = _data(problem, seed, validation)
    x, v, hx, hv = map(jnp.asarray, (x, v, hx, hv))
    opt = _optimizer(name, setting)
    step = fnn.make_update_step(net, loss, opt, donate=False)
    params = fnn.init(jax.random.key(seed), net, "he" if acts[0] == "relu" else "glorot")
    state, key = opt.init(params), jax.random.key(seed + 1000)
    evaluate = jax.jit(lambda p: fnn.risk(loss, fnn.forward(net, p, hx), hv))
    jax.block_until_ready(step(params, state, x[:64], v[:64], key))  # compile outside the clock
    curve, seconds, clock, n = [(0, 0.0, float(evaluate(params)))], [], 0.0, x.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    for t in range(1, steps + 1):
        i = order[((t - 1) * 64) % (n - 64):][:64]
        start = time.perf_counter()
        params, state, _ = jax.block_until_ready(step(params, state, x[i], v[i], jax.random.fold_in(key, t)))
        clock += time.perf_counter() - start
        if t % every == 0:
            value = float(evaluate(params))
            curve.append((t, clock, value if np.isfinite(value) else float("inf")))
    return {"steps": [c[0] for c in curve], "seconds": [c[1] for c in curve], "val_loss": [c[2] for c in curve]}


def _reach(run: dict, target: float):
    """(steps, seconds) at the first evaluation at or below ``target`` (None, None if never)."""
    for s, t, value in zip(run["steps"], run["seconds"], run["val_loss"]):
        if value <= target:
            return s, t
    return None, None


def _tune(problem: str, steps: int, every: int, grids: dict) -> dict:
    chosen = {}
    for name, grid in grids.items():
        scores = [min(_train(problem, name, s, 0, steps, every, True)["val_loss"]) for s in grid]
        chosen[name] = {"setting": grid[int(np.argmin(scores))], "grid": grid, "val_loss": scores}
    return chosen


def _compare(problem: str, chosen: dict, seeds, steps: int, every: int) -> dict:
    runs = {name: [_train(problem, name, c["setting"], s, steps, every, True) for s in seeds]
            for name, c in chosen.items()}
    targets = [min(r["val_loss"]) for r in runs["adam"]]
    out = {}
    for name, rs in runs.items():
        reached = [_reach(r, t) for r, t in zip(rs, targets)]
        adam = [_reach(r, t) for r, t in zip(runs["adam"], targets)]
        step_ratio = [a[0] / b[0] if a[0] else None for a, b in zip(reached, adam)]
        time_ratio = [a[1] / b[1] if a[0] else None for a, b in zip(reached, adam)]
        out[name] = {"setting": chosen[name]["setting"], "best_val_loss": [min(r["val_loss"]) for r in rs],
                     "steps_to_adam_best": [a[0] for a in reached], "seconds_to_adam_best": [a[1] for a in reached],
                     "step_ratio": step_ratio, "time_ratio": time_ratio, "curves": rs}
    return out


def _step_costs(sizes, batch: int, rounds: int, reps: int) -> dict:
    """Median seconds per step of each optimizer (interleaved rounds), and the ratio to Adam."""
    net = fnn.MLP(sizes, ("relu",) * (len(sizes) - 2) + ("identity",))
    kx, kv = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch, sizes[0]))
    v = jax.random.randint(kv, (batch,), 0, sizes[-1])
    arms = {"adam": fnn.get_optimizer("adam", 1e-3), "momentum": fnn.get_optimizer("momentum", 1e-2),
            "kfac (T=10)": fnn.get_optimizer("kfac", 0.1, damping=0.1, inverse_update_period=10),
            "kfac MC (T=10)": fnn.get_optimizer("kfac", 0.1, damping=0.1, inverse_update_period=10, mc_samples=1),
            "ggn_diag": fnn.get_optimizer("ggn_diag", 0.1), "gauss_newton (10 CG)": fnn.get_optimizer(
                "gauss_newton", 1.0, cg_iterations=10, cg_tol=1e-30)}
    params = fnn.init(jax.random.key(1), net, "he")
    steps = {k: jax.jit(fnn.make_update_fn(net, "softmax_cross_entropy", o)) for k, o in arms.items()}
    states = {k: o.init(params) for k, o in arms.items()}
    key = jax.random.key(2)
    for k in arms:
        jax.block_until_ready(steps[k](params, states[k], x, v, key))
    times = {k: [] for k in arms}
    for _ in range(rounds):
        for k in arms:
            start = time.perf_counter()
            for _ in range(reps):
                out = steps[k](params, states[k], x, v, key)
                states[k] = out[1]
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - start) / reps)
    median = {k: float(np.median(t)) for k, t in times.items()}
    return {"sizes": list(sizes), "batch": batch, "rounds": rounds, "steps_per_round": reps,
            "seconds": median, "ratio_to_adam": {k: m / median["adam"] for k, m in median.items()}}


def run(quick: bool) -> dict:
    steps, every, seeds = (20, 10, [0, 1]) if quick else (300, 10, [0, 1, 2, 3, 4])
    grids = {k: g[:1] for k, g in GRIDS.items()} if quick else GRIDS
    results = {"steps": steps, "eval_every": every, "seeds": seeds, "batch_size": 64, "problems": {}}
    for problem in PROBLEMS:
        chosen = _tune(problem, steps, every, grids)
        results["problems"][problem] = {"tuning": chosen, "arms": _compare(problem, chosen, seeds, steps, every)}
    costs = [((64, 64, 10), 64)] if quick else [((64, 64, 10), 64), ((784, 1024, 1024, 10), 256)]
    results["step_cost"] = [_step_costs(s, b, 2 if quick else 7, 1 if quick else 10) for s, b in costs]
    return results


def _summary(values):
    got = [a for a in values if a is not None]
    if not got:
        return "never"
    text = f"{np.median(got):.3g} [{min(got):.3g}, {max(got):.3g}]"
    return text + (f" ({len(values) - len(got)} never)" if len(got) < len(values) else "")


def report(results: dict):
    lines = [__doc__.strip().splitlines()[0], ""]
    for problem, res in results["problems"].items():
        rows = [[name, str(a["setting"]), _summary(a["best_val_loss"]), _summary(a["steps_to_adam_best"]),
                 _summary(a["step_ratio"]), _summary(a["time_ratio"])] for name, a in res["arms"].items()]
        lines += [f"## {problem} (steps {results['steps']}, seeds {results['seeds']}; median [min, max])", "",
                  table(["arm", "setting", "best val loss", "steps to Adam's best", "steps / Adam's",
                         "wall-clock / Adam's"], rows), ""]
    for cost in results["step_cost"]:
        lines += [f"## step cost, {'-'.join(map(str, cost['sizes']))}, B = {cost['batch']}", "",
                  table(["optimizer", "ms / step", "/ Adam"], [[k, 1e3 * s, cost["ratio_to_adam"][k]]
                                                            for k, s in cost["seconds"].items()]), ""]
    plt = figure()
    fig, axes = plt.subplots(1, len(results["problems"]), figsize=(11, 4))
    for ax, (problem, res) in zip(np.atleast_1d(axes), results["problems"].items()):
        for name, arm in res["arms"].items():
            curves = np.array([c["val_loss"] for c in arm["curves"]])
            ax.plot(arm["curves"][0]["steps"], np.median(curves, axis=0), label=name)
        ax.set(title=problem, xlabel="step", ylabel="validation loss (median over seeds)", yscale="log")
        ax.legend()
    fig.tight_layout()
    return "\n".join(lines), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
