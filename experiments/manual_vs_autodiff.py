"""Experiment 7: train with the hand-written backward and with jax.grad from the same seed, and
report the largest parameter difference after every epoch, in float32 and float64."""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax

import fnn
from common import figure, main, table


def run(quick: bool = False) -> dict:
    epochs = 3 if quick else 20
    res = {"epochs": epochs}
    for dtype in ("float32", "float64"):
        with jax.enable_x64(dtype == "float64"):
            data = fnn.data.digits()
            net = fnn.MLP((64, 128, 128, 10), "relu")
            params = fnn.init(jax.random.key(0), net, "he")
            snapshots = {}
            for method in ("manual", "autodiff"):
                snaps = []
                fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, key=jax.random.key(1),
                        optimizer=optax.adam(1e-3), epochs=epochs, batch_size=32, method=method,
                        on_epoch=lambda s, m, snaps=snaps: snaps.append(jax.tree.map(np.asarray, s.params)))
                snapshots[method] = snaps
            res[dtype] = [max(float(np.abs(a - b).max()) for a, b in
                              zip(jax.tree.leaves(pm), jax.tree.leaves(pa)))
                          for pm, pa in zip(snapshots["manual"], snapshots["autodiff"])]
    return res


def report(res):
    rows = [[e + 1, res["float32"][e], res["float64"][e]] for e in range(res["epochs"])]
    md = ["# Manual vs autodiff over training", "",
          "Digits, 64-128-128-10 ReLU, Adam 1e-3, batch 32, same seed; the largest absolute "
          "difference between any parameter of the two runs after each epoch.", "",
          table(["epoch", "float32", "float64"], rows), "",
          "In float64 the two gradients agree to rounding and so do the trajectories; in float32 "
          "rounding differences between the two computations are amplified by training but stay small."]
    plt = figure()
    fig, ax = plt.subplots(figsize=(5, 4))
    for dtype in ("float32", "float64"):
        ax.semilogy(range(1, res["epochs"] + 1), np.maximum(res[dtype], 1e-18), "o-", label=dtype)
    ax.set(xlabel="epoch", ylabel="max |θ_manual − θ_autodiff|",
           title="manual vs autodiff: largest parameter difference")
    ax.legend()
    fig.tight_layout()
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
