"""Experiment 3: per-layer gradient norms for depths 2 to 20 with sigmoid, tanh and relu, under
he and glorot init, at initialisation and after some training: heat maps."""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax

import fnn
from common import figure, main, table

SETUPS = [("sigmoid", "glorot"), ("tanh", "glorot"), ("relu", "glorot"), ("relu", "he")]


def _norms(net, params, x, v):
    _, grads = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v)
    return [float(np.linalg.norm(g["W"])) for g in grads]


def run(quick: bool = False) -> dict:
    data = fnn.data.digits()
    depths = [2, 10] if quick else [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    epochs = 1 if quick else 5
    res = {"depths": depths, "epochs": epochs, "runs": {}}
    x, v = data.x_train[:512], data.y_train[:512]
    for act, scheme in SETUPS:
        for depth in depths:
            net = fnn.MLP((64, *[32] * depth, 10), act)
            params = fnn.init(jax.random.key(0), net, scheme)
            at_init = _norms(net, params, x, v)
            trained, _ = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train,
                                 key=jax.random.key(1), optimizer=optax.sgd(0.05), epochs=epochs, batch_size=32)
            res["runs"][f"{act}/{scheme}/{depth}"] = {"init": at_init, "trained": _norms(net, trained, x, v)}
    return res


def report(res):
    depths = res["depths"]
    rows = []
    for act, scheme in SETUPS:
        for d in depths:
            n = res["runs"][f"{act}/{scheme}/{d}"]["init"]
            rows.append([act, scheme, d, n[0], n[-1], n[0] / n[-1]])
    md = ["# Vanishing gradients with depth", "",
          "Digits, hidden width 32, ‖∂R/∂W_l‖ at initialisation for the first and last layer, and "
          "their ratio (below 1: the gradient shrinks on its way down).", "",
          table(["activation", "init", "hidden layers", "‖∂R/∂W_1‖", "‖∂R/∂W_L‖", "first / last"], rows), "",
          f"The figure shows log10 ‖∂R/∂W_l‖ for every layer (x) and depth (y), at init and after "
          f"{res['epochs']} epoch(s) of SGD."]
    plt = figure()
    fig, axes = plt.subplots(2, len(SETUPS), figsize=(4 * len(SETUPS), 7))
    for j, (act, scheme) in enumerate(SETUPS):
        for i, when in enumerate(("init", "trained")):
            grid = np.full((len(depths), max(depths) + 1), np.nan)
            for r, d in enumerate(depths):
                n = res["runs"][f"{act}/{scheme}/{d}"][when]
                grid[r, : len(n)] = np.log10(np.maximum(n, 1e-30))
            im = axes[i, j].imshow(grid, aspect="auto", origin="lower", cmap="magma")
            axes[i, j].set(title=f"{act}/{scheme} ({when})", xlabel="layer", ylabel="hidden layers",
                           yticks=range(len(depths)), yticklabels=depths)
            fig.colorbar(im, ax=axes[i, j])
    fig.tight_layout()
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
