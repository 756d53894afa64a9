"""Experiment 3: per-layer gradient norms for depths 2 to 20 with sigmoid, tanh and relu under
glorot and he init (5 seeds), and what depth does to the accuracy these networks reach.

Part 1, at initialisation: ‖∂R/∂W_l‖ for every layer l (numbered from the input, 1 .. L) on
512 digits, the geometric mean over seeds, on one shared colour scale; the first layer's
depth-20 / depth-2 ratio also at hidden widths 64 and 128.

Part 2, trained: digits, hidden width 32, plain SGD, batch 32; for every (activation, init,
depth) its own learning rate, chosen on validation splits by the best mean area under the
validation-accuracy curve (the grid extended while the choice sits on its edge), then 5 seeds
on the test splits (mean ± 95% t-interval, and every seed's point: some arms are bimodal).
The budget doubles (30 → 60 → 120 epochs) while the test curves still rise; the curves are
stored and drawn, and each arm says whether the plateau rule holds at its last budget. A run
that diverges counts as a failure: from its divergence on it scores its split's majority-class
share (what a constant prediction gets), in every mean and paired test, and the table counts
diverged runs. The score is the mean test accuracy over the last quarter of the epochs (the
final epoch alone depends on where an oscillating curve stops). An arm whose validation scores
are flat over the whole grid (best and worst rate within FLAT_TOL, ``common.flat_objective``)
is reported as trained by no rate of the grid, not as a choice.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

import fnn
from common import counted, figure, main, plateau, pm, table, tune_and_test
from fnn.analysis.stats import mean_ci

SETUPS = [("sigmoid", "glorot"), ("tanh", "glorot"), ("relu", "glorot"), ("relu", "he")]
FLAT_TOL = 0.05  # validation accuracy (mean over epochs): a grid whose rates all lie within 5 points trains nothing


def _norms(net, params, x, v):
    _, grads = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v)
    return [float(np.linalg.norm(g["W"])) for g in grads]


def _widths(seeds, depths, x, v, widths) -> dict:
    """‖∂R/∂W_1‖ at the deepest depth over its value at the shallowest, per hidden width."""
    out = {}
    for act, scheme in SETUPS:
        first = {}
        for width in widths:
            for depth in (depths[0], depths[-1]):
                net = fnn.MLP((64, *[width] * depth, 10), act)
                norms = [_norms(net, fnn.init(jax.random.key(s), net, scheme), x, v)[0] for s in seeds]
                first[depth] = float(np.exp(np.log(np.maximum(norms, 1e-45)).mean()))
            out.setdefault(f"{act}/{scheme}", {})[str(width)] = first[depths[-1]] / first[depths[0]]
    return out


def _trained(arm, chance) -> dict:
    """One trained arm: diverged runs counted as failures (chance from their divergence on)."""
    curves, diverged = counted(arm["history"]["test_accuracy"], chance)
    last = max(1, int(round(curves.shape[1] * 0.25)))
    score, final = curves[:, -last:].mean(1), curves[:, -1]
    (m, _, h, _), (fm, _, fh, _) = mean_ci(score), mean_ci(final)
    return {"lr": arm["lr"], "cannot_train": bool(arm["flat_objective"]), "lr_at_grid_edge": arm["lr_at_grid_edge"],
            "lr_grid": arm["lr_grid"], "grid_note": arm["grid_note"], "val_auc": arm["val_auc"],
            "test_accuracy": [c[-1] for c in arm["history"]["test_accuracy"]], "chance": list(chance),
            "final_counted": final.tolist(), "final_mean": fm, "final_ci95": fh, "last_epochs": last,
            "score": score.tolist(), "mean": m, "ci95": h, "diverged": diverged, "epochs": arm["epochs"],
            "plateau": plateau(curves), "curves": arm["history"]["test_accuracy"],
            "curve_mean": curves.mean(0).tolist()}


def run(quick: bool = False) -> dict:
    data = fnn.data.digits()
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    depths = [2, 10] if quick else [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    trained_depths = [4] if quick else [2, 6, 10, 20]
    grid = [0.1] if quick else [0.01, 0.03, 0.1, 0.3, 1.0]
    epochs = 3 if quick else 30
    res = {"depths": depths, "trained_depths": trained_depths, "epochs": epochs, "seeds": seeds, "lr_grid": grid,
           "flat_tol": FLAT_TOL, "runs": {}, "trained": {}}
    x, v = data.x_train[:512], data.y_train[:512]
    res["first_layer_ratio_by_width"] = _widths(seeds, depths, x, v, [64] if quick else [32, 64, 128])
    majority = lambda y: float(np.bincount(np.asarray(y)).max() / len(y))
    chance = [majority(fnn.data.digits(seed=s).y_test) for s in seeds]
    for act, scheme in SETUPS:
        for depth in depths:
            net = fnn.MLP((64, *[32] * depth, 10), act)
            norms = [_norms(net, fnn.init(jax.random.key(s), net, scheme), x, v) for s in seeds]
            res["runs"][f"{act}/{scheme}/{depth}"] = {"init": np.exp(np.log(np.maximum(norms, 1e-45)).mean(0)).tolist()}
        for depth in trained_depths:
            net = fnn.MLP((64, *[32] * depth, 10), act)
            arm = tune_and_test(net, "softmax_cross_entropy", lambda s: fnn.data.digits(seed=s), seeds=seeds,
                                lr_grid=grid, epochs=epochs, optimizer="sgd", batch_size=32, init=scheme,
                                extend=0 if quick else 3, max_epochs=None if quick else 4 * epochs,
                                flat_tol=FLAT_TOL)
            res["trained"][f"{act}/{scheme}/{depth}"] = _trained(arm, chance)
    return res


def report(res):
    depths, n = res["depths"], len(res["seeds"])
    rows = []
    for act, scheme in SETUPS:
        base = res["runs"][f"{act}/{scheme}/{depths[0]}"]["init"][0]
        for d in depths:
            g = res["runs"][f"{act}/{scheme}/{d}"]["init"]
            rows.append([act, scheme, d, g[0], g[-1], g[0] / g[-1], g[0] / base])
    md = ["# Vanishing gradients with depth", "",
          f"Digits (512 examples), hidden width 32, ‖∂R/∂W_l‖ at initialisation (geometric mean over {n} seeds). "
          "Layers are numbered from the input: layer 1 is the first weight matrix, layer L the output layer.", "",
          table(["activation", "init", "hidden layers", "‖∂R/∂W_1‖", "‖∂R/∂W_L‖", "first / last",
                 f"‖∂R/∂W_1‖ / its value at depth {depths[0]}"], rows), ""]
    for act, scheme in SETUPS:
        g = res["runs"][f"{act}/{scheme}/{depths[-1]}"]["init"]
        ratios = [res["runs"][f"{act}/{scheme}/{d}"]["init"][0] / res["runs"][f"{act}/{scheme}/{depths[0]}"]["init"][0]
                  for d in depths]
        md.append(f"- {act} + {scheme}, depth {depths[-1]}: first/last layer {g[0] / g[-1]:.3g}; the first layer's "
                  f"gradient is {ratios[-1]:.3g}× its value at depth {depths[0]} (between {min(ratios[1:]):.3g}× "
                  f"and {max(ratios[1:]):.3g}× over depths {depths[1]}-{depths[-1]}).")
    wide = res.get("first_layer_ratio_by_width", {})
    if wide:
        he = list(wide["relu/he"].values())
        md += ["", f"The first layer's ‖∂R/∂W_1‖ at depth {depths[-1]} over its value at depth {depths[0]}, by hidden "
               f"width. The ratio depends on the width: relu + he's lies between {min(he):.3g}× and {max(he):.3g}× "
               + ("(within 2×), not at 1×." if all(0.5 <= a <= 2 for a in he) else
                  "(so neither at 1× nor everywhere within 2×).") + " Every network's ratio by width:", "",
               table(["network", *(f"width {w}" for w in next(iter(wide.values())))],
                     [[k.replace("/", " + "), *(f"{a:.3g}" for a in r.values())] for k, r in wide.items()])]
    md += ["", *_trained_lines(res)]
    return "\n".join(md), _figure(res)


def _trained_lines(res) -> list[str]:
    n = len(res["seeds"])
    rows = []
    for act, scheme in SETUPS:
        for d in res["trained_depths"]:
            t = res["trained"][f"{act}/{scheme}/{d}"]
            flat = t["plateau"]
            rows.append([f"{act} + {scheme}", d, "none trains (flat grid)" if t["cannot_train"] else f"{t['lr']:.3g}",
                         t["epochs"], pm(t["mean"], t["ci95"]), pm(t["final_mean"], t["final_ci95"]),
                         f"{t['diverged']}/{n}", "yes" if flat["plateaued"] else
                         f"no ({flat['gain'] * 100:+.1f} ± {flat['ci95'] * 100:.1f} pts)"])
    md = [f"Trained (SGD, batch 32, {res['epochs']} epochs, doubled while the test curve still rose, at most "
          f"{4 * res['epochs']}; each network's learning rate from {res['lr_grid']}, extended while the choice sat on "
          f"an edge, chosen on validation splits). Test accuracy over {n} seeds, mean ± 95% t-interval: the mean over "
          "the last quarter of the epochs, and the final epoch. A diverged run counts as a failure (its split's "
          "majority-class share, from the epoch it diverged); 'diverged' counts them. 'plateau': the plateau rule "
          "(the last quarter's gain over the quarter before, 95% upper bound below 0.5 points) at the last budget, "
          f"else that gain. 'none trains': the validation scores of every rate lie within {res['flat_tol']:g} of each "
          "other (95% interval of the paired difference of the best and worst rate), so the grid made no choice "
          "and the rate shown in the json is arbitrary.", "",
          table(["network", "hidden layers", "lr", "epochs", "test acc., last quarter", "test acc., final",
                 "diverged", "plateau"], rows), ""]
    deepest = res["trained_depths"][-1]
    acc = {k: res["trained"][f"{k}/{deepest}"]["mean"] for k in (f"{a}/{s}" for a, s in SETUPS)}
    best = max(acc, key=acc.get)
    md += [f"At {deepest} hidden layers the best mean is {best.replace('/', ' + ')} ({acc[best]:.3f}); "
           "`paired_reanalysis` compares the arms paired over seeds. The lecture's claim that ReLU networks train "
           "better when deep holds here only as far as that says: compare relu + he with tanh + glorot, whose "
           "gradients do not vanish either.", "", "Grid edges and spread:", ""]
    for k, t in res["trained"].items():
        spread = np.max(t["score"]) - np.min(t["score"])
        notes = [t.get("grid_note") or ("lr on the grid's edge" if t["lr_at_grid_edge"] else ""),
                 f"seeds spread over {spread * 100:.0f} points" if spread > 0.1 else ""]
        if any(notes):
            md.append(f"- {k}: " + "; ".join(a for a in notes if a) + ".")
    return md


def _figure(res):
    depths = res["depths"]
    plt = figure()
    fig = plt.figure(figsize=(16, 9))
    gs = fig.add_gridspec(2, 5, width_ratios=[1, 1, 1, 1, 0.05], hspace=0.35, wspace=0.3)
    axes = [fig.add_subplot(gs[0, i]) for i in range(len(SETUPS))]
    logs = {k: np.log10(np.maximum(r["init"], 1e-30)) for k, r in res["runs"].items()}
    low, high = min(a.min() for a in logs.values()), max(a.max() for a in logs.values())
    for ax, (act, scheme) in zip(axes, SETUPS):
        grid = np.full((len(depths), max(depths) + 1), np.nan)
        for r, d in enumerate(depths):
            a = logs[f"{act}/{scheme}/{d}"]
            grid[r, : len(a)] = a
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="magma", vmin=low, vmax=high,
                       extent=(0.5, max(depths) + 1.5, -0.5, len(depths) - 0.5))
        ax.set(title=f"{act} + {scheme}", xlabel="layer l (1 = input side)",
               ylabel="hidden layers", yticks=range(len(depths)), yticklabels=depths)
    fig.colorbar(im, cax=fig.add_subplot(gs[0, 4]), label="log10 ‖∂R/∂W_l‖ (one scale for all four)")
    points, curves = fig.add_subplot(gs[1, :2]), fig.add_subplot(gs[1, 2:4])
    fig.suptitle("‖∂R/∂W_l‖ at initialisation (geometric mean over seeds)", y=0.955)
    where = np.arange(len(res["trained_depths"]))  # depths as categories, evenly spaced
    for i, (act, scheme) in enumerate(SETUPS):
        t = [res["trained"][f"{act}/{scheme}/{d}"] for d in res["trained_depths"]]
        shift = (i - 1.5) * 0.18
        for x, a in zip(where, t):
            points.scatter(np.full(len(a["score"]), x + shift), a["score"], s=18, color=f"C{i}", alpha=0.8)
        points.plot(where + shift, [a["mean"] for a in t], color=f"C{i}", lw=1.2, marker="_", ms=14,
                    label=f"{act} + {scheme}")
        deep = res["trained"][f"{act}/{scheme}/{res['trained_depths'][-1]}"]
        for c in np.asarray(deep.get("curves", [])):
            curves.plot(np.arange(1, len(c) + 1), c, color=f"C{i}", lw=0.8, alpha=0.7)
        rate = "no rate of the grid trains" if deep["cannot_train"] else f"lr {deep['lr']:.3g}"
        curves.plot([], [], color=f"C{i}", label=f"{act} + {scheme} ({rate})")
    points.set(xlabel="hidden layers", ylabel="test accuracy", ylim=(0, 1), xticks=where,
               xticklabels=res["trained_depths"],
               title="trained: every seed's last-quarter test accuracy (diverged = failure) and the mean")
    curves.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1),
               title=f"{res['trained_depths'][-1]} hidden layers: every seed's test curve")
    for ax in (points, curves):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.subplots_adjust(left=0.05, right=0.95, top=0.9, bottom=0.16)
    return fig


if __name__ == "__main__":
    main(sys.modules[__name__])
