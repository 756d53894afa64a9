"""Sharpness and the edge of stability: the top Hessian eigenvalue during full-batch gradient descent, against 2/η.

Full-batch gradient descent on a digits subset (a 64-32-32-10 tanh MLP, Glorot init) at three
learning rates η with the MSE loss on one-hot targets (Cohen et al.'s main setting), and softmax
cross-entropy at two (η = 2 starts above 2/η). About every ``every`` steps (alternately an even
and an odd step, so that a period-2 oscillation is not aliased away): the top eigenvalue λ_max of the Hessian of the
training risk on the whole subset (``fnn.top_eigenpairs``, Lanczos), and the top eigenvalue of
each layer's diagonal Hessian block (the operator restricted to that layer's W and b, other
blocks zeroed; by Cauchy interlacing never above λ_max). Gradient descent on a quadratic is
stable only while λ_max < 2/η; Cohen et al. (ICLR 2021, "Gradient Descent on Neural Networks
Typically Occurs at the Edge of Stability") report that λ_max rises during training
(progressive sharpening) until it reaches 2/η and then hovers there while the loss keeps
falling, non-monotonically. Each seed draws its own subset and initialisation.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import fnn
from fnn.analysis.spectrum import curvature_matvec, lanczos
from fnn.analysis.stats import mean_ci
from fnn.data.datasets import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import figure, main, pm, table  # noqa: E402

NET = fnn.MLP((64, 32, 32, 10), ("tanh", "tanh", "identity"))
ARMS = {  # name -> (loss, η)
    "mse, η=0.1": ("mse", 0.1), "mse, η=0.2": ("mse", 0.2), "mse, η=0.4": ("mse", 0.4),
    "cross-entropy, η=0.5": ("softmax_cross_entropy", 0.5), "cross-entropy, η=2": ("softmax_cross_entropy", 2.0),
}
FULL = dict(examples=1000, steps=4000, every=20, seeds=(0, 1, 2, 3, 4), iters=30)
QUICK = dict(examples=300, steps=360, every=30, seeds=(0, 1), iters=20)
REACHED = 0.95  # λ_max ≥ 0.95 · 2/η counts as having reached the edge
TAIL = 100  # the risk at every one of the last TAIL steps is kept (the rest every ``every`` steps)


def _schedule(cfg: dict) -> list[int]:
    """The steps λ_max is measured at: k·every + (k mod 2), so even and odd steps alternate, and the last."""
    return [k * cfg["every"] + k % 2 for k in range(cfg["steps"] // cfg["every"])] + [cfg["steps"]]


def _data(loss: str, seed: int, examples: int):
    d = load("digits", seed)
    x, y = jnp.asarray(d.x_train[:examples]), d.y_train[:examples]
    return x, jnp.asarray(np.eye(10, dtype=np.float32)[y] if loss == "mse" else y)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _descend(loss, steps, params, x, v, lr):
    """``steps`` full-batch GD steps; the training risk before each step."""
    def step(p, _):
        value, grad = fnn.value_and_grad(NET, loss, p, x, v)
        return jax.tree.map(lambda a, g: a - lr * g, p, grad), value
    return jax.lax.scan(step, params, None, length=steps)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _block_tops(loss, iters, params, x, v, key):
    """The top eigenvalue of each layer's diagonal Hessian block: Lanczos on ``u ↦ M A M u``,
    ``M`` the 0/1 mask of the layer's parameters, from a start vector inside the block."""
    matvec, theta = curvature_matvec(NET, loss, params, x, v, "hessian")
    masks = jnp.stack([ravel_pytree([jax.tree.map(lambda a: jnp.full_like(a, i == layer), p)
                                     for i, p in enumerate(params)])[0] for layer in range(len(params))])

    def top(mask_and_key):
        mask, k = mask_and_key
        start, restart = jax.random.split(k)
        res = lanczos(lambda u: mask * matvec(mask * u), mask * jax.random.rademacher(start, theta.shape, theta.dtype),
                      iters, restart)
        t = jnp.diag(res.alpha) + jnp.diag(res.beta[:-1], 1) + jnp.diag(res.beta[:-1], -1)
        return jnp.linalg.eigvalsh(t)[-1]

    return jax.lax.map(top, (masks, jax.random.split(key, len(params))))


def _run(loss: str, lr: float, seed: int, cfg: dict) -> dict:
    """One GD run: λ_max, its Lanczos residual, the layer blocks' tops and the risk every
    ``every`` steps; the risk at every step; stops at a non-finite risk (``diverged_at``)."""
    x, v = _data(loss, seed, cfg["examples"])
    params = fnn.init(jax.random.key(seed), NET, "glorot")
    key, risks, schedule = jax.random.key(1000 + seed), [], _schedule(cfg)
    out = {"step": [], "sharpness": [], "residual": [], "layers": [], "diverged_at": None}
    for t, following in zip(schedule, schedule[1:] + [None]):
        top = fnn.top_eigenpairs(NET, loss, params, x, v, jax.random.fold_in(key, t), k=1, num_iters=cfg["iters"])
        blocks = _block_tops(loss, cfg["iters"], params, x, v, jax.random.fold_in(key, t))
        out["step"].append(t)
        out["sharpness"].append(float(top.eigenvalues[0]))
        out["residual"].append(float(top.residuals[0]))
        out["layers"].append(np.asarray(blocks).tolist())
        if following is None:
            break
        params, values = _descend(loss, following - t, params, x, v, lr)
        risks += np.asarray(values).tolist()
        if not np.all(np.isfinite(risks)) or not all(np.isfinite(jax.tree.leaves(jax.tree.map(jnp.sum, params)))):
            out["diverged_at"] = following
            break
    out["risk"] = risks
    return out


def _seed_summary(run: dict, lr: float) -> dict:
    """Per seed, in units of 2/η: λ_max at init, its trough before reaching the edge, the step
    where it first reached 0.95·2/η after having been below 2/η (``None``: never), and over the second half of
    the run from that step on (``window``) its mean, min and max, the share of steps that
    raised the risk, and each layer block's top over λ_max."""
    steps, ratio = np.asarray(run["step"]), np.asarray(run["sharpness"]) * lr / 2
    below = np.nonzero(ratio < 1)[0]  # stable at least once (a start above 2/η does not count as reaching it)
    up = np.nonzero((ratio >= REACHED) & (np.arange(len(ratio)) > (below[0] if len(below) else -1)))[0]
    reach = int(steps[up[0]]) if len(up) and len(below) else None
    window = (steps >= steps[-1] / 2) & (steps >= (reach or 0))
    risk = np.asarray(run["risk"])
    rises = np.diff(risk[int(steps[window][0]):]) > 0
    layers = np.asarray(run["layers"])[window] / np.asarray(run["sharpness"])[window, None]
    return {"reached_at": reach, "initial": float(ratio[0]), "trough": float(np.min(ratio[:up[0] if reach else None])),
            "hover_mean": float(np.mean(ratio[window])), "hover_min": float(np.min(ratio[window])),
            "hover_max": float(np.max(ratio[window])), "end": float(ratio[-1]),
            "risk_rise_share": float(np.mean(rises)), "final_risk": float(risk[-1]),
            "layer_share": np.mean(layers, axis=0).tolist(), "max_residual": float(np.max(run["residual"]))}


def _stats(seeds: list[dict]) -> dict:
    """Mean and 95% half-width over ``seeds`` of every per-seed number (``[nan, nan]`` for none)."""
    keys = ("initial", "trough", "hover_mean", "hover_min", "hover_max", "end", "risk_rise_share", "final_risk")
    out = {k: list(mean_ci([s[k] for s in seeds])[::2]) for k in keys}
    out["layer_share"] = [list(mean_ci([s["layer_share"][i] for s in seeds])[::2]) for i in range(NET.num_layers)]
    return {**out, "n": len(seeds), "reached_at": [s["reached_at"] for s in seeds],
            "seeds": {k: [s[k] for s in seeds] for k in keys}}


def _cell(group: dict, key: str, digits: int) -> str:
    """``mean ± 95%`` over a group's seeds, or the seeds' own values when there are fewer than 3
    (a t-interval over 2 seeds says little)."""
    if group["n"] < 3:
        return ", ".join(f"{a:.{digits}f}" for a in group["seeds"][key])
    return pm(*group[key], digits)


def run(quick: bool) -> dict:
    cfg = QUICK if quick else FULL
    arms, started = {}, time.perf_counter()
    for name, (loss, lr) in ARMS.items():
        runs = [_run(loss, lr, s, cfg) for s in cfg["seeds"]]
        if any(r["diverged_at"] is not None for r in runs):
            raise RuntimeError(f"{name}: a run diverged (seeds {[r['diverged_at'] for r in runs]}): lower η.")
        seeds = [_seed_summary(r, lr) for r in runs]
        for r in runs:  # the json keeps the risk at the measured steps and at each of the last TAIL steps
            r["risk_tail"], r["risk"] = r["risk"][-TAIL:], [r["risk"][t] for t in r["step"] if t < len(r["risk"])]
        arms[name] = {"loss": loss, "lr": lr, "edge": 2 / lr, "runs": runs, "per_seed": seeds, "all": _stats(seeds),
                      "reached": _stats([s for s in seeds if s["reached_at"] is not None]),
                      "not_reached": _stats([s for s in seeds if s["reached_at"] is None])}
    return {"config": cfg, "network": {"sizes": NET.sizes, "activations": [a.name for a in NET.activations]},
            "reached_threshold": REACHED, "arms": arms, "seconds": time.perf_counter() - started,
            "conclusions": _conclusions(arms, cfg["steps"])}


def _conclusions(arms: dict, steps: int) -> list[str]:
    """One sentence per seed group; groups of fewer than 3 seeds give each seed's value (:func:`_cell`)."""
    out = []
    for name, a in arms.items():
        r, u, n = a["reached"], a["not_reached"], len(a["per_seed"])
        if r["n"]:
            out.append(f"{name}: λ_max (in units of 2/η) fell from {_cell(r, 'initial', 2)} at init to a trough of "
                       f"{_cell(r, 'trough', 2)}, rose and reached {REACHED}·2/η in {r['n']}/{n} seeds (median step "
                       f"{int(np.median(r['reached_at']))}); over the second half it averaged {_cell(r, 'hover_mean', 3)} "
                       f"(per-seed min {_cell(r, 'hover_min', 2)}, max {_cell(r, 'hover_max', 2)}), and "
                       f"{_cell(r, 'risk_rise_share', 2)} of those steps raised the training risk.")
        if u["n"]:
            above = min(u["seeds"]["initial"]) > 1
            start = (f"starting above the edge at {_cell(u, 'initial', 2)} of 2/η (a catapult: it fell below 2/η, "
                     "not a rise to it)" if above else f"from {_cell(u, 'initial', 2)} at init")
            out.append(f"{name}: in {u['n']}/{n} seeds λ_max did not reach 2/η within {steps} steps after having "
                       f"been below it: {start}, a trough of {_cell(u, 'trough', 3)}, and it ended at "
                       f"{_cell(u, 'end', 3)} of 2/η (training risk {_cell(u, 'final_risk', 4)} at the end).")
    return out


def report(results: dict):
    cfg, arms = results["config"], results["arms"]
    lines = [__doc__.strip().splitlines()[0], "", __doc__.strip().split("\n", 2)[2], "",
             f"Digits subset of {cfg['examples']} examples, {cfg['steps']} steps, λ_max at about every {cfg['every']}th "
             f"step, even and odd steps alternating ({cfg['iters']} Lanczos steps), seeds {list(cfg['seeds'])}; mean ± "
             "95% t-interval over seeds, or each seed's value where a group has fewer than 3 seeds.", ""]
    keys = (("initial", 2), ("trough", 3), ("hover_mean", 3), ("hover_min", 2), ("hover_max", 2), ("end", 3),
            ("risk_rise_share", 2))
    rows = [[name, f"{a['edge']:.3g}", f"{g.replace('_', ' ')} {a[g]['n']}/{len(a['per_seed'])}",
             *(_cell(a[g], k, d) for k, d in keys)]
            for name, a in arms.items() for g in ("reached", "not_reached") if a[g]["n"]]
    lines += ["λ_max in units of 2/η (λ_max·η/2), seeds grouped by whether λ_max reached 0.95·2/η after having been "
              f"below 2/η (within the {cfg['steps']} steps: a budget statement); \"second half\" is the second half "
              "of the run from that step on.", "",
              table(["arm", "2/η", "seeds", "at init", "trough", "second half: mean", "min", "max", "at end",
                     "steps raising the risk (second half)"], rows), ""]
    rows = [[name] + [pm(*share, 3) for share in a["all"]["layer_share"]] for name, a in arms.items()]
    lines += ["Top eigenvalue of each layer's diagonal Hessian block over λ_max, second half of the run:", "",
              table(["arm"] + [f"layer {i + 1}" for i in range(NET.num_layers)], rows), "",
              "## Conclusions (as measured)", ""] + [f"- {c}" for c in results["conclusions"]]
    rel = np.concatenate([np.asarray(r["residual"]) / np.abs(r["sharpness"]) for a in arms.values() for r in a["runs"]])
    lines += ["", f"Relative Lanczos residual ‖Au − λu‖/λ of the reported λ_max (an eigenvalue of the Hessian lies "
              f"within that distance): median {np.median(rel):.2g}, 95th percentile {np.percentile(rel, 95):.2g}, "
              f"largest {np.max(rel):.2g} ({int(np.sum(rel > 0.01))} of {rel.size} above 1%). Wall-clock: {results['seconds']:.0f} s."]
    return "\n".join(lines), _figure(arms)


def _figure(arms: dict):
    """Per arm (column): λ_max per seed, the layer blocks' tops, the training risk per seed (its
    last steps at every step, inset); one legend for the whole figure, outside the panels."""
    plt = figure()
    fig, axes = plt.subplots(3, len(arms), figsize=(3.6 * len(arms), 9.5), squeeze=False)
    colours = {}
    for col, (name, a) in enumerate(arms.items()):
        top, middle, bottom = axes[:, col]
        for k, r in enumerate(a["runs"]):
            colours[k] = top.plot(r["step"], r["sharpness"], lw=0.8, color=f"C{k}")[0]
            bottom.plot(r["step"][:len(r["risk"])], r["risk"], lw=0.8, color=f"C{k}")
        for ax in (top, middle):
            ax.axhline(a["edge"], color="k", ls="--", lw=1)
        top.set(title=name, ylabel="λ_max of the Hessian (per seed)")
        done = [r for r in a["runs"] if r["diverged_at"] is None] or a["runs"][:0]
        for i in range(NET.num_layers if done else 0):
            curves = np.array([np.asarray(r["layers"])[:, i] for r in done])
            middle.plot(done[0]["step"], curves.mean(0), color=f"C{i + 6}", lw=1.5)
        if done:
            middle.plot(done[0]["step"], np.mean([r["sharpness"] for r in done], 0), "k", lw=1)
        middle.set(ylabel="top eigenvalue (mean over seeds)")
        bottom.set(yscale="log", xlabel="step", ylabel="training risk (per seed)")
        inset = bottom.inset_axes([0.45, 0.5, 0.5, 0.42])
        for k, r in enumerate(a["runs"]):
            tail = np.asarray(r["risk_tail"])
            inset.plot(np.arange(r["step"][-1] - len(tail), r["step"][-1]), tail / tail[0], lw=0.6, color=f"C{k}")
        inset.set_title(f"last {len(a['runs'][0]['risk_tail'])} steps, each (÷ first)", fontsize=7)
        inset.tick_params(labelsize=6)
    handles = [plt.Line2D([], [], color=f"C{k}", lw=1) for k in colours]
    labels = [f"seed {k}" for k in colours]
    handles += [plt.Line2D([], [], color=f"C{i + 6}", lw=1.5) for i in range(NET.num_layers)]
    labels += [f"layer {i + 1} block" for i in range(NET.num_layers)]
    handles += [plt.Line2D([], [], color="k", lw=1), plt.Line2D([], [], color="k", ls="--", lw=1)]
    labels += ["whole Hessian", "2/η"]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


if __name__ == "__main__":
    main(sys.modules[__name__])
