"""Experiment 9: what the backward pass says about training, and what privacy costs.

Part A trains a 64-64-64-10 ReLU network on digits (Adam, batch 32) with ``diagnostics=True``
over several seeds and reports, per layer and epoch, the gradient signal-to-noise ratio
(Σ mean² / Σ variance of the per-example gradients) and the GGN trace, as mean and 95%
interval over seeds.

Part B trains the same network with DP-SGD (each example's gradient clipped to norm C = 1,
Gaussian noise σC added to each batch's sum) at several noise multipliers σ, against the
same network trained without clipping. Each arm gets its own Adam learning rate, chosen like
every other experiment's (``common.tune_and_test``): on validation splits carved from each
seed's training split, by the best mean over seeds of the area under the validation-accuracy
curve, the grid extended while the choice sits on its edge; the chosen rate then trains on
each seed's full training split and is scored on its test split. Each noisy arm is compared
with "no clipping" paired over seeds (Holm over the comparisons); a run that diverges counts
as a failure (its split's majority-class share). ε at δ = 1e-5 comes from
``fnn.privacy.epsilon`` (dp-accounting's RDP accountant), which assumes Poisson sampling of
each batch; the training here shuffles fixed-size batches, so ε is the value under that
assumption, not a guarantee for the runs as made.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax

import fnn
from common import counted, figure, main, table, tune_and_test
from fnn.analysis.stats import holm, mean_ci, paired

SIZES = (64, 64, 64, 10)
ARMS = {"no clipping": None, "clip C=1, σ=0": 0.0, "σ=0.5": 0.5, "σ=1": 1.0, "σ=2": 2.0}
LRS = (1e-3, 3e-3, 1e-2)


def interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over seeds."""
    mean, _, half, _ = mean_ci(values)
    return mean, half


def _train(data, seed, lr, epochs, sigma="off", diagnostics=False, test=None):
    net = fnn.MLP(SIZES, "relu")
    params = fnn.init(jax.random.key(seed), net, "he")
    private = {} if sigma == "off" or sigma is None else {"clip_norm": 1.0, "noise_multiplier": sigma}
    _, history = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train,
                         key=jax.random.key(1000 + seed), optimizer=optax.adam(lr), epochs=epochs, batch_size=32,
                         test=test if test is not None else (data.x_test, data.y_test), diagnostics=diagnostics,
                         **private)
    return history


def noise_and_curvature(data, seeds, epochs) -> dict:
    runs = [_train(data, s, 1e-3, epochs, diagnostics=True) for s in seeds]
    layers = len(SIZES) - 1
    out = {"epochs": list(range(1, epochs + 1)), "layers": {}}
    for k in range(1, layers + 1):
        out["layers"][k] = {
            key: [interval([r[f"diag_{key}_l{k}"][e] for r in runs]) for e in range(epochs)]
            for key in ("snr", "ggn_trace", "norm_spread", "grad_norm")
        }
    out["test_accuracy"] = interval([r["test_accuracy"][-1] for r in runs])
    return out


def privacy_cost(seeds, epochs, lrs, arms, extend) -> dict:
    majority = lambda y: float(np.bincount(np.asarray(y)).max() / len(y))
    chance = [majority(fnn.data.digits(seed=s).y_test) for s in seeds]
    out = {}
    for arm in arms:
        sigma = ARMS[arm]
        private = {} if sigma is None else {"clip_norm": 1.0, "noise_multiplier": sigma}
        t = tune_and_test(fnn.MLP(SIZES, "relu"), "softmax_cross_entropy", lambda s: fnn.data.digits(seed=s),
                          seeds=seeds, lr_grid=list(lrs), epochs=epochs, optimizer="adam", batch_size=32, init="he",
                          extend=extend, **private)
        final, diverged = counted([c[-1] for c in t["history"]["test_accuracy"]], chance)
        out[arm] = {"sigma": sigma, "lr": t["lr"], "lr_grid": t["lr_grid"], "val_auc": t["val_auc"],
                    "val_auc_ci95": t["val_auc_ci95"], "lr_at_grid_edge": t["lr_at_grid_edge"],
                    "grid_note": t["grid_note"], "runner_up": t["runner_up"], "plateau": t["plateau"],
                    "test_accuracy": final.tolist(), "diverged": diverged, "interval": interval(final),
                    "curve_mean": t["mean"]["test_accuracy"], "curve_ci95": t["ci95"]["test_accuracy"]}
    return out


def comparisons(private: dict) -> list[dict]:
    """Each arm − no clipping, final test accuracy paired over seeds, Holm over the rows."""
    base = private["no clipping"]["test_accuracy"]
    rows = []
    for arm, a in private.items():
        if arm != "no clipping":
            c = paired(a["test_accuracy"], base)
            rows.append({"arm": arm, "difference": c.mean, "ci95": c.half_width, "p_value": c.p_value, "n": c.n,
                         "wins": c.wins, "ties": c.ties, "losses": c.losses, "text": c.text(100.0, " pts")})
    for row, p in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = p
    return rows


def run(quick: bool = False) -> dict:
    data = fnn.data.digits(seed=0)
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    epochs = 3 if quick else 30
    results = {"seeds": seeds, "noise_and_curvature": noise_and_curvature(data, seeds, epochs)}
    lrs = (3e-3,) if quick else LRS
    arms = ["no clipping", "clip C=1, σ=0", "σ=1"] if quick else list(ARMS)
    results["privacy_epochs"] = 2 if quick else 20
    results["privacy"] = privacy_cost(seeds, results["privacy_epochs"], lrs, arms, 0 if quick else 3)
    results["comparisons"] = comparisons(results["privacy"])
    results["lr_grid"] = list(lrs)
    results["examples"] = len(fnn.data.digits(seed=seeds[0]).x_train)
    return results


def _fmt(iv) -> str:
    mean, half = iv
    return f"{mean:.3g} ± {half:.2g}"


def _epsilon(sigma, examples: int, steps: int) -> str:
    if not sigma:
        return "∞"
    try:
        from fnn.analysis.privacy import epsilon

        return f"{epsilon(sigma, batch_size=32, examples=examples, steps=steps):.3g}"
    except ImportError:
        return "n/a (pip install 'fnn[privacy]')"


def _privacy_lines(res) -> list[str]:
    examples, n = res["examples"], len(res["seeds"])
    steps = res["privacy_epochs"] * (examples // 32)
    prow = []
    for arm, r in res["privacy"].items():
        note = r["grid_note"] or ("on the grid's edge" if r["lr_at_grid_edge"] else "interior")
        prow.append([arm, "off" if r["sigma"] is None else r["sigma"], _epsilon(r["sigma"], examples, steps),
                     f"{r['lr']:.3g} ({note})", _fmt(r["interval"]), f"{r['diverged']}/{n}",
                     "yes" if r["plateau"]["plateaued"] else "no"])
    crow = []
    for c in res["comparisons"]:
        lo, hi = (c["difference"] - c["ci95"]) * 100, (c["difference"] + c["ci95"]) * 100
        reading = (f"{'ahead' if c['difference'] > 0 else 'behind'} (Holm p {c['p_holm']:.2g})" if c["p_holm"] < 0.05
                   else f"not distinguishable; the interval allows from {lo:+.2f} to {hi:+.2f} points")
        crow.append([f"{c['arm']} − no clipping", c["text"], f"{c['p_holm']:.2g}", reading])
    return [f"C = 1, {res['privacy_epochs']} epochs, batch 32. Each arm's Adam learning rate from {res['lr_grid']} "
            "(extended while the choice sat on an edge), chosen on validation splits of each seed's training split "
            "by the mean over seeds of the area under the validation-accuracy curve; then trained on each seed's "
            f"full training split and scored on its test split ({n} seeds). A diverged run counts as a failure "
            "(its split's majority-class share); 'plateau': the last quarter's test-accuracy gain over the "
            "quarter before has its 95% upper bound below 0.5 points.", "",
            table(["arm", "σ", "ε at δ = 1e-5 (Poisson-sampling assumption)", "chosen lr", "test accuracy",
                   "diverged", "plateau"], prow), "",
            f"ε from `fnn.privacy.epsilon` (dp-accounting's RDP accountant; sampling rate 32/{examples}, {steps} "
            "steps) is ε under the Poisson-sampling assumption: the training shuffles fixed-size batches, which that "
            "analysis does not cover, so it is not a guarantee for these runs. No noise means no privacy guarantee "
            "(ε = ∞), clipped or not.", "",
            "Final test accuracy against no clipping, paired over seeds (Holm over these rows). A row that is not "
            "distinguishable is not evidence of equality: its interval says how large a cost (or gain) the seeds "
            "leave possible.", "",
            table(["comparison", "difference (95% CI; paired t, sign count)", "p (Holm)", "reading"], crow), ""]


def report(res: dict):
    nc, n = res["noise_and_curvature"], len(res["seeds"])
    epochs = nc["epochs"]
    marks = sorted({0, len(epochs) // 3, len(epochs) - 1})
    rows = [[f"layer {k}", *(_fmt(d["snr"][e]) for e in marks), *(_fmt(d["ggn_trace"][e]) for e in marks)]
            for k, d in nc["layers"].items()]
    header = ["layer", *(f"SNR, epoch {epochs[e]}" for e in marks), *(f"GGN trace, epoch {epochs[e]}" for e in marks)]
    falls = {k: d["ggn_trace"][0][0] / d["ggn_trace"][-1][0] for k, d in nc["layers"].items()}
    md = ["# Gradient noise, curvature and the cost of privacy", "",
          f"Digits, {'-'.join(map(str, SIZES))} ReLU (He init), Adam, batch 32; {n} seeds, mean ± 95% "
          "t-interval over seeds.", "",
          "## A. Gradient noise and curvature per layer over training (lr 1e-3)", "",
          table(header, rows), "",
          f"Final test accuracy: {_fmt(nc['test_accuracy'])}. The GGN trace falls from epoch 1 to epoch "
          f"{epochs[-1]} by " + ", ".join(f"{a:.3g}× in layer {k}" for k, a in falls.items()) + ".", "",
          "## B. DP-SGD: test accuracy against the noise multiplier", "", *_privacy_lines(res)]
    plt = figure()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k, d in nc["layers"].items():
        for ax, key in zip(axes[:2], ("snr", "ggn_trace")):
            mean = np.array([m for m, _ in d[key]])
            half = np.nan_to_num(np.array([h for _, h in d[key]]))
            ax.plot(epochs, mean, label=f"layer {k}")
            ax.fill_between(epochs, mean - half, mean + half, alpha=0.2)
    axes[0].set(xlabel="epoch", ylabel="Σ mean² / Σ variance", yscale="log",
                title="gradient signal-to-noise ratio (95% band)")
    axes[1].set(xlabel="epoch", ylabel="trace of the GGN diagonal", yscale="log", title="curvature (95% band)")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    names = list(res["privacy"])
    means = [res["privacy"][a]["interval"][0] for a in names]
    halves = np.nan_to_num([res["privacy"][a]["interval"][1] for a in names])
    axes[2].errorbar(range(len(names)), means, yerr=halves, fmt="o", capsize=4)
    axes[2].set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    axes[2].set(ylabel="test accuracy", title="DP-SGD: accuracy against noise (95% interval)")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
