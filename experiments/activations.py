"""Experiment 2: the same network and data trained with step, sigmoid, tanh, relu and leaky relu,
each with its own learning rate chosen on validation splits, over 10 seeds.

Digits, 64-64-64-10, glorot init for every arm (so only the activation differs), plain SGD,
batches of 32. Each arm's learning rate comes from a grid, by the best mean area under the
validation-accuracy curve (fast and good); a choice on the grid's edge extends the grid
(``common.interior_choice``). The chosen rate then trains on each seed's full training split
and is scored on its test split. The arms share their seeds (split, initial weights, batch
order), so they are compared paired over seeds (``fnn.stats.paired``, Holm over every row).

What this measures at adequate resolution: the gradient norms at init, the test accuracy
(final, and its mean over epochs) and saturation. How *fast* each activation trains is
counted in SGD steps by ``activations_steps`` (which reads the rates chosen here): in whole
epochs every fast arm needs 2-3, which cannot resolve a ratio.

The step network's hidden layers get an exactly zero gradient (f' = 0 almost everywhere), so
only its output layer ever changes.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

import fnn
from common import band, figure, main, pm, seed_splits, table, tune_and_test
from fnn.analysis.stats import holm, mean_ci, paired

ACTIVATIONS = ["step", "sigmoid", "tanh", "relu", "leaky_relu"]
PAIRS = (("relu", "tanh"), ("relu", "sigmoid"), ("tanh", "sigmoid"), ("leaky_relu", "relu"), ("sigmoid", "step"))


def _grad_norms(net, seeds, data):
    norms = []
    for s in seeds:
        params = fnn.init(jax.random.split(jax.random.key(s), 3)[0], net, "glorot")
        _, grads = fnn.value_and_grad(net, "softmax_cross_entropy", params, data.x_train, data.y_train)
        norms.append([float(np.linalg.norm(g["W"])) for g in grads])
    return np.mean(norms, 0).tolist()


def run(quick: bool = False) -> dict:
    seeds = [0, 1] if quick else list(range(10))
    grid = [0.1, 0.3] if quick else [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    epochs = 4 if quick else 60
    res = {"epochs": epochs, "seeds": seeds, "runs": {}}
    data = fnn.data.digits(seed=0)
    for name in ACTIVATIONS:
        net = fnn.MLP((64, 64, 64, 10), name)
        arm = tune_and_test(net, "softmax_cross_entropy", lambda s: fnn.data.digits(seed=s), seeds=seeds,
                            lr_grid=grid, epochs=epochs, optimizer="sgd", batch_size=32, init="glorot",
                            extend=0 if quick else 3)
        acc = np.asarray(arm["history"]["test_accuracy"])
        arm.update(grad_norms_at_init=_grad_norms(net, seeds, data), final_test_accuracy=acc[:, -1].tolist(),
                   mean_test_accuracy=acc.mean(1).tolist(), final_accuracy=mean_ci(acc[:, -1])[::2])
        res["runs"][name] = arm
    res["comparisons"] = _compare(res["runs"])
    res["saturation"] = _saturation(seeds, res["runs"]["sigmoid"]["lr"], epochs, quick)
    return res


def _compare(runs) -> list[dict]:
    """a − b paired over seeds, final test accuracy and its mean over epochs; Holm over all rows."""
    rows = []
    for a, b in PAIRS:
        for key in ("final_test_accuracy", "mean_test_accuracy"):
            c = paired(runs[a][key], runs[b][key])
            rows.append({"a": a, "b": b, "metric": key, "difference": c.mean, "ci95": c.half_width,
                         "p_value": c.p_value, "n": c.n, "wins": c.wins, "ties": c.ties, "losses": c.losses})
    for row, p in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = p
    return rows


def _saturation(seeds, lr, epochs, quick) -> dict:
    """Large pre-activations: the sigmoid network with its initial weights scaled by 1, 4 and 16
    (at its tuned rate): how many hidden units start saturated (f'(z) < 0.01), and the test
    accuracy it reaches, per seed."""
    scales = [1.0, 16.0] if quick else [1.0, 4.0, 16.0]
    net = fnn.MLP((64, 64, 64, 10), "sigmoid")
    data = fnn.data.digits(seed=0)
    saturated = []
    for scale in scales:
        params = fnn.init(jax.random.split(jax.random.key(0), 3)[0], net, "glorot")
        params = [{"W": l["W"] * scale, "b": l["b"]} for l in params]
        _, cache = fnn.forward_with_cache(net, params, data.x_train)
        fprime = [np.asarray(a * (1 - a)) for a in cache.outputs[:-1]]
        saturated.append([float(np.mean(f < 0.01)) for f in fprime])
    (x, v), (xt, vt) = seed_splits(lambda s: fnn.data.digits(seed=s), seeds, validation=False)
    runs = fnn.sweep(net, "softmax_cross_entropy", x, v, seeds=seeds, grid={"init_scale": scales}, test=(xt, vt),
                     epochs=epochs, lr=lr, optimizer="sgd", batch_size=32, init="glorot")
    points = np.array([c["point"] for c in runs.configs])
    final = np.asarray(runs.history["test_accuracy"])[:, -1]
    per_seed = [final[points == g].tolist() for g in range(len(scales))]
    z = np.linspace(-10, 10, 401)
    sig = 1 / (1 + np.exp(-z))
    return {"scales": scales, "lr": lr, "saturated_fraction_at_init": saturated, "test_accuracy": per_seed,
            "final_accuracy": [mean_ci(a)[::2] for a in per_seed],
            "curves": {"z": z.tolist(), "sigmoid'": (sig * (1 - sig)).tolist(), "tanh'": (1 - np.tanh(z) ** 2).tolist()}}


def _arms_table(res):
    rows = [[name, *(f"{g:.3g}" for g in r["grad_norms_at_init"]), f"{r['lr']:g}", _grid_text(r),
             pm(*r["final_accuracy"]), pm(*mean_ci(r["mean_test_accuracy"])[::2]),
             "yes" if r["plateau"]["plateaued"] else f"no (gain {r['plateau']['gain']:+.4f})"]
            for name, r in res["runs"].items()]
    return table(["activation", "‖∂R/∂W1‖ at init", "‖∂R/∂W2‖", "‖∂R/∂W3‖", "chosen lr", "grid (extended)",
                  "final test acc.", "mean test acc. over epochs", "plateaued"], rows)


def _grid_text(r):
    text = ", ".join(f"{g:g}" for g in r["lr_grid"])
    return text + (" (choice on the edge)" if r["lr_at_grid_edge"] else "")


def _comparisons_table(res):
    what = {"final_test_accuracy": "final test accuracy", "mean_test_accuracy": "mean test accuracy over epochs"}
    rows = [[f"{c['a']} − {c['b']}", what[c["metric"]], f"{100 * c['difference']:+.2f} ± {100 * c['ci95']:.2f}",
             f"{c['wins']}/{c['ties']}/{c['losses']}", c["n"], f"{c['p_holm']:.2g}"] for c in res["comparisons"]]
    return table(["a − b", "metric", "paired mean ± 95% (points)", "W/T/L (a > b)", "n", "p (Holm)"], rows)


def _epochs_text(res, target=0.95):
    """The whole epochs each fast arm needs to ``target`` test accuracy: their range over seeds."""
    parts = []
    for name in ("relu", "leaky_relu", "tanh"):
        hit = [np.flatnonzero(np.asarray(c) >= target) for c in res["runs"][name]["history"]["test_accuracy"]]
        first = [int(h[0]) + 1 for h in hit if len(h)]
        never = len(hit) - len(first)
        span = f"{min(first)}–{max(first)}" if first else "no"
        parts.append(f"{name} reaches {target:.0%} test accuracy in {span} epochs" + (f" ({never} seeds never)" if never else ""))
    return "; ".join(parts)


def report(res: dict):
    n = len(res["seeds"])
    notes = [f"{name}: {r['grid_note']}" for name, r in res["runs"].items() if r["grid_note"]]
    edge = [name for name, r in res["runs"].items() if r["lr_at_grid_edge"]]
    md = ["# Activations", "",
          f"Digits, 64-64-64-10, glorot init, plain SGD, batch 32, {res['epochs']} epochs, {n} seeds (each its own "
          "train/test split and init, shared by the arms). Each activation's learning rate is chosen by the best "
          "mean area under the validation-accuracy curve (validation splits carved from the training data; the test "
          "split is used only for the tables); a choice on the grid's edge extends the grid, at most 3 times. "
          "Plateaued: the test accuracy of the last quarter of epochs is not more than 0.005 above the quarter "
          "before (95% upper bound, paired over seeds).", "", _arms_table(res), "",
          "Accuracies are mean ± 95% t-interval over seeds. The step network's hidden-layer gradients are exactly "
          "zero: no error signal passes below its output layer.", ""]
    md += ["Grid notes: " + "; ".join(notes) + "." if notes else "Every arm's rate is interior to its grid.", ""]
    if edge:
        md += [f"Still on the grid's edge: {', '.join(edge)}; their figures are what that grid gives.", ""]
    md += ["## Paired comparisons", "",
           "a − b per seed, mean with 95% t-interval in points of accuracy; W/T/L counts seeds where a is "
           "above/equal/below b; p (Holm) over every row.", "", _comparisons_table(res), "",
           f"Speed is not compared here: counted in whole epochs, {_epochs_text(res)}, which cannot resolve a "
           "ratio. `activations_steps` counts SGD steps to a training error, at the rates chosen here, for the "
           "lecture's 6× (relu against tanh, AlexNet on CIFAR-10)."]
    sat = res["saturation"]
    md += ["", "## Saturation", "",
           f"sigmoid′ is at most 1/4 and tanh′ at most 1, and both vanish for large |z|. Scaling the sigmoid "
           f"network's initial weights makes the pre-activations large (digits, SGD at its tuned lr {sat['lr']:g}, "
           f"{n} seeds):", "",
           table(["init scale", "hidden units with f′(z) < 0.01 at init (layer 1, layer 2)", "final test acc."],
                 [[f"{s:g}", ", ".join(f"{a:.0%}" for a in frac), pm(*acc)] for s, frac, acc in
                  zip(sat["scales"], sat["saturated_fraction_at_init"], sat["final_accuracy"])])]
    return "\n".join(md), _figure(res)


def _points(ax, groups):
    """Per-seed points, one column per group, seed k at the same offset in every column; thin
    lines join a seed's points (the arms are paired by seed)."""
    values = np.array([g[0] for g in groups], float)  # (groups, seeds)
    x = np.arange(len(groups))[:, None] + np.linspace(-0.25, 0.25, values.shape[1])[None]
    ax.plot(x, values, color="gray", lw=0.6, alpha=0.4)
    for i, (_, colour) in enumerate(groups):
        ax.scatter(x[i], values[i], s=20, color=colour, alpha=0.85, edgecolors="none", zorder=3)


def _figure(res):
    plt = figure()
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    axes = axes.ravel()
    colours = {}
    for name, r in res["runs"].items():  # relu thick and solid, leaky_relu dashed on top: their curves coincide
        style = {"lw": 3.0} if name == "relu" else {"ls": (0, (4, 3)), "lw": 1.6} if name == "leaky_relu" else {}
        line = band(axes[1], r, "test_accuracy", label=f"{name} (lr {r['lr']:g})", **style)
        colours[name] = line.get_color()
        band(axes[2], r, "train_loss", color=line.get_color(), **style)
        axes[0].errorbar(r["lr_grid"], r["val_auc"], yerr=np.nan_to_num(r["val_auc_ci95"]), marker="o", capsize=3,
                         color=line.get_color(), label=name)
    axes[0].set(xscale="log", xlabel="learning rate", ylabel="mean validation accuracy over epochs",
                title="(a) choosing each arm's learning rate")
    axes[1].set(xlabel="epoch", ylabel="test accuracy", ylim=(0.9, 0.99),
                title="(b) test accuracy, mean and 95% band (step: ~0.7, below)")
    axes[2].set(yscale="log", xlabel="epoch", ylabel="training loss (full set)", title="(c) training loss")
    runs = [name for name in res["runs"] if name != "step"]
    _points(axes[3], [(res["runs"][k]["final_test_accuracy"], colours[k]) for k in runs])
    axes[3].set_xticks(range(len(runs)), runs)
    axes[3].set(ylabel="final test accuracy", title="(d) final test accuracy per seed, joined by seed (step: ~0.7, not shown)")
    sat = res["saturation"]
    for key, style in (("sigmoid'", "-"), ("tanh'", "--")):
        axes[4].plot(sat["curves"]["z"], sat["curves"][key], style, label=key.replace("'", "′(z)"))
    axes[4].set(xlabel="pre-activation z", ylabel="derivative f′(z)", title="(e) saturation: f′ vanishes for large |z|")
    _points(axes[5], [(a, colours["sigmoid"]) for a in sat["test_accuracy"]])
    axes[5].set_xticks(range(len(sat["scales"])), [f"×{s:g}" for s in sat["scales"]])
    axes[5].set(xlabel="sigmoid net, initial weights scaled", ylabel="final test accuracy",
                title="(f) saturated at init: test accuracy per seed, joined by seed")
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in (axes[0], axes[4]):
        ax.legend(fontsize=8)
    axes[1].legend(fontsize=8, loc="lower right", title="relu (thick) lies under leaky_relu (dashed)",
                   title_fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main(sys.modules[__name__])
