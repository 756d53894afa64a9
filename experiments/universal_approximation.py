"""Experiment 5: one hidden layer fitting a bounded continuous 1-D function; error against width,
and deeper networks reaching the same error with fewer units.

Target: g(x) = sin(3x) + 0.3 cos(9x) on [−1, 1] (no noise). Each network is trained by
full-batch Adam to convergence-ish; the error is the RMSE on a dense grid.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from common import figure, main, table


def target(x):
    return np.sin(3 * x) + 0.3 * np.cos(9 * x)


def _fit(sizes, x, v, steps, seed=0):
    net = fnn.MLP(sizes, "tanh")
    params = fnn.init(jax.random.key(seed), net, "glorot")
    opt = optax.adam(optax.cosine_decay_schedule(1e-2, steps))
    update = fnn.make_update_fn(net, "mse", opt)

    @jax.jit
    def train(params):
        def body(carry, _):
            p, s = carry
            p, s, _ = update(p, s, x, v)
            return (p, s), None
        (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        return params

    params = train(params)
    return float(jnp.sqrt(jnp.mean((fnn.forward(net, params, x) - v) ** 2))), net.num_params


def run(quick: bool = False) -> dict:
    x = np.linspace(-1, 1, 256, dtype=np.float32)[:, None]
    v = target(x).astype(np.float32)
    steps = 1500 if quick else 6000
    widths = [1, 2, 4, 8, 16] if quick else [1, 2, 4, 8, 16, 32, 64]
    shallow = [dict(width=w, hidden_units=w, **dict(zip(("rmse", "params"), _fit((1, w, 1), x, v, steps))))
               for w in widths]
    deep_widths = [2, 4] if quick else [2, 3, 4, 6, 8]
    deep = [dict(width=w, depth=3, hidden_units=3 * w,
                 **dict(zip(("rmse", "params"), _fit((1, w, w, w, 1), x, v, steps)))) for w in deep_widths]
    slope = float(np.polyfit(np.log([s["width"] for s in shallow]), np.log([s["rmse"] for s in shallow]), 1)[0])
    return {"steps": steps, "shallow": shallow, "deep": deep, "loglog_slope": slope}


def report(res):
    md = ["# Universal approximation", "",
          f"g(x) = sin(3x) + 0.3 cos(9x) on 256 points of [-1, 1], tanh units, full-batch Adam, "
          f"{res['steps']} steps. RMSE against width for one hidden layer (log-log slope "
          f"{res['loglog_slope']:.2f}), and three hidden layers.", "",
          table(["network", "hidden units", "parameters", "RMSE"],
                [[f"1 x {s['width']}", s["hidden_units"], s["params"], s["rmse"]] for s in res["shallow"]]
                + [[f"3 x {d['width']}", d["hidden_units"], d["params"], d["rmse"]] for d in res["deep"]])]
    for d in res["deep"]:
        match = [s for s in res["shallow"] if s["rmse"] <= d["rmse"]]
        if match:
            md.append(f"- 3 x {d['width']} ({d['hidden_units']} units, RMSE {d['rmse']:.2g}) needs "
                      f"a single layer of {match[0]['width']} units to match.")
        else:
            md.append(f"- 3 x {d['width']} ({d['hidden_units']} units, RMSE {d['rmse']:.2g}): no single "
                      "layer tried here reaches that error.")
    plt = figure()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.loglog([s["hidden_units"] for s in res["shallow"]], [s["rmse"] for s in res["shallow"]], "o-",
              label="1 hidden layer")
    ax.loglog([d["hidden_units"] for d in res["deep"]], [d["rmse"] for d in res["deep"]], "s-",
              label="3 hidden layers")
    ax.set(xlabel="hidden units", ylabel="RMSE", title="error against size")
    ax.legend()
    fig.tight_layout()
    return "\n".join(md), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
