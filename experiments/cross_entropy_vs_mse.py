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
import optax

import fnn
from common import figure, main, table


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
    epochs = 5 if quick else 40
    res = {"epochs": epochs, "softmax": {}, "sigmoid": {}}
    digits = fnn.data.digits()
    moons = fnn.data.moons()
    setups = {
        "softmax": (digits, (64, 64, 10), {"cross_entropy": "softmax_cross_entropy", "mse": SOFTMAX_MSE},
                    digits.y_train, digits.y_test),
        "sigmoid": (moons, (2, 32, 1), {"cross_entropy": "binary_cross_entropy", "mse": SIGMOID_MSE},
                    moons.y_train.astype("float32")[:, None], moons.y_test.astype("float32")[:, None]),
    }
    for output, (data, sizes, losses, ytr, yte) in setups.items():
        for name, loss in losses.items():
            net = fnn.MLP(sizes, "tanh")
            params = fnn.init(jax.random.key(0), net, "glorot")
            check = fnn.gradcheck(net, loss, params, data.x_train[:16], ytr[:16])
            _, h = fnn.fit(net, loss, params, data.x_train, ytr, key=jax.random.key(1),
                           optimizer=optax.sgd(0.1), epochs=epochs, batch_size=32, test=(data.x_test, yte))
            res[output][name] = {"test_accuracy": h["test_accuracy"], "final": h["test_accuracy"][-1],
                                 "gradcheck_ok": check.ok}
    return res


def report(res):
    rows = []
    for output in ("softmax", "sigmoid"):
        for name, r in res[output].items():
            acc = r["test_accuracy"]
            rows.append([output, name, acc[0], acc[len(acc) // 2], r["final"], r["gradcheck_ok"]])
    md = ["# Cross-entropy vs MSE", "",
          f"Softmax outputs: digits, 64-64-10 tanh. Sigmoid output: two moons, 2-32-1 tanh. "
          f"SGD lr 0.1, batch 32, {res['epochs']} epochs, same init for both losses.", "",
          table(["output", "loss", "test acc. after 1 epoch", "halfway", "final", "gradcheck ok"], rows)]
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, output in zip(axes, ("softmax", "sigmoid")):
        for name, r in res[output].items():
            ax.plot(r["test_accuracy"], label=name)
        ax.set(title=f"{output} output", xlabel="epoch", ylabel="test accuracy")
        ax.legend()
    fig.tight_layout()
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
