"""Experiment 8: the lectures' PyTorch example reproduced with fnn.

    model = Sequential(Linear(2, 3), ReLU(), Linear(3, 1), Flatten(0, 1))
    loss_fn = MSELoss(reduction='sum'); SGD(lr=1e-3); 2000 steps, loss printed every 100

The slide elides the data (x = …, y = …); here x is 200 points of [−π, π], the two
input features are (x, x²) and the target is sin(x). With a summed loss the step grows
with the number of points: at 2000 points lr 1e-3 diverges (both in fnn and PyTorch),
at 200 it converges after an oscillating start. MSELoss(sum) is Σ(y − v)², which is
2B times fnn's mse risk (½(y − v)², batch mean), so SGD with lr 1e-3 on the sum equals
fnn.plain_gd with lr 2B·1e-3 on the mean: the same updates, and the printed loss is
2B·R. When PyTorch is installed the same model is trained from the same initial weights
and both loss columns are reported.

The slide's last line cannot run for this model. It prints
``linear_layer.bias.item()`` and ``linear_layer.weight[:, k].item()`` for k = 0, 1, 2: a
fitted cubic ``y = b + w₀ x + w₁ x² + w₂ x³``, which is what it prints for the
one-layer ``Linear(3, 1)`` on features (x, x², x³) that the line was written for. Here
``model[0]`` is ``Linear(2, 3)``: its bias has 3 entries and ``weight`` is 3 × 2, so
``.item()`` (one element only) fails on the bias and on every column, and ``weight[:, 2]``
is out of range. With PyTorch installed each expression is run on the trained model and the
error it raises is recorded; without it the same verdict is derived from the shapes.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from common import figure, main, table

LR = 1e-3


def _data(n):
    x = np.linspace(-np.pi, np.pi, n, dtype=np.float64)
    return np.stack([x, x**2], 1), np.sin(x)[:, None]


def _torch_losses(params, xx, y, steps):
    import torch

    torch.set_default_dtype(torch.float64)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1), torch.nn.Flatten(0, 1))
    with torch.no_grad():
        for layer, p in zip((model[0], model[2]), params):
            layer.weight.copy_(torch.tensor(np.asarray(p["W"]).T))
            layer.bias.copy_(torch.tensor(np.asarray(p["b"])))
    loss_fn = torch.nn.MSELoss(reduction="sum")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    xt, yt = torch.tensor(xx), torch.tensor(y[:, 0])
    losses = {-1: loss_fn(model(xt), yt).item()}
    for t in range(steps):
        loss = loss_fn(model(xt), yt)
        if t % 100 == 99:
            losses[t] = loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses, model


SLIDE_EXPRESSIONS = ("bias.item()", "weight[:, 0].item()", "weight[:, 1].item()", "weight[:, 2].item()")


def _slide_print_line(model=None) -> dict:
    """Each value the slide's final ``print`` asks of ``model[0]``: what it gives or raises.
    With ``model=None`` (no PyTorch) the verdict follows from Linear(2, 3)'s shapes."""
    out = {}
    for expr in SLIDE_EXPRESSIONS:
        if model is not None:
            layer = model[0]
            try:
                out[expr] = {"runs": True, "value": eval(f"layer.{expr}", {}, {"layer": layer})}
            except (RuntimeError, IndexError, ValueError) as e:
                out[expr] = {"runs": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
        elif expr.startswith("bias"):
            out[expr] = {"runs": False, "error": "bias has shape (3,): .item() needs exactly one element"}
        elif expr.startswith("weight[:, 2]"):
            out[expr] = {"runs": False, "error": "weight has shape (3, 2): column 2 does not exist"}
        else:
            out[expr] = {"runs": False, "error": "weight[:, k] has shape (3,): .item() needs exactly one element"}
    return {"checked_with": "torch" if model is not None else "shapes (PyTorch not installed)", "expressions": out}


def run(quick: bool = False) -> dict:
    n = 200
    steps = 2000
    with jax.enable_x64(True):
        xx, y = _data(n)
        net = fnn.MLP((2, 3, 1), ("relu", "identity"))
        # PyTorch's default Linear init: U(−1/√fan_in, 1/√fan_in) for weights and biases.
        keys = jax.random.split(jax.random.key(0), 4)
        params = [{"W": jax.random.uniform(keys[2 * i], (a, b), minval=-a**-0.5, maxval=a**-0.5),
                   "b": jax.random.uniform(keys[2 * i + 1], (b,), minval=-a**-0.5, maxval=a**-0.5)}
                  for i, (a, b) in enumerate(((2, 3), (3, 1)))]
        step = fnn.make_update_step(net, "mse", fnn.plain_gd(2 * n * LR))
        p, s = jax.tree.map(jnp.array, params), fnn.plain_gd(1.0).init(params)
        fnn_losses = {-1: float(2 * n * fnn.value_and_grad(net, "mse", params, xx, y)[0])}
        for t in range(steps):
            p, s, m = step(p, s, xx, y)
            if t % 100 == 99:
                fnn_losses[t] = float(2 * n * m["loss"])
        try:
            torch_losses, model = _torch_losses(params, xx, y, steps)
        except ImportError:
            torch_losses, model = None, None
    return {"n": n, "steps": steps, "fnn": fnn_losses, "torch": torch_losses,
            "slide_print_line": _slide_print_line(model)}


def report(res):
    rows = [["initial" if t == -1 else t, res["fnn"][t], res["torch"][t] if res["torch"] else "not installed"] for t in res["fnn"]]
    md = ["# The lectures' PyTorch example in fnn", "",
          f"{res['n']} points, features (x, x²), target sin(x), Linear(2,3)-ReLU-Linear(3,1), "
          f"sum-of-squares loss, SGD lr 1e-3, {res['steps']} steps, float64, same initial weights.", "",
          table(["step", "fnn loss", "PyTorch loss"], rows), "",
          "## The slide's final print line does not run for this model", "",
          "The slide ends with `print(f'Result: y = {linear_layer.bias.item()} + {linear_layer.weight[:, 0].item()} x"
          " + ...')`, a cubic's coefficients: the line belongs to a one-layer `Linear(3, 1)` on (x, x², x³). For "
          "the slide's own `model[0] = Linear(2, 3)` it fails (checked with "
          f"{res['slide_print_line']['checked_with']}):", "",
          table(["expression on model[0]", "result"],
                [[f"`{e}`", r["error"] if not r["runs"] else f"{r['value']:.4g}"]
                 for e, r in res["slide_print_line"]["expressions"].items()]), "",
          "This network is not a polynomial in x: its fitted function is "
          "y = W₂ᵀ relu(W₁ᵀ (x, x²) + b₁) + b₂, 13 parameters (W₁ 2 × 3, b₁, W₂ 3 × 1, b₂) and no four coefficients "
          "to print."]
    plt = figure()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.semilogy(list(res["fnn"]), list(res["fnn"].values()), "o-", label="fnn")
    if res["torch"]:
        ax.semilogy(list(res["torch"]), list(res["torch"].values()), "x--", label="PyTorch")
    ax.set(xlabel="step", ylabel="sum of squared errors")
    ax.legend()
    fig.tight_layout()
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
