"""Sharpness and the edge of stability: the top Hessian eigenvalue during full-batch gradient descent, against 2/η.

Full-batch gradient descent on a digits subset (a 64-32-32-10 tanh MLP, Glorot init) at three
learning rates η with the MSE loss on one-hot targets (Cohen et al.'s main setting), and one arm
with softmax cross-entropy. Every ``every`` steps: the top eigenvalue λ_max of the Hessian of the
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
    "cross-entropy, η=0.5": ("softmax_cross_entropy", 0.5),
}
FULL = dict(examples=1000, steps=4000, every=20, seeds=(0, 1, 2, 3, 4), iters=30)
QUICK = dict(examples=300, steps=360, every=30, seeds=(0, 1, 2), iters=20)
REACHED = 0.95  # λ_max ≥ 0.95 · 2/η counts as having reached the edge


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
    key, risks = jax.random.key(1000 + seed), []
    out = {"step": [], "sharpness": [], "residual": [], "layers": [], "diverged_at": None}
    for t in range(0, cfg["steps"] + 1, cfg["every"]):
        top = fnn.top_eigenpairs(NET, loss, params, x, v, jax.random.fold_in(key, t), k=1, num_iters=cfg["iters"])
        blocks = _block_tops(loss, cfg["iters"], params, x, v, jax.random.fold_in(key, t))
        out["step"].append(t)
        out["sharpness"].append(float(top.eigenvalues[0]))
        out["residual"].append(float(top.residuals[0]))
        out["layers"].append(np.asarray(blocks).tolist())
        if t == cfg["steps"]:
            break
        params, values = _descend(loss, cfg["every"], params, x, v, lr)
        risks += np.asarray(values).tolist()
        if not np.all(np.isfinite(risks)) or not all(np.isfinite(jax.tree.leaves(jax.tree.map(jnp.sum, params)))):
            out["diverged_at"] = t + cfg["every"]
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
    return {**out, "n": len(seeds), "reached_at": [s["reached_at"] for s in seeds]}


def run(quick: bool) -> dict:
    cfg = QUICK if quick else FULL
    arms, started = {}, time.perf_counter()
    for name, (loss, lr) in ARMS.items():
        runs = [_run(loss, lr, s, cfg) for s in cfg["seeds"]]
        if any(r["diverged_at"] is not None for r in runs):
            raise RuntimeError(f"{name}: a run diverged (seeds {[r['diverged_at'] for r in runs]}): lower η.")
        seeds = [_seed_summary(r, lr) for r in runs]
        for r in runs:  # the json keeps the risk at steps 0, every, 2·every, ... (the summary read every step)
            r["risk"] = r["risk"][::cfg["every"]]
        arms[name] = {"loss": loss, "lr": lr, "edge": 2 / lr, "runs": runs, "per_seed": seeds, "all": _stats(seeds),
                      "reached": _stats([s for s in seeds if s["reached_at"] is not None]),
                      "not_reached": _stats([s for s in seeds if s["reached_at"] is None])}
    return {"config": cfg, "network": {"sizes": NET.sizes, "activations": [a.name for a in NET.activations]},
            "reached_threshold": REACHED, "arms": arms, "seconds": time.perf_counter() - started,
            "conclusions": _conclusions(arms)}


def _conclusions(arms: dict) -> list[str]:
    out = []
    for name, a in arms.items():
        r, u, n = a["reached"], a["not_reached"], len(a["per_seed"])
        if r["n"]:
            out.append(f"{name}: λ_max (in units of 2/η) fell from {pm(*r['initial'], 2)} at init to a trough of "
                       f"{pm(*r['trough'], 2)}, rose and reached {REACHED}·2/η in {r['n']}/{n} seeds (median step "
                       f"{int(np.median(r['reached_at']))}); over the second half it averaged {pm(*r['hover_mean'], 3)} "
                       f"(per-seed min {pm(*r['hover_min'], 2)}, max {pm(*r['hover_max'], 2)}), and "
                       f"{pm(*r['risk_rise_share'], 2)} of those steps raised the training risk.")
        if u["n"]:
            out.append(f"{name}: in {u['n']}/{n} seeds λ_max never reached 2/η after having been below it: from {pm(*u['initial'], 2)} "
                       f"at init and a trough of {pm(*u['trough'], 2)} it ended at {pm(*u['end'], 3)} of 2/η "
                       f"(training risk {pm(*u['final_risk'], 4)} at the end).")
    return out


def report(results: dict):
    cfg, arms = results["config"], results["arms"]
    lines = [__doc__.strip().splitlines()[0], "", __doc__.strip().split("\n", 2)[2], "",
             f"Digits subset of {cfg['examples']} examples, {cfg['steps']} steps, λ_max every {cfg['every']} steps "
             f"({cfg['iters']} Lanczos steps), seeds {list(cfg['seeds'])}; mean ± 95% t-interval over seeds.", ""]
    rows = [[name, f"{a['edge']:.3g}", f"{g.replace('_', ' ')} {a[g]['n']}/{len(a['per_seed'])}", pm(*a[g]["initial"], 2),
             pm(*a[g]["trough"], 2), pm(*a[g]["hover_mean"], 3), pm(*a[g]["hover_min"], 2), pm(*a[g]["hover_max"], 2),
             pm(*a[g]["end"], 3), pm(*a[g]["risk_rise_share"], 2)]
            for name, a in arms.items() for g in ("reached", "not_reached") if a[g]["n"]]
    lines += ["λ_max in units of 2/η (λ_max·η/2), seeds grouped by whether λ_max reached 0.95·2/η after having been below 2/η; "
              "\"second half\" is the second half of the run from that step on.", "",
              table(["arm", "2/η", "seeds", "at init", "trough", "second half: mean", "min", "max", "at end",
                     "steps raising the risk (second half)"], rows), ""]
    rows = [[name] + [pm(*share, 3) for share in a["all"]["layer_share"]] for name, a in arms.items()]
    lines += ["Top eigenvalue of each layer's diagonal Hessian block over λ_max, second half of the run:", "",
              table(["arm"] + [f"layer {i + 1}" for i in range(NET.num_layers)], rows), "",
              "## Conclusions (as measured)", ""] + [f"- {c}" for c in results["conclusions"]]
    residual = max(np.max(np.asarray(r["residual"]) / np.abs(r["sharpness"])) for a in arms.values() for r in a["runs"])
    lines += ["", f"Largest relative Lanczos residual ‖Au − λu‖/λ of a reported λ_max: {residual:.2g} (an eigenvalue of the "
              f"Hessian lies within that distance). Wall-clock: {results['seconds']:.0f} s."]
    return "\n".join(lines), _figure(arms)


def _figure(arms: dict):
    plt = figure()
    fig, axes = plt.subplots(2, len(arms), figsize=(4 * len(arms), 7), squeeze=False)
    for col, (name, a) in enumerate(arms.items()):
        top, bottom = axes[0, col], axes[1, col]
        for r in a["runs"]:
            top.plot(r["step"], r["sharpness"], lw=0.8, alpha=0.8)
        top.axhline(a["edge"], color="k", ls="--", lw=1, label="2/η")
        top.set(title=name, xlabel="step", ylabel="λ_max of the Hessian")
        top.legend(loc="lower right")
        done = [r for r in a["runs"] if r["diverged_at"] is None] or a["runs"][:0]
        for i in range(NET.num_layers if done else 0):
            curves = np.array([np.asarray(r["layers"])[:, i] for r in done])
            bottom.plot(done[0]["step"], curves.mean(0), label=f"layer {i + 1} block")
        if done:
            bottom.plot(done[0]["step"], np.mean([r["sharpness"] for r in done], 0), "k", lw=1, label="whole Hessian")
        bottom.axhline(a["edge"], color="k", ls="--", lw=1)
        bottom.set(xlabel="step", ylabel="top eigenvalue (mean over seeds)")
        bottom.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main(sys.modules[__name__])
