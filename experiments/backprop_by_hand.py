"""Experiment 1: backpropagation by hand, step by step, next to jax.grad.

The lectures' worked examples and a 2-3-2-2 network: every forward value and every
backward message as a table, with jax.grad's numbers beside the hand-written ones. Deck 001's
exercise -log σ(w·x) node by node beside the slide's numbers, with the slide's errata.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from common import figure, main, table


def _layer(w):
    w = jnp.asarray(w, jnp.float64)
    return {"W": w, "b": jnp.zeros(w.shape[1], jnp.float64)}


def run(quick: bool = False) -> dict:
    with jax.enable_x64(True):
        return _run()


# The 2-3-2-2 network with round weights, so that the trace can be redone on paper. No weight
# pattern cancels: with two classes the loss depends on z₁ − z₂ only, so equal entries in a row
# of W3 (an earlier version had [0.5, 0.5]) would cut that unit off and zero half of ∂R/∂W2.
NET_2322 = dict(
    W1=[[0.1, -0.2, 0.3], [0.4, 0.5, -0.6]], b1=[0.1, 0.0, -0.1],
    W2=[[0.7, -0.8], [0.2, 0.3], [-0.5, 0.6]], b2=[0.0, 0.0],
    W3=[[1.0, -1.0], [0.5, -0.3]], b3=[0.0, 0.2],
)


def _run() -> dict:
    results = {}
    # (x + y) z at (-2, 5, -4), all in fnn pieces: an identity layer with weights (1, 1) adds,
    # q = x + y; the multiply node is an identity layer whose one weight is z, f = q z. Its
    # backward gives ∂f/∂q = z (the message sent down, then ∂f/∂x = ∂f/∂y = z) and ∂f/∂z = q
    # (the gradient of that weight).
    z = -4.0
    net = fnn.MLP((2, 1, 1), ("identity", "identity"))
    params = [_layer([[1.0], [1.0]]), _layer([[z]])]
    f, cache = fnn.forward_with_cache(net, params, jnp.array([[-2.0, 5.0]]))
    grads, dxy = fnn.backward_with_input_grad(net, params, cache, jnp.ones((1, 1)))
    auto = jax.grad(lambda a: (a[0] + a[1]) * a[2])(jnp.array([-2.0, 5.0, z]))
    results["sum_times_product"] = {"f": float(f[0, 0]), "manual": [*map(float, dxy[0]), float(grads[1]["W"][0, 0])],
                                    "jax_grad": [float(a) for a in auto]}
    # Logistic loss -log σ(w·x).
    net = fnn.MLP((3, 1), ("identity",))
    params = [_layer([[1.0], [1.0], [-1.5]])]
    x = jnp.ones((1, 3))
    loss, grads = fnn.value_and_grad(net, "binary_cross_entropy", params, x, jnp.array([1.0]))
    auto = jax.grad(lambda w: -jnp.log(jax.nn.sigmoid(w @ x[0])))(params[0]["W"][:, 0])
    results["logistic"] = {"loss": float(loss), "manual": [float(a) for a in grads[0]["W"][:, 0]],
                           "jax_grad": [float(a) for a in auto]}
    results["logistic_graph"] = _logistic_graph()
    # Chain 2x -> z² -> e^z -> log at x = 0.5.
    square = fnn.Activation("square", lambda z: z * z, lambda z, y: 2 * z)
    exp = fnn.Activation("exp", jnp.exp, lambda z, y: y)
    log = fnn.Activation("log", jnp.log, lambda z, y: 1 / z)
    net = fnn.MLP((1, 1, 1, 1, 1), ("identity", square, exp, log))
    params = [_layer([[2.0]])] + [_layer([[1.0]])] * 3
    y, cache = fnn.forward_with_cache(net, params, jnp.array([[0.5]]))
    grads, dx = fnn.backward_with_input_grad(net, params, cache, jnp.ones((1, 1)))
    auto = jax.grad(lambda x: jnp.log(jnp.exp((2 * x) ** 2)))(0.5)
    # The slide's backward messages ∂y/∂z3, ∂y/∂z2, ∂y/∂z1 (z1 = 2x, z2 = z1², z3 = e^{z2}): each is
    # the gradient at the pre-activation of the layer that reads that node, δz_{l+1} = ∂y/∂b_{l+1}.
    results["chain"] = {"forward": [float(o[0, 0]) for o in cache.outputs], "manual": float(dx[0, 0]),
                        "jax_grad": float(auto), "backward": [float(grads[l]["b"][0]) for l in (3, 2, 1)]}
    # The 2-3-2-2 network: fnn.trace gives every forward value and backward message.
    net = fnn.MLP((2, 3, 2, 2), ("sigmoid", "sigmoid", "identity"))
    params = [{"W": jnp.asarray(NET_2322[f"W{l}"], jnp.float64), "b": jnp.asarray(NET_2322[f"b{l}"], jnp.float64)}
              for l in (1, 2, 3)]
    x, v = jnp.array([[0.5, -1.0]]), jnp.array([1])
    t = fnn.trace(net, "softmax_cross_entropy", params, x, v)
    auto = fnn.value_and_grad(net, "softmax_cross_entropy", params, x, v, method="autodiff")[1]
    results["net_2322"] = {
        "weights": NET_2322, "loss": t.loss,
        "layers": [{"layer": l.layer, "z": l.z[0].tolist(), "y": l.y[0].tolist(), "delta_y": l.delta_y[0].tolist(),
                    "delta_z": l.delta_z[0].tolist(), "grad_W": l.grad_W.tolist(), "grad_b": l.grad_b.tolist()}
                   for l in t.layers],
        "max_abs_diff_vs_jax_grad": max(float(np.abs(l.grad_W - np.asarray(a["W"])).max()) for l, a in
                                        zip(t.layers, auto)),
        "zero_gradient_entries": int(sum((l.grad_W == 0).sum() + (l.grad_b == 0).sum() for l in t.layers)),
    }
    results["numerical_differentiation"] = _finite_differences()
    return results


# Deck 001's exercise graph for l = -log σ(w·x), node by node: μ = w·x (the products γ, ζ, κ and
# the sums λ, μ as one 3 → 1 identity layer), ν = -μ, ξ = e^ν, π = ξ + 1, ϖ = 1/π, ρ = log ϖ, l = -ρ.
# Each step is a width-1 layer: a weight of -1 negates, a bias of 1 adds, activations apply exp, 1/π, log.
SLIDE_NODES = {"γ, ζ, κ": [1.0, 1.0, -1.5], "λ": 2.0, "μ": 0.5, "ν": -0.5, "ξ": 0.6065, "π": 1.6065,
               "ϖ": 0.6225, "ρ": -0.4740, "l": 0.4740}
SLIDE_MESSAGES = {"ρ": -1.0, "ϖ": -1.6065, "π": 0.6224, "ξ": 0.6224, "ν": 0.3775, "μ": -0.3775}


def _logistic_graph(lr: float = 0.1) -> dict:
    exp = fnn.Activation("exp", jnp.exp, lambda z, y: y)
    inv = fnn.Activation("reciprocal", lambda z: 1 / z, lambda z, y: -y * y)
    log = fnn.Activation("log", jnp.log, lambda z, y: 1 / z)
    net = fnn.MLP((3, 1, 1, 1, 1, 1), ("identity", exp, inv, log, "identity"))
    w = [1.0, 1.0, -1.5]
    params = lambda w: [_layer([[a] for a in w]), _layer([[-1.0]]), {**_layer([[1.0]]), "b": jnp.ones(1)},
                        _layer([[1.0]]), _layer([[-1.0]])]
    x = jnp.ones((1, 3))
    out, cache = fnn.forward_with_cache(net, params(w), x)
    grads, dl_dx = fnn.backward_with_input_grad(net, params(w), cache, jnp.ones((1, 1)))
    z = [float(a[0, 0]) for a in cache.pre_activations]
    y = [float(a[0, 0]) for a in cache.outputs]
    nodes = dict(zip(["μ", "ν", "ξ", "π", "ϖ", "ρ", "l"], [z[0], z[1], y[1], z[2], y[2], y[3], y[4]]))
    # The message at a layer's pre-activation is ∂l/∂b of that layer; the one at its output is the
    # message its input receives in the layer above (δz_{l+1} W_{l+1}ᵀ).
    dz = [float(g["b"][0]) for g in grads]
    up = [float(p["W"][0, 0]) for p in params(w)]
    messages = {"ρ": dz[4] * up[4], "ϖ": dz[3], "π": dz[2], "ξ": dz[2] * up[2], "ν": dz[1], "μ": dz[0]}
    # Inside the dot product: the products γ, ζ, κ = w_i x_i and the partial sum λ = γ + ζ; a sum node
    # passes its message on unchanged, so each of them receives ∂l/∂μ.
    products = [a * float(b) for a, b in zip(w, x[0])]
    nodes = {"γ, ζ, κ": products, "λ": products[0] + products[1], **nodes}
    g = [float(a) for a in grads[0]["W"][:, 0]]
    step = optax.apply_updates(jnp.asarray(w), fnn.plain_gd(lr).update(jnp.asarray(g), None)[0])
    loss_after = float(fnn.forward(net, params(step.tolist()), x)[0, 0])
    auto = jax.grad(lambda w, x: -jnp.log(jax.nn.sigmoid(w @ x)), argnums=(0, 1))(jnp.asarray(w), x[0])
    return {"nodes": nodes, "messages": messages, "slide_nodes": SLIDE_NODES, "slide_messages": SLIDE_MESSAGES,
            "dl_dw": g, "dl_dx": [float(a) for a in dl_dx[0]], "jax_grad_dl_dw_dl_dx": [a.tolist() for a in auto],
            "lr": lr, "w_after_step": step.tolist(), "loss_before": float(out[0, 0]), "loss_after": loss_after}


def _logistic_md(r: dict) -> list[str]:
    g = r["logistic_graph"]
    val = lambda a: ", ".join(f"{b:.4f}" for b in a) if isinstance(a, list) else f"{a:.4f}"
    rows = [[n, val(v), val(g["slide_nodes"][n]), val(g["messages"][n]) if n in g["messages"] else "",
             val(g["slide_messages"][n]) if n in g["slide_messages"] else ""] for n, v in g["nodes"].items()]
    return ["", "## Deck 001's exercise: l = -log σ(w·x), x = (1, 1, 1), w = (1, 1, -1.5), node by node", "",
            "The slide's graph as width-1 fnn layers: the dot product μ = w·x is one 3 → 1 identity layer "
            "(its products γ, ζ, κ and partial sum λ are inside it, and each receives ∂l/∂μ, since a sum "
            "passes its message on), then ν = -μ, ξ = e^ν, π = ξ + 1, ϖ = 1/π, ρ = log ϖ, l = -ρ. Each "
            "message ∂l/∂node comes from fnn's backward pass (∂l/∂b of the layer whose pre-activation "
            "the node is, or the message its input receives).", "",
            table(["node", "value (fnn)", "slide", "∂l/∂node (fnn)", "slide"], rows), "",
            f"∂l/∂w = ({val(g['dl_dw'])}) and ∂l/∂x = ({val(g['dl_dx'])}) (`fnn.backward_with_input_grad`): "
            "∂l/∂x3 = w3 · ∂l/∂μ, the slide's 0.5663. One gradient-descent step (`fnn.plain_gd`, η = "
            f"{g['lr']}) gives w = ({val(g['w_after_step'])}), i.e. w1 + 0.3775η, and the loss falls from "
            f"{g['loss_before']:.5f} to {g['loss_after']:.5f}.", "",
            "The slide's errata: the loss is 0.47408, which rounds to 0.4741, not the slide's 0.4740; the "
            f"message at π (and ξ) is 1/π = {g['messages']['π']:.5f}, which rounds to 0.6225, not 0.6224; and "
            "the update reads \"w1 ← w1 + η ∂l/∂w1\", whose sign is wrong: gradient descent is w1 − η ∂l/∂w1, "
            "which is the slide's result w1 + 0.3775η since ∂l/∂w1 = -0.3775."]


def _finite_differences() -> dict:
    """Forward and central differences of f(x) = sin(x) e^x at x = 1 against the exact
    derivative (what jax.grad gives), as the step δ shrinks: truncation error falls (∝ δ and
    δ²), rounding error (∝ ε/δ) grows, so each has a best δ."""
    f = lambda a: jnp.sin(a) * jnp.exp(a)
    x0 = 1.0
    exact = float(jax.grad(f)(x0))
    deltas = np.logspace(-1, -13, 49)
    forward = [abs(float((f(x0 + d) - f(x0)) / d) - exact) for d in deltas]
    central = [abs(float((f(x0 + d) - f(x0 - d)) / (2 * d)) - exact) for d in deltas]
    return {"x": x0, "exact": exact, "deltas": deltas.tolist(), "forward_error": forward, "central_error": central,
            "best_forward": float(deltas[int(np.argmin(forward))]), "best_central": float(deltas[int(np.argmin(central))])}


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
          ]), "", "Backward messages of the chain y = log(exp((2x)²)) at x = 0.5, as on the slide: "
          "∂y/∂z3 = 1/z3 = {:.4f} (1/e), ∂y/∂z2 = {:.4f}, ∂y/∂z1 = {:.4f}, then dy/dx = {:.4f}.".format(
              *r["chain"]["backward"], r["chain"]["manual"]),
          *_logistic_md(r),
          "", "## 2-3-2-2 network (sigmoid, sigmoid, softmax cross-entropy), x = (0.5, -1), label 1", ""]
    n = r["net_2322"]
    weights = [[f"W{l}", str(n["weights"][f"W{l}"]), f"b{l}", str(n["weights"][f"b{l}"])] for l in (1, 2, 3)]
    md += ["Weights (rows: inputs, columns: units):", "", table(["", "W", "", "b"], weights), ""]
    rows = [[l["layer"], fmt(l["z"]), fmt(l["y"]), fmt(l["delta_y"]), fmt(l["delta_z"]),
             "; ".join(fmt(row) for row in l["grad_W"])] for l in n["layers"]]
    md += [table(["layer", "z_l", "y_l = f(z_l)", "δy_l (arriving)", "δz_l", "∂R/∂W_l (rows)"], rows), "",
           f"Loss R = {n['loss']:.6f}. Largest difference between the hand-written and jax.grad weight gradients: "
           f"{n['max_abs_diff_vs_jax_grad']:.2e}; gradient entries exactly zero: {n['zero_gradient_entries']} (the "
           "weights are chosen so that none cancels, so a bug on any path shows). (`fnn.trace(net, loss, params, x, "
           "v)` prints this table.)", "",
           "## Numerical differentiation", "",
           f"d/dx sin(x)eˣ at x = {r['numerical_differentiation']['x']}: the forward difference is best at "
           f"δ ≈ {r['numerical_differentiation']['best_forward']:.0e}, the central difference at "
           f"δ ≈ {r['numerical_differentiation']['best_central']:.0e} (float64). Below those, rounding error "
           "(∝ ε/δ) dominates the truncation error (∝ δ and δ²). Automatic differentiation has neither."]
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for l in n["layers"]:
        axes[0].bar([f"layer {l['layer']}: δz{i + 1}" for i in range(len(l["delta_z"]))], l["delta_z"])
    axes[0].set(title="backward messages δz_l in the 2-3-2-2 network", ylabel="δz = ∂R/∂z")
    axes[0].tick_params(axis="x", rotation=45)
    nd = r["numerical_differentiation"]
    axes[1].loglog(nd["deltas"], np.maximum(nd["forward_error"], 1e-17), "o-", ms=3, label="forward (f(x+δ)−f(x))/δ")
    axes[1].loglog(nd["deltas"], np.maximum(nd["central_error"], 1e-17), "s-", ms=3,
                   label="central (f(x+δ)−f(x−δ))/2δ")
    axes[1].set(xlabel="step δ", ylabel="|error| against the exact derivative",
                title="finite differences: truncation against rounding (float64)")
    axes[1].invert_xaxis()
    axes[1].grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.3, top=0.9, wspace=0.25)
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
