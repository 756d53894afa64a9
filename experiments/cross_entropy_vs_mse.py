"""Experiment 4: cross-entropy against MSE on sigmoid and softmax outputs.

MSE on a probability needs the output non-linearity inside the loss; both losses are
defined here as fnn.Loss objects with hand-written gradients (and checked by gradcheck):

    softmax + MSE:  ℓ = ½‖p − t‖²,  ∂ℓ/∂z = p ⊙ (r − ⟨p, r⟩),  r = p − t,  p = softmax(z)
    sigmoid + MSE:  ℓ = ½(σ(z) − v)²,  ∂ℓ/∂z = (σ(z) − v) σ(z)(1 − σ(z))

The σ(1 − σ) factor is why MSE learns slowly when the output saturates on the wrong side.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from common import band, figure, main, pm, table, tune_and_test
from fnn.stats import mean_ci
from fnn.tables import as_binary


def _softmax_mse_value(z, v):
    t = jax.nn.one_hot(v, z.shape[-1], dtype=z.dtype)
    return 0.5 * jnp.sum((jax.nn.softmax(z) - t) ** 2, axis=-1)


def _softmax_mse_grad(z, v):
    p = jax.nn.softmax(z)
    r = p - jax.nn.one_hot(v, z.shape[-1], dtype=z.dtype)
    return p * (r - jnp.sum(p * r, axis=-1, keepdims=True))


def _sigmoid_mse_value(z, v):
    return 0.5 * jnp.sum((jax.nn.sigmoid(z) - jnp.reshape(v, z.shape)) ** 2, axis=-1)


def _sigmoid_mse_grad(z, v):
    s = jax.nn.sigmoid(z)
    return (s - jnp.reshape(v, z.shape)) * s * (1 - s)


SOFTMAX_MSE = fnn.Loss("softmax_mse", _softmax_mse_value, _softmax_mse_grad, "multiclass")
SIGMOID_MSE = fnn.Loss("sigmoid_mse", _sigmoid_mse_value, _sigmoid_mse_grad, "binary")


def run(quick: bool = False) -> dict:
    seeds = [0, 1] if quick else list(range(10))
    grid = [0.1, 1.0] if quick else [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    res = {"softmax": {}, "sigmoid": {}, "seeds": seeds, "lr_grid": grid}
    setups = {
        "softmax": (lambda s: fnn.data.digits(seed=s), (64, 64, 10),
                    {"cross_entropy": "softmax_cross_entropy", "mse": SOFTMAX_MSE}, 3 if quick else 40),
        "sigmoid": (lambda s: as_binary(fnn.data.moons(seed=s)), (2, 32, 1),
                    {"cross_entropy": "binary_cross_entropy", "mse": SIGMOID_MSE}, 3 if quick else 100),
    }
    for output, (load, sizes, losses, epochs) in setups.items():
        res[f"{output}_epochs"] = epochs
        data = load(0)
        for name, loss in losses.items():
            net = fnn.MLP(sizes, "tanh")
            params = fnn.init(jax.random.key(0), net, "glorot")
            check = fnn.gradcheck(net, loss, params, data.x_train[:16], data.y_train[:16])
            arm = tune_and_test(net, loss, load, seeds=seeds, lr_grid=grid, epochs=epochs, optimizer="sgd",
                                batch_size=32, init="glorot")
            acc = np.asarray(arm["history"]["test_accuracy"])
            arm.update(gradcheck_ok=check.ok, after_one=mean_ci(acc[:, 0])[::2], final=mean_ci(acc[:, -1])[::2])
            res[output][name] = arm
        linear = fnn.fit(fnn.MLP((sizes[0], sizes[-1]), ("identity",)), list(losses.values())[0],
                         fnn.init(jax.random.key(0), fnn.MLP((sizes[0], sizes[-1]), ("identity",))),
                         data.x_train, data.y_train, key=jax.random.key(1), optimizer=optax.adam(1e-2),
                         epochs=epochs, batch_size=32, test=(data.x_test, data.y_test))[1]
        res[f"{output}_linear_accuracy"] = linear["test_accuracy"][-1]
    return res


def report(res):
    rows = []
    for output in ("softmax", "sigmoid"):
        for name, r in res[output].items():
            rows.append([output, name, r["lr"], pm(*r["after_one"]), pm(*r["final"]), r["gradcheck_ok"]])
    n = len(res["seeds"])
    md = ["# Cross-entropy vs MSE", "",
          f"Softmax outputs: digits, 64-64-10 tanh, {res['softmax_epochs']} epochs. Sigmoid output: two moons, "
          f"2-32-1 tanh, {res['sigmoid_epochs']} epochs. Plain SGD, batch 32, glorot init, {n} seeds (each its "
          f"own split and init). Each loss gets its own learning rate from {res['lr_grid']}, chosen by the best "
          "mean area under the validation-accuracy curve on validation splits; test accuracy is mean ± 95% "
          "t-interval over seeds.", "",
          table(["output", "loss", "chosen lr", "test acc. after 1 epoch", "final test acc.", "gradcheck ok"], rows),
          "", f"A linear model (Adam) reaches {res['softmax_linear_accuracy']:.3f} on digits and "
          f"{res['sigmoid_linear_accuracy']:.3f} on moons (seed 0): the reference for what the hidden layer adds.", ""]
    for output in ("softmax", "sigmoid"):
        ce, mse = res[output]["cross_entropy"], res[output]["mse"]
        for when, key in (("after one epoch", "after_one"), ("at the end", "final")):
            (a, ha), (b, hb) = ce[key], mse[key]
            apart = abs(a - b) > ha + hb  # the two 95% intervals do not overlap
            md.append(f"- {output}, {when}: cross-entropy {pm(a, ha)}, MSE {pm(b, hb)}: "
                      + (f"cross-entropy {'ahead' if a > b else 'behind'} by {abs(a - b) * 100:.1f} points."
                         if apart else "the intervals overlap; no difference at these seeds."))
        for name in ("cross_entropy", "mse"):
            if res[output][name].get("lr_at_grid_edge"):
                md.append(f"  ({output} {name}: the chosen rate is at the edge of the grid.)")
    md += ["", "The lecture's point is that MSE learns slowly through a saturating output, because its gradient "
           "carries the output's derivative σ′ (or the softmax Jacobian). With each loss given its own learning "
           "rate, the lines above say whether that shows here: a loss that learns slowly per unit of learning "
           "rate can be given a larger rate, which is what the tuning does."]
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, output in zip(axes, ("softmax", "sigmoid")):
        for name, r in res[output].items():
            band(ax, r, "test_accuracy", label=f"{name} (lr {r['lr']:g})")
        ax.axhline(res[f"{output}_linear_accuracy"], color="gray", ls=":", label="linear model")
        ax.set(title=f"{output} output: test accuracy, mean and 95% band", xlabel="epoch", ylabel="test accuracy",
               ylim=(0.5, 1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.2)
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
