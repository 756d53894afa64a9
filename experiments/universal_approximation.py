"""Experiment 5: one hidden layer fitting a bounded continuous 1-D function; error against width,
and whether deeper networks reach the same error with fewer units.

Target: g(x) = sin(3x) + 0.3 cos(9x) on [−1, 1] (no noise). Training points: 128 evenly
spaced; validation: the 128 midpoints between them (to choose each network's learning
rate); test: 1024 fresh points (the reported RMSE). Full-batch Adam with cosine decay, a
long budget, 5 seeds per network, every (seed, learning rate) of a network trained as one
vmapped program. Each network's learning rate is the grid value with the best mean
validation RMSE, the grid extended while that value sits on its edge (the result says where
it could not be); errors are mean ± 95% t-interval over seeds. The test RMSE is recorded at
100 points of training (the curves are stored and drawn) and the plateau rule is applied to
log10 of it (with cosine decay the last steps are small, so a plateau there is partly the
schedule's). A capacity reference separates approximation from optimisation: for each width
of one hidden layer, the output layer fitted by least squares in float64 on frozen random tanh
features (the net's own glorot init, and features with slopes in ±10 and centres spread over
[−1, 1]); any 1 × W net can represent that fit, so a trained error far above it is an
optimisation floor, not a limit of the width.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from common import figure, interior_choice, main, plateau, pm, table
from fnn.analysis.stats import holm, mean_ci, paired

CHECKPOINTS = 100  # test RMSE recorded this many times over training


def target(x):
    return np.sin(3 * x) + 0.3 * np.cos(9 * x)


def _points():
    train = np.linspace(-1, 1, 128, dtype=np.float32)[:, None]
    val = (train[:-1] + train[1:]) / 2
    test = np.random.default_rng(0).uniform(-1, 1, (1024, 1)).astype(np.float32)
    return [(a, target(a).astype(np.float32)) for a in (train, val, test)]


def _fit(sizes, seeds, lrs, steps, points):
    """Trains every (seed, lr) of one architecture as one program: RMSE ``(S, L)`` on validation and
    test, and the test RMSE ``(S, L, CHECKPOINTS)`` along training."""
    (x, v), (xv, vv), (xt, vt) = points
    net = fnn.MLP(sizes, "tanh")

    def one(key, lr):
        opt = optax.adam(optax.cosine_decay_schedule(lr, steps))
        update = fnn.make_update_fn(net, "mse", opt)
        params = fnn.init(key, net, "glorot")
        rmse = lambda p, a, b: jnp.sqrt(jnp.mean((fnn.forward(net, p, a) - b) ** 2))

        def body(carry, _):
            p, s = carry
            p, s, _ = update(p, s, x, v)
            return (p, s), None

        def chunk(carry, _):
            carry, _ = jax.lax.scan(body, carry, None, length=steps // CHECKPOINTS)
            return carry, rmse(carry[0], xt, vt)

        (params, _), curve = jax.lax.scan(chunk, (params, opt.init(params)), None, length=CHECKPOINTS)
        return rmse(params, xv, vv), rmse(params, xt, vt), curve

    keys = jnp.stack([jax.random.split(jax.random.key(s), 3)[0] for s in seeds])
    run = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
    val, test, curves = run(keys, jnp.asarray(lrs, jnp.float32))
    return np.asarray(val), np.asarray(test), np.asarray(curves)


def capacity(width, seeds, points) -> dict:
    """Test RMSE of the output layer fitted by float64 least squares on frozen random tanh features
    of one hidden layer of ``width`` units: the net's own glorot init, and slopes in ±10 with
    centres in [−1, 1]. Per seed; any 1 × ``width`` net can represent these fits."""
    (x, v), _, (xt, vt) = [(np.float64(a), np.float64(b)) for a, b in points]
    out = {"glorot_init": [], "spread": []}
    for seed in seeds:
        net = fnn.MLP((1, width, 1), "tanh")
        first = fnn.init(jax.random.split(jax.random.key(seed), 3)[0], net, "glorot")[0]
        rng = np.random.default_rng(seed)
        slope = rng.uniform(-10, 10, (1, width))
        spread = (slope, -slope[0] * rng.uniform(-1, 1, width))
        for name, (w, b) in (("glorot_init", (np.float64(first["W"]), np.float64(first["b"]))), ("spread", spread)):
            feats = lambda a: np.hstack([np.tanh(a @ w + b), np.ones((len(a), 1))])
            coef = np.linalg.lstsq(feats(x), v, rcond=None)[0]
            out[name].append(float(np.sqrt(np.mean((feats(xt) @ coef - vt) ** 2))))
    return out


def _arm(sizes, seeds, lrs, steps, points, extend=3) -> dict:
    tests = {}

    def score(values):
        val, test, curves = _fit(sizes, seeds, values, steps, points)
        tests.update({float(a): (test[:, i], curves[:, i]) for i, a in enumerate(values)})
        return [(np.where(np.isfinite(val[:, i]), val[:, i], np.nan), int((~np.isfinite(val[:, i])).sum()))
                for i in range(len(values))]

    choice = interior_choice(score, lrs, larger_is_better=False, extend=extend)
    best, curves = tests[choice["value"]]
    mean, _, half, _ = mean_ci(best)
    return {"sizes": list(sizes), "hidden_units": int(sum(sizes[1:-1])), "params": fnn.MLP(sizes, "tanh").num_params,
            "lr": choice["value"], "lr_grid": choice["grid"], "val_rmse_by_lr": choice["mean"],
            "lr_at_grid_edge": choice["at_edge"], "grid_note": choice["note"], "runner_up": choice["runner_up"],
            "test_rmse": best.tolist(), "rmse": mean, "ci95": half, "test_curves": curves.tolist(),
            "plateau": plateau(np.log10(curves), larger_is_better=False, tol=0.01)}


def depth_comparisons(shallow, deep) -> list[dict]:
    """Each deeper net against one hidden layer, log10 test RMSE paired over seeds (deep − shallow, in
    decades; negative: the deeper net's error is lower): against the single layer with the most
    parameters not above the deeper net's (the pairing paired_reanalysis uses) and against the widest
    single layer (more units than any deeper net here). p (Holm) is adjusted over all these rows."""
    widest, rows = max(shallow, key=lambda s: s["width"]), []
    for d in deep:
        matched = max((s for s in shallow if s["params"] <= d["params"]), key=lambda s: s["params"], default=None)
        for s, pairing in ((matched, "parameters matched"), (widest, "widest single layer")):
            if s is None or any(r["deep"] == d["widths"] and r["shallow_width"] == s["width"] for r in rows):
                continue
            diff = np.log10(d["test_rmse"]) - np.log10(s["test_rmse"])
            c = paired(np.log10(d["test_rmse"]), np.log10(s["test_rmse"]))
            rows.append({"deep": d["widths"], "deep_units": d["hidden_units"], "deep_params": d["params"],
                         "shallow_width": s["width"], "shallow_params": s["params"], "pairing": pairing,
                         "decades": c.mean, "ci95": c.half_width, "p_value": c.p_value, "n": c.n,
                         "deep_lower": int((diff < 0).sum()), "deep_higher": int((diff > 0).sum())})
    for r, p in zip(rows, holm([r["p_value"] for r in rows])):
        r["p_holm"] = p
    return rows


def run(quick: bool = False) -> dict:
    points = _points()
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    lrs = [1e-2] if quick else [3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    steps = 1500 if quick else 30000
    widths = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 32, 64]
    deep = [(4, 4)] if quick else [(4, 4), (8, 8), (4, 4, 4), (8, 8, 8), (16, 16)]
    shallow = [{"width": w, **_arm((1, w, 1), seeds, lrs, steps, points), "capacity": capacity(w, seeds, points)}
               for w in widths]
    for s in shallow:  # trained − capacity reference (the better of the two feature sets), log10 RMSE paired
        ref = np.minimum(s["capacity"]["glorot_init"], s["capacity"]["spread"])
        c = paired(np.log10(s["test_rmse"]), np.log10(ref))
        s["trained_minus_capacity"] = {"decades": c.mean, "ci95": c.half_width, "p_value": c.p_value,
                                       "wins": c.wins, "losses": c.losses}
    deeper = [{"widths": list(d), **_arm((1, *d, 1), seeds, lrs, steps, points)} for d in deep]
    logs = lambda rows: (np.log([r["width"] for r in rows]), np.log([r["rmse"] for r in rows]))
    slope_all = float(np.polyfit(*logs(shallow), 1)[0])
    wide = [r for r in shallow if r["width"] >= 4]
    slope_wide = float(np.polyfit(*logs(wide), 1)[0]) if len(wide) > 1 else None
    return {"steps": steps, "seeds": seeds, "lr_grid": lrs, "shallow": shallow, "deep": deeper,
            "target_rms": float(np.sqrt(np.mean(points[2][1].astype(np.float64) ** 2))),
            "loglog_slope": slope_all, "loglog_slope_from_width_4": slope_wide,
            "depth_comparisons": depth_comparisons(shallow, deeper)}


def _edge_lines(res) -> list[str]:
    lines = [f"- {' × '.join(map(str, r['sizes'][1:-1]))}: lr {r['lr']:.3g} of {[float(f'{a:.3g}') for a in r['lr_grid']]}"
             f": {r['grid_note'] or 'on the grid edge'}" for r in res["shallow"] + res["deep"]
             if r.get("lr_at_grid_edge") or r.get("grid_note")]
    return (["Learning rates on an edge of their grid, or otherwise noted:", ""] + lines + [""]) if lines else []


def _capacity_lines(res) -> list[str]:
    rows, verdicts = [], []
    for s in res["shallow"]:
        cap, d = s["capacity"], s["trained_minus_capacity"]
        ref = np.minimum(cap["glorot_init"], cap["spread"])
        rows.append([f"1 × {s['width']}", f"{s['rmse']:.2g}", f"{np.mean(cap['glorot_init']):.2g}",
                     f"{np.mean(cap['spread']):.2g}", f"{d['decades']:+.2f} ± {d['ci95']:.2f}"])
        optimisation = d["decades"] - d["ci95"] > np.log10(2)  # trained ≥ 2× the reference, paired 95%
        verdicts.append((s["width"], optimisation, float(np.mean(ref))))
    opt = [w for w, o, _ in verdicts if o]
    return ["Capacity reference, one hidden layer: the output layer fitted by float64 least squares on frozen "
            "random tanh features (the net's own glorot init; slopes uniform in ±10 with centres in [−1, 1]), test "
            "RMSE mean over seeds; and the trained net's log10 test RMSE minus that of the better reference, paired "
            "over seeds (mean ± 95% interval).", "",
            table(["network", "trained", "LS on glorot-init features", "LS on spread features",
                   "trained − reference (decades)"], rows), "",
            (f"Widths {', '.join(map(str, opt))}: the trained error is more than 2× the reference's (the whole 95% "
             "interval), so a 1 × W net of that width can represent g far better than training found: there the "
             "error is an optimisation floor, not a limit of the width." if opt else
             "At no width is the trained error more than 2× the reference's (95% interval): the trained errors are "
             "not shown to be an optimisation floor."), ""]


def _grid_text(res) -> str:
    r3 = lambda a: float(f"{a:.3g}")
    base, arms = [r3(a) for a in res["lr_grid"]], res["shallow"] + res["deep"]
    used = sorted({r3(a) for r in arms for a in r["lr_grid"]})
    grown = [" × ".join(map(str, r["sizes"][1:-1] if len(r["sizes"]) > 3 else (1, r["sizes"][1]))) for r in arms if [r3(a) for a in r["lr_grid"]] != base]
    return (f"{used} (the grid {base}, extended with {[a for a in used if a not in base]} for {', '.join(grown)}, "
            "whose best value sat on its edge)" if grown else f"{base}")


def _depth_lines(res) -> list[str]:
    rows, arms, n = res["depth_comparisons"], res["shallow"] + res["deep"], len(res["seeds"])
    label = lambda r: f"{' × '.join(map(str, r['deep']))} − 1 × {r['shallow_width']}"
    table_rows = [[label(r), f"{r['deep_units']} / {r['shallow_width']}", f"{r['deep_params']} / {r['shallow_params']}",
                   r["pairing"], f"{r['decades']:+.2f} ± {r['ci95']:.2f}", f"{r['deep_lower']} of {r['n']}",
                   f"{r['p_value']:.2g}", f"{r['p_holm']:.2g}"] for r in rows]
    found = lambda sign: [label(r) for r in rows if r["p_holm"] < 0.05 and np.sign(r["decades"]) == sign]
    lower, higher = found(-1), found(1)
    unclear = [f"{label(r)} (unadjusted 95% interval {r['decades'] - r['ci95']:+.2f} to {r['decades'] + r['ci95']:+.2f} decades)"
               for r in rows if not r["p_holm"] < 0.05]
    waiting = sum(not r["plateau"]["plateaued"] for r in arms)
    claim = ("The lecture's claim that deeper networks reach a given error with fewer units, tested paired over the "
             f"{n} seeds with Holm over the {len(rows)} comparisons above: "
             + (f"the deeper net's error is distinguishably lower for {', '.join(lower)}" if lower
                else "no deeper net's error is distinguishably lower than a single layer's")
             + (f"; distinguishably higher for {', '.join(higher)}" if higher else "")
             + (f"; not distinguishable for {', '.join(unclear)}, which is not a finding that they are equal"
                if unclear else "") + ".")
    return ["Deeper against one hidden layer: log10 test RMSE, deeper − single layer, paired over seeds (mean ± 95% "
            "t-interval; negative: the deeper net's error is lower), against the single layer with the most parameters "
            "not above the deeper net's and against the widest single layer; p (Holm) over these rows only (the "
            "paired_reanalysis family is larger, so its Holm p differ).", "",
            table(["comparison", "units", "parameters", "pairing", "difference (decades)", "deeper lower on",
                   "paired t p", "p (Holm)"], table_rows), "", claim, "",
            f"This is a statement about this budget ({res['steps']} steps of Adam with cosine decay): {waiting} of "
            f"{len(arms)} networks had not plateaued (the plateau column), and where the capacity reference puts a "
            "single layer's error far above what its width can represent, that error is an optimisation floor; more "
            "or other training could change the comparison, which this run does not test."]


def report(res):
    n = len(res["seeds"])
    flat = lambda r: "yes" if r["plateau"]["plateaued"] else f"no ({r['plateau']['gain']:+.3f} decades)"
    rows = [[f"1 × {s['width']}", s["hidden_units"], s["params"], s["lr"], pm(s["rmse"], s["ci95"], 4), flat(s)]
            for s in res["shallow"]]
    rows += [[" × ".join(map(str, d["widths"])), d["hidden_units"], d["params"], d["lr"], pm(d["rmse"], d["ci95"], 4),
              flat(d)] for d in res["deep"]]
    md = ["# Universal approximation", "",
          f"g(x) = sin(3x) + 0.3 cos(9x): 128 training points on [-1, 1], 127 validation midpoints, 1024 random "
          f"test points. tanh units, glorot init, full-batch Adam with cosine decay over {res['steps']} steps, "
          f"{n} seeds; each network's learning rate by mean validation RMSE from {_grid_text(res)}. Test RMSE is "
          "mean ± 95% t-interval over seeds.", "",
          table(["network", "hidden units", "parameters", "chosen lr", "test RMSE", "plateau (log10 RMSE)"], rows),
          "", "'plateau': the last quarter of the 100 recorded test RMSEs improves on the quarter before by less "
          "than 0.01 decades (95% upper bound); under cosine decay the last steps are small, so this is partly the "
          "schedule's.", "", *_capacity_lines(res),
          *_edge_lines(res),
          f"Log-log slope of RMSE against width, one hidden layer: {res['loglog_slope']:.2f} over all widths"
          + (f", {res['loglog_slope_from_width_4']:.2f} from width 4 on." if res["loglog_slope_from_width_4"]
             is not None else "."), ""]
    monotone = all(a["rmse"] >= b["rmse"] for a, b in zip(res["shallow"], res["shallow"][1:]))
    md.append("- One hidden layer: the error " + ("falls at every step of width." if monotone else
              "does not fall at every step of width (see the table): more units help on the whole, not each time."))
    md.append("- By the means alone (no test; the paired tests follow):")
    for d in res["deep"]:
        match = [s for s in res["shallow"] if s["rmse"] <= d["rmse"]]
        md.append(f"  - {' × '.join(map(str, d['widths']))} ({d['hidden_units']} units, {d['params']} parameters, "
                  f"RMSE {d['rmse']:.2g}): " + (f"a single layer needs {match[0]['width']} units "
                                                f"({match[0]['params']} parameters) to match it."
                                                if match else "no single layer tried here reaches that error."))
    md += ["", *_depth_lines(res)]
    plt = figure()
    fig, (ax, cx) = plt.subplots(1, 2, figsize=(13, 4.8))
    ref = [np.mean(np.minimum(s["capacity"]["glorot_init"], s["capacity"]["spread"])) for s in res["shallow"]]
    ax.plot([s["hidden_units"] for s in res["shallow"]], ref, "k:", marker=".", label="capacity reference (LS, float64)")
    for i, r in enumerate(res["shallow"] + res["deep"]):
        c = np.asarray(r["test_curves"])
        steps = np.arange(1, c.shape[1] + 1) * res["steps"] / c.shape[1]
        cx.plot(steps, np.exp(np.log(c).mean(0)), color=f"C{i % 10}", ls="-" if "width" in r else "--",
                label=" × ".join(map(str, r["sizes"][1:-1])))
    cx.set(xscale="log", yscale="log", xlabel="Adam step", ylabel="test RMSE (geometric mean over seeds)",
           title="training curves at each network's chosen rate")
    cx.grid(alpha=0.3, which="both")
    cx.legend(fontsize=8, ncol=2)
    for rows_, label, marker in ((res["shallow"], "1 hidden layer", "o-"), (res["deep"], "2-3 hidden layers", "s")):
        ax.errorbar([r["hidden_units"] for r in rows_], [r["rmse"] for r in rows_],
                    yerr=np.nan_to_num([r["ci95"] for r in rows_]), fmt=marker, capsize=3, label=label)
    for d in res["deep"]:
        ax.annotate(" × ".join(map(str, d["widths"])), (d["hidden_units"], d["rmse"]), fontsize=10,
                    xytext=(4, 4), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="hidden units (total)", ylabel="test RMSE",
           title=f"error against size: mean and 95% CI over {n} seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
