"""Experiment 5: one hidden layer fitting a bounded continuous 1-D function; error against width,
and whether deeper networks reach the same error with fewer units.

Target: g(x) = sin(3x) + 0.3 cos(9x) on [−1, 1] (no noise). Training points: 128 evenly
spaced; validation: the 128 midpoints between them (to choose each network's learning
rate); test: 1024 fresh points (the reported RMSE). Full-batch Adam with cosine decay, a
long budget, 5 seeds per network, every (seed, learning rate) of a network trained as one
vmapped program. Each network's learning rate is the grid value with the best mean
validation RMSE, the grid extended while that value sits on its edge (the result says where
it could not be); errors are mean ± 95% t-interval over seeds.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from common import figure, interior_choice, main, pm, table
from fnn.stats import mean_ci


def target(x):
    return np.sin(3 * x) + 0.3 * np.cos(9 * x)


def _points():
    train = np.linspace(-1, 1, 128, dtype=np.float32)[:, None]
    val = (train[:-1] + train[1:]) / 2
    test = np.random.default_rng(0).uniform(-1, 1, (1024, 1)).astype(np.float32)
    return [(a, target(a).astype(np.float32)) for a in (train, val, test)]


def _fit(sizes, seeds, lrs, steps, points):
    """Trains every (seed, lr) of one architecture as one program: RMSE ``(S, L)`` on validation and test."""
    (x, v), (xv, vv), (xt, vt) = points
    net = fnn.MLP(sizes, "tanh")

    def one(key, lr):
        opt = optax.adam(optax.cosine_decay_schedule(lr, steps))
        update = fnn.make_update_fn(net, "mse", opt)
        params = fnn.init(key, net, "glorot")

        def body(carry, _):
            p, s = carry
            p, s, _ = update(p, s, x, v)
            return (p, s), None

        (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        rmse = lambda a, b: jnp.sqrt(jnp.mean((fnn.forward(net, params, a) - b) ** 2))
        return rmse(xv, vv), rmse(xt, vt)

    keys = jnp.stack([jax.random.split(jax.random.key(s), 3)[0] for s in seeds])
    run = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
    val, test = run(keys, jnp.asarray(lrs, jnp.float32))
    return np.asarray(val), np.asarray(test), net.num_params


def _arm(sizes, seeds, lrs, steps, points, extend=3) -> dict:
    tests = {}

    def score(values):
        val, test, _ = _fit(sizes, seeds, values, steps, points)
        tests.update({float(a): test[:, i] for i, a in enumerate(values)})
        return [(np.where(np.isfinite(val[:, i]), val[:, i], np.nan), int((~np.isfinite(val[:, i])).sum()))
                for i in range(len(values))]

    choice = interior_choice(score, lrs, larger_is_better=False, extend=extend)
    best = tests[choice["value"]]
    mean, _, half, _ = mean_ci(best)
    return {"sizes": list(sizes), "hidden_units": int(sum(sizes[1:-1])), "params": fnn.MLP(sizes, "tanh").num_params,
            "lr": choice["value"], "lr_grid": choice["grid"], "val_rmse_by_lr": choice["mean"],
            "lr_at_grid_edge": choice["at_edge"], "grid_note": choice["note"], "runner_up": choice["runner_up"],
            "test_rmse": best.tolist(), "rmse": mean, "ci95": half}


def run(quick: bool = False) -> dict:
    points = _points()
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    lrs = [1e-2] if quick else [3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    steps = 1500 if quick else 30000
    widths = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 32, 64]
    deep = [(4, 4)] if quick else [(4, 4), (8, 8), (4, 4, 4), (8, 8, 8), (16, 16)]
    shallow = [{"width": w, **_arm((1, w, 1), seeds, lrs, steps, points)} for w in widths]
    deeper = [{"widths": list(d), **_arm((1, *d, 1), seeds, lrs, steps, points)} for d in deep]
    logs = lambda rows: (np.log([r["width"] for r in rows]), np.log([r["rmse"] for r in rows]))
    slope_all = float(np.polyfit(*logs(shallow), 1)[0])
    wide = [r for r in shallow if r["width"] >= 4]
    slope_wide = float(np.polyfit(*logs(wide), 1)[0]) if len(wide) > 1 else None
    return {"steps": steps, "seeds": seeds, "lr_grid": lrs, "shallow": shallow, "deep": deeper,
            "loglog_slope": slope_all, "loglog_slope_from_width_4": slope_wide}


def _edge_lines(res) -> list[str]:
    lines = [f"- {' × '.join(map(str, r['sizes'][1:-1]))}: lr {r['lr']:.3g} of {[float(f'{a:.3g}') for a in r['lr_grid']]}"
             f": {r['grid_note'] or 'on the grid edge'}" for r in res["shallow"] + res["deep"]
             if r.get("lr_at_grid_edge") or r.get("grid_note")]
    return (["Learning rates on an edge of their grid, or otherwise noted:", ""] + lines + [""]) if lines else []


def report(res):
    n = len(res["seeds"])
    rows = [[f"1 × {s['width']}", s["hidden_units"], s["params"], s["lr"], pm(s["rmse"], s["ci95"], 4)]
            for s in res["shallow"]]
    rows += [[" × ".join(map(str, d["widths"])), d["hidden_units"], d["params"], d["lr"], pm(d["rmse"], d["ci95"], 4)]
             for d in res["deep"]]
    md = ["# Universal approximation", "",
          f"g(x) = sin(3x) + 0.3 cos(9x): 128 training points on [-1, 1], 127 validation midpoints, 1024 random "
          f"test points. tanh units, glorot init, full-batch Adam with cosine decay over {res['steps']} steps, "
          f"{n} seeds; each network's learning rate from {res['lr_grid']} by mean validation RMSE. Test RMSE is "
          "mean ± 95% t-interval over seeds.", "",
          table(["network", "hidden units", "parameters", "chosen lr", "test RMSE"], rows), "",
          *_edge_lines(res),
          f"Log-log slope of RMSE against width, one hidden layer: {res['loglog_slope']:.2f} over all widths"
          + (f", {res['loglog_slope_from_width_4']:.2f} from width 4 on." if res["loglog_slope_from_width_4"]
             is not None else "."), ""]
    monotone = all(a["rmse"] >= b["rmse"] for a, b in zip(res["shallow"], res["shallow"][1:]))
    md.append("- One hidden layer: the error " + ("falls at every step of width." if monotone else
              "does not fall at every step of width (see the table): more units help on the whole, not each time."))
    best_shallow = min(res["shallow"], key=lambda s: s["rmse"])
    for d in res["deep"]:
        match = [s for s in res["shallow"] if s["rmse"] <= d["rmse"]]
        md.append(f"- {' × '.join(map(str, d['widths']))} ({d['hidden_units']} units, {d['params']} parameters, "
                  f"RMSE {d['rmse']:.2g}): " + (f"a single layer needs {match[0]['width']} units "
                                                f"({match[0]['params']} parameters) to match it."
                                                if match else "no single layer tried here reaches that error."))
    fewer = [d for d in res["deep"] if d["rmse"] < best_shallow["rmse"]]
    md += ["", "The lecture's claim that deeper networks reach a given error with fewer units "
           + (f"holds here for {', '.join(' × '.join(map(str, d['widths'])) for d in fewer)}."
              if fewer else f"does not hold at this budget: the best single layer (1 × {best_shallow['width']}, RMSE "
              f"{best_shallow['rmse']:.2g}) beats every deeper network tried.")]
    plt = figure()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for rows_, label, marker in ((res["shallow"], "1 hidden layer", "o-"), (res["deep"], "2-3 hidden layers", "s")):
        ax.errorbar([r["hidden_units"] for r in rows_], [r["rmse"] for r in rows_],
                    yerr=np.nan_to_num([r["ci95"] for r in rows_]), fmt=marker, capsize=3, label=label)
    for d in res["deep"]:
        ax.annotate(" × ".join(map(str, d["widths"])), (d["hidden_units"], d["rmse"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="hidden units (total)", ylabel="test RMSE",
           title=f"error against size: mean and 95% CI over {n} seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
