"""Experiment 1: backpropagation by hand, step by step, next to jax.grad.

The lectures' worked examples and a 2-3-2-2 network: every forward value and every
backward message as a table, with jax.grad's numbers beside the hand-written ones.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

import fnn
from common import figure, main, table


def _layer(w):
    w = jnp.asarray(w, jnp.float64)
    return {"W": w, "b": jnp.zeros(w.shape[1], jnp.float64)}


def run(quick: bool = False) -> dict:
    with jax.enable_x64(True):
        return _run()


def _run() -> dict:
    results = {}
    # (x + y) z at (-2, 5, -4): one identity layer computes q = x + y; ∂f/∂q = z.
    net = fnn.MLP((2, 1), ("identity",))
    params = [_layer([[1.0], [1.0]])]
    q, cache = fnn.forward_with_cache(net, params, jnp.array([[-2.0, 5.0]]))
    _, dxy = fnn.backward_with_input_grad(net, params, cache, jnp.array([[-4.0]]))
    auto = jax.grad(lambda a: (a[0] + a[1]) * a[2])(jnp.array([-2.0, 5.0, -4.0]))
    results["sum_times_product"] = {"f": float(q[0, 0]) * -4.0, "manual": [*map(float, dxy[0]), float(q[0, 0])],
                                    "jax_grad": [float(a) for a in auto]}
    # Logistic loss -log σ(w·x).
    net = fnn.MLP((3, 1), ("identity",))
    params = [_layer([[1.0], [1.0], [-1.5]])]
    x = jnp.ones((1, 3))
    loss, grads = fnn.value_and_grad(net, "binary_cross_entropy", params, x, jnp.array([1.0]))
    auto = jax.grad(lambda w: -jnp.log(jax.nn.sigmoid(w @ x[0])))(params[0]["W"][:, 0])
    results["logistic"] = {"loss": float(loss), "manual": [float(a) for a in grads[0]["W"][:, 0]],
                           "jax_grad": [float(a) for a in auto]}
    # Chain 2x -> z² -> e^z -> log at x = 0.5.
    square = fnn.Activation("square", lambda z: z * z, lambda z, y: 2 * z)
    exp = fnn.Activation("exp", jnp.exp, lambda z, y: y)
    log = fnn.Activation("log", jnp.log, lambda z, y: 1 / z)
    net = fnn.MLP((1, 1, 1, 1, 1), ("identity", square, exp, log))
    params = [_layer([[2.0]])] + [_layer([[1.0]])] * 3
    y, cache = fnn.forward_with_cache(net, params, jnp.array([[0.5]]))
    _, dx = fnn.backward_with_input_grad(net, params, cache, jnp.ones((1, 1)))
    auto = jax.grad(lambda x: jnp.log(jnp.exp((2 * x) ** 2)))(0.5)
    results["chain"] = {"forward": [float(o[0, 0]) for o in cache.outputs], "manual": float(dx[0, 0]),
                        "jax_grad": float(auto)}
    # A 2-3-2-2 network: every forward value and backward message.
    net = fnn.MLP((2, 3, 2, 2), ("sigmoid", "sigmoid", "identity"))
    params = fnn.init(jax.random.key(0), net, "glorot")
    x = jnp.array([[0.5, -1.0]])
    v = jnp.array([1])
    out, cache = fnn.forward_with_cache(net, params, x)
    dout = fnn.risk_grad(fnn.get_loss("softmax_cross_entropy"), out, v)
    # The backward pass is fnn's own, one layer at a time: backward_step gives each layer's
    # δz_l and the message δy_{l-1} it sends down.
    messages, delta_y = [], dout
    for l in reversed(range(net.num_layers)):
        step = fnn.backward_step(net, params, cache, l, delta_y)
        messages.append({"layer": l + 1, "delta_y": delta_y[0].tolist(), "delta_z": step.delta_z[0].tolist()})
        delta_y = step.delta_in
    grads = fnn.backward(net, params, cache, dout)
    auto = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v, method="autodiff")[1]
    results["net_2322"] = {
        "z": [z[0].tolist() for z in cache.pre_activations], "y": [y[0].tolist() for y in cache.outputs],
        "messages": messages[::-1],
        "max_abs_diff_vs_jax_grad": max(float(jnp.abs(a - b).max()) for a, b in
                                        zip(jax.tree.leaves(grads), jax.tree.leaves(auto))),
    }
    return results


def report(r: dict) -> tuple[str, object]:
    fmt = lambda xs: ", ".join(f"{a:.4f}" for a in xs)
    md = ["# Backpropagation by hand", "",
          "Each example is computed with fnn's own layers, activations, losses and backward pass.", "",
          table(["example", "value", "hand-written gradient", "jax.grad"], [
              ["(x+y)z at (-2,5,-4)", r["sum_times_product"]["f"], fmt(r["sum_times_product"]["manual"]),
               fmt(r["sum_times_product"]["jax_grad"])],
              ["-log σ(w·x), w=(1,1,-1.5)", r["logistic"]["loss"], fmt(r["logistic"]["manual"]),
               fmt(r["logistic"]["jax_grad"])],
              ["log(exp((2x)²)) at 0.5", r["chain"]["forward"][-1], f"{r['chain']['manual']:.4f}",
               f"{r['chain']['jax_grad']:.4f}"],
          ]), "", "## 2-3-2-2 network (sigmoid, sigmoid, softmax cross-entropy), x = (0.5, -1), label 1", ""]
    rows = []
    for l, (z, y) in enumerate(zip(r["net_2322"]["z"], r["net_2322"]["y"]), 1):
        m = r["net_2322"]["messages"][l - 1]
        rows.append([l, fmt(z), fmt(y), fmt(m["delta_y"]), fmt(m["delta_z"])])
    md += [table(["layer", "z_l", "y_l = f(z_l)", "δy_l", "δz_l"], rows), "",
           f"Largest difference between hand-written and jax.grad parameter gradients: "
           f"{r['net_2322']['max_abs_diff_vs_jax_grad']:.2e}."]
    plt = figure()
    fig, ax = plt.subplots(figsize=(6, 3))
    msgs = r["net_2322"]["messages"]
    for m in msgs:
        ax.bar([f"L{m['layer']} δz{i + 1}" for i in range(len(m["delta_z"]))], m["delta_z"])
    ax.set(title="backward messages δz_l in the 2-3-2-2 network", ylabel="δz")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
