"""Experiment 6: a linear model against an MLP on xor, two moons and spirals, with decision boundaries."""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax

import fnn
from common import figure, main, table

DATASETS = ["xor", "moons", "spirals"]

JSON_OMITS = ("grids",)  # the decision-boundary grids are in the figure


def run(quick: bool = False) -> dict:
    epochs = 40 if quick else 150
    res = {"epochs": epochs, "runs": {}, "grids": {}}
    for name in DATASETS:
        data = fnn.data.load(name)
        k = data.num_classes
        for model, sizes in (("linear", (2, k)), ("mlp", (2, 64, 64, k))):
            net = fnn.MLP(sizes, "relu")
            params = fnn.init(jax.random.key(0), net, "he")
            params, h = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train,
                                key=jax.random.key(1), optimizer=optax.adam(1e-2), epochs=epochs,
                                batch_size=32, test=(data.x_test, data.y_test))
            res["runs"][f"{name}/{model}"] = {"test_accuracy": h["test_accuracy"][-1]}
            g = np.linspace(-2.5, 2.5, 120, dtype=np.float32)
            xx, yy = np.meshgrid(g, g)
            pred = np.asarray(fnn.forward(net, params, np.stack([xx.ravel(), yy.ravel()], 1))).argmax(1)
            res["grids"][f"{name}/{model}"] = pred.reshape(xx.shape).tolist()
            res["grids"][f"{name}/points"] = [data.x_test.tolist(), data.y_test.tolist()]
    return res


def report(res):
    rows = [[n, res["runs"][f"{n}/linear"]["test_accuracy"], res["runs"][f"{n}/mlp"]["test_accuracy"]]
            for n in DATASETS]
    md = ["# Linear vs nonlinear", "",
          f"A linear model (no hidden layer) and a 64-64 ReLU MLP, Adam lr 0.01, {res['epochs']} epochs.", "",
          table(["dataset", "linear test acc.", "MLP test acc."], rows), "",
          "No straight line separates xor or interleaved spirals; the hidden layers' non-linearity "
          "is what bends the decision boundary."]
    plt = figure()
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for j, n in enumerate(DATASETS):
        pts, labels = (np.asarray(a) for a in res["grids"][f"{n}/points"])
        for i, model in enumerate(("linear", "mlp")):
            ax = axes[i, j]
            classes = int(max(labels.max(), np.nanmax(res["grids"][f"{n}/{model}"]))) + 1
            im = ax.imshow(np.asarray(res["grids"][f"{n}/{model}"]), origin="lower", extent=(-2.5, 2.5, -2.5, 2.5),
                           alpha=0.35, cmap="viridis", aspect="auto", vmin=0, vmax=classes - 1)
            ax.scatter(pts[:, 0], pts[:, 1], c=labels, s=8, cmap="viridis", edgecolors="k", linewidths=0.2,
                       vmin=0, vmax=classes - 1)
            ax.set(title=f"{n}: {model} (test accuracy {res['runs'][f'{n}/{model}']['test_accuracy']:.0%})",
                   xlabel="x₁ (standardised)", ylabel="x₂ (standardised)")
            fig.colorbar(im, ax=ax, label="predicted class (background), true class (points)",
                         ticks=range(classes), fraction=0.046)
    fig.tight_layout()
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
