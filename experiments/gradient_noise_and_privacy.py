"""Experiment 9: what the backward pass says about training, and what privacy costs.

Part A trains a 64-64-64-10 ReLU network on digits (Adam, batch 32) with ``diagnostics=True``
over several seeds and reports, per layer and epoch, the gradient signal-to-noise ratio
(Σ mean² / Σ variance of the per-example gradients) and the GGN trace, as mean and 95%
interval over seeds.

Part B trains the same network with DP-SGD (each example's gradient clipped to norm C = 1,
Gaussian noise σC added to each batch's sum) at several noise multipliers σ, against the
same network trained without clipping. Each arm gets its own learning rate, chosen from a
grid on a validation split carved from the training data (mean over two seeds); the chosen
settings are then trained over more seeds and scored on the test set. The privacy budget ε
of each arm is not computed here (that needs an accountant such as dp-accounting).
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax
from scipy import stats

import fnn
from common import figure, main, table

SIZES = (64, 64, 64, 10)
ARMS = {"no clipping": None, "clip C=1, σ=0": 0.0, "σ=0.5": 0.5, "σ=1": 1.0, "σ=2": 2.0}
LRS = (1e-3, 3e-3, 1e-2)


def interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over seeds."""
    a = np.asarray(values, float)
    if len(a) < 2:
        return float(a.mean()), float("nan")
    return float(a.mean()), float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))


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


def privacy_cost(data, seeds, select_seeds, epochs, lrs, arms) -> dict:
    validation = fnn.data.validation_split(data, seed=0)
    out = {}
    for arm in arms:
        sigma = ARMS[arm]
        scores = {lr: np.mean([_train(validation, s, lr, epochs, sigma,
                                         test=(validation.x_val, validation.y_val))["test_accuracy"][-1] for s in select_seeds])
                  for lr in lrs}
        best = max(scores, key=scores.get)
        accuracies = [_train(data, s, best, epochs, sigma)["test_accuracy"][-1] for s in seeds]
        out[arm] = {"sigma": sigma, "validation_accuracy_by_lr": {str(k): float(a) for k, a in scores.items()},
                    "lr": best, "test_accuracy": accuracies, "interval": interval(accuracies)}
    return out


def run(quick: bool = False) -> dict:
    data = fnn.data.digits(seed=0)
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    epochs = 3 if quick else 30
    results = {"seeds": seeds, "noise_and_curvature": noise_and_curvature(data, seeds, epochs)}
    lrs = (3e-3,) if quick else LRS
    arms = ["no clipping", "clip C=1, σ=0", "σ=1"] if quick else list(ARMS)
    results["privacy"] = privacy_cost(data, seeds, [10, 11] if not quick else [10], 2 if quick else 20, lrs, arms)
    results["privacy_epochs"] = 2 if quick else 20
    results["lr_grid"] = list(lrs)
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


def report(res: dict):
    nc, n = res["noise_and_curvature"], len(res["seeds"])
    epochs = nc["epochs"]
    marks = sorted({0, len(epochs) // 3, len(epochs) - 1})
    rows = [[f"layer {k}", *(_fmt(d["snr"][e]) for e in marks), *(_fmt(d["ggn_trace"][e]) for e in marks)]
            for k, d in nc["layers"].items()]
    header = ["layer", *(f"SNR, epoch {epochs[e]}" for e in marks), *(f"GGN trace, epoch {epochs[e]}" for e in marks)]
    examples = len(fnn.data.digits(seed=0).x_train)
    steps = res["privacy_epochs"] * (examples // 32)
    prow = [[arm, "off" if r["sigma"] is None else r["sigma"], _epsilon(r["sigma"], examples, steps), r["lr"],
             _fmt(r["interval"])] for arm, r in res["privacy"].items()]
    md = ["# Gradient noise, curvature and the cost of privacy", "",
          f"Digits, {'-'.join(map(str, SIZES))} ReLU (He init), Adam, batch 32; {n} seeds, mean ± 95% "
          "t-interval over seeds.", "",
          "## A. Gradient noise and curvature per layer over training (lr 1e-3)", "",
          table(header, rows), "",
          f"Final test accuracy: {_fmt(nc['test_accuracy'])}.", "",
          "## B. DP-SGD: test accuracy against the noise multiplier", "",
          f"C = 1, {res['privacy_epochs']} epochs; each arm's Adam learning rate chosen from {res['lr_grid']} on a "
          "validation split (mean of the selection seeds), then trained on the full training set.", "",
          table(["arm", "σ", "ε at δ = 1e-5", "chosen lr", "test accuracy"], prow), "",
          f"ε from `fnn.privacy.epsilon` (dp-accounting's RDP accountant; sampling rate 32/{examples}, {steps} "
          "steps, Poisson-sampling analysis). No noise means no privacy guarantee (ε = ∞), clipped or not.", ""]
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
