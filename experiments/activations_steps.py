"""Experiment 2b: how fast each activation trains, counted in SGD steps (not epochs).

``activations`` counts whole epochs, which cannot resolve a 2× ratio when the answer is 2
epochs on every seed. Here each activation trains with the learning rate ``activations``
chose for it on validation splits (read from its committed result), on the same digits
splits (seed s: split s, init key s), and its error on the full training split is measured
after every SGD step (batch 32, a fresh shuffle each epoch). The lecture's "6× faster"
(Krizhevsky et al. 2012, ReLU against tanh on CIFAR-10) is iterations to 25% training
error; this counts steps to 25% and to 5% training error, and compares the activations
paired over seeds on log steps (ratio = 10^mean difference, with its 95% interval).
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from common import RESULTS, figure, main, table
from fnn.analysis.stats import holm, paired

INPUTS = ["activations"]
THRESHOLDS = (0.25, 0.05)


def _curves(act, lr, seeds, steps):
    """Training-set error after every step ``(seeds, steps + 1)``, all seeds as one vmapped scan."""
    splits = [fnn.data.digits(seed=s) for s in seeds]
    x = jnp.stack([d.x_train for d in splits])
    v = jnp.stack([d.y_train for d in splits])
    net = fnn.MLP((64, 64, 64, 10), act)
    update = fnn.make_update_fn(net, "softmax_cross_entropy", optax.sgd(lr))
    n, per_epoch = x.shape[1], x.shape[1] // 32

    def one(seed, x, v):
        k_init, k_run, _ = jax.random.split(jax.random.key(seed), 3)
        params = fnn.init(k_init, net, "glorot")
        error = lambda p: jnp.mean(jnp.argmax(fnn.forward(net, p, x), -1) != v)

        def body(carry, t):
            p, s = carry
            order = jax.random.permutation(jax.random.fold_in(k_run, t // per_epoch), n)
            i = jax.lax.dynamic_slice(order, ((t % per_epoch) * 32,), (32,))
            p, s, _ = update(p, s, x[i], v[i])
            return (p, s), error(p)

        _, errs = jax.lax.scan(body, (params, optax.sgd(lr).init(params)), jnp.arange(steps))
        return jnp.concatenate([error(params)[None], errs])

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(seeds), x, v))


def _first(curve, threshold):
    hit = np.flatnonzero(curve <= threshold)
    return float(hit[0]) if len(hit) else np.nan


def run(quick: bool = False) -> dict:
    chosen = json.loads((RESULTS / "activations.json").read_text())["runs"]
    seeds = [0, 1] if quick else list(range(10))
    steps = 60 if quick else 1500
    res = {"seeds": seeds, "steps": steps, "thresholds": list(THRESHOLDS), "arms": {}}
    for act, arm in chosen.items():
        curves = _curves(act, arm["lr"], seeds, steps)
        res["arms"][act] = {"lr": arm["lr"], "lr_at_grid_edge": arm["lr_at_grid_edge"], "lr_grid": arm["lr_grid"],
                            "curve_mean": curves.mean(0).tolist(),
                            "steps_to": {str(t): [_first(c, t) for c in curves] for t in THRESHOLDS}}
    rows = []
    for a, b in (("relu", "tanh"), ("relu", "sigmoid"), ("tanh", "sigmoid"), ("leaky_relu", "relu")):
        for t in THRESHOLDS:
            sa, sb = (np.log10(res["arms"][k]["steps_to"][str(t)]) for k in (b, a))  # log(b / a): a's speed-up
            c = paired(sa, sb)
            rows.append({"faster": a, "than": b, "threshold": t, "log10_ratio": c.mean, "ci95": c.half_width,
                         "p_value": c.p_value, "n": c.n, "wins": c.wins, "ties": c.ties, "losses": c.losses})
    for row, p in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = p
    res["speedups"] = rows
    return res


def report(res):
    n = len(res["seeds"])
    stat = lambda a: (f"{np.nanmedian(a):.0f} [{np.nanmin(a):.0f}–{np.nanmax(a):.0f}]" if np.isfinite(a).any()
                      else f"never (> {res['steps']})")
    rows = [[act, f"{r['lr']:g}", *(stat(np.asarray(r["steps_to"][str(t)], float)) for t in res["thresholds"])]
            for act, r in res["arms"].items()]
    ratio = lambda r: (f"{10 ** r['log10_ratio']:.2f}× [{10 ** (r['log10_ratio'] - r['ci95']):.2f}, "
                       f"{10 ** (r['log10_ratio'] + r['ci95']):.2f}]")
    speed = [[f"{r['faster']} vs {r['than']}", f"{r['threshold']:.0%}", ratio(r), f"{r['wins']}/{r['ties']}/{r['losses']}",
              f"{r['p_holm']:.2g}"] for r in res["speedups"]]
    md = ["# Activations: steps to a training error", "",
          f"Digits, 64-64-64-10, glorot init, SGD batch 32, each activation at the rate `activations` chose for it; "
          f"training-set error after every step, {n} seeds, at most {res['steps']} steps (one epoch is 44 steps).", "",
          table(["activation", "lr", *(f"steps to {t:.0%} train error: median [min–max]" for t in res["thresholds"])],
                rows), "",
          "Speed-up = steps of the second / steps of the first, paired per seed (geometric mean with 95% "
          "interval); wins/ties/losses count seeds where the first needed fewer/equal/more steps; p (Holm) over "
          "every row.", "", table(["comparison", "threshold", "speed-up", "W/T/L", "p (Holm)"], speed), "",
          "The lecture's 6× is ReLU against tanh on CIFAR-10 (AlexNet). Read the relu-vs-tanh rows for what holds "
          "on digits with tuned rates: a speed-up below 1 means the first is slower."]
    edge = [f"{a} (lr {r['lr']:g}, the top of {r['lr_grid']})" for a, r in res["arms"].items() if r["lr_at_grid_edge"]]
    if edge:
        md += ["", "Rates that `activations` left on its grid's edge after extending it: "
               + ", ".join(edge) + "; a larger rate might make that arm faster, so its rows are an upper bound "
               "on its steps, not a measurement at its best rate."]
    else:
        md += ["", "Every rate is interior to the grid `activations` chose it on (grids extended off their edge)."]
    return "\n".join(md), _figure(res)


STYLES = {"step": ("tab:blue", "-", None), "sigmoid": ("tab:orange", "-", None), "tanh": ("tab:green", "-", None),
          "relu": ("tab:red", "-", None), "leaky_relu": ("tab:purple", (0, (4, 3)), "o")}


def _figure(res):
    """(a) mean training error after every step (relu solid, leaky_relu dashed with markers on top:
    their curves coincide); (b) steps to each threshold per seed, one column per activation."""
    plt = figure()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.25, 1]})
    for act, r in res["arms"].items():
        colour, ls, marker = STYLES.get(act, (None, "-", None))
        lw = 3.0 if act == "relu" else 1.6
        ax.plot(np.arange(len(r["curve_mean"])), r["curve_mean"], color=colour, ls=ls, lw=lw, marker=marker,
                markevery=0.08, ms=4, label=f"{act} (lr {r['lr']:g})")
    for t in res["thresholds"]:
        ax.axhline(t, color="gray", ls=":", lw=1)
        ax.annotate(f"{t:.0%}", (res["steps"], t), xytext=(-4, 3), textcoords="offset points", ha="right",
                    fontsize=8, color="gray")
    ax.set_xscale("symlog", linthresh=10)
    ax.set(yscale="log", xlim=(0, res["steps"]), xlabel="SGD step (linear to 10, log beyond)",
           ylabel="training error (mean over seeds)", title="(a) training error after every step")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9, loc="lower left", title="relu (thick) lies under leaky_relu (dashed)", title_fontsize=8)
    arms = [a for a, r in res["arms"].items() if np.isfinite(np.asarray(r["steps_to"][str(res["thresholds"][0])],
                                                                        float)).any()]
    n = len(res["seeds"])
    for k, t in enumerate(res["thresholds"]):
        x = np.arange(len(arms))[:, None] + (k - 0.5) * 0.4 + np.linspace(-0.12, 0.12, n)[None]
        y = np.array([res["arms"][a]["steps_to"][str(t)] for a in arms], float)
        for i, a in enumerate(arms):
            bx.scatter(x[i], y[i], s=18, color=STYLES.get(a, (None,))[0], marker="o" if k == 0 else "s",
                       facecolors="none" if k else None, zorder=3)
    bx.scatter([], [], color="k", marker="o", s=18, label=f"to {res['thresholds'][0]:.0%} error")
    bx.scatter([], [], color="k", marker="s", s=18, facecolors="none", label=f"to {res['thresholds'][1]:.0%} error")
    never = [a for a in res["arms"] if a not in arms] + [
        f"{a} to {t:.0%}" for a in arms for t in res["thresholds"][1:]
        if not np.isfinite(np.asarray(res["arms"][a]["steps_to"][str(t)], float)).any()]
    bx.set_xticks(range(len(arms)), arms)
    bx.set(yscale="log", ylabel="SGD steps (per seed)", title="(b) steps to a training error, per seed"
           + (f"\n(never within {res['steps']} steps: {', '.join(never)})" if never else ""))
    bx.grid(alpha=0.3, which="both")
    bx.legend(fontsize=9, loc="upper right")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main(sys.modules[__name__])
