"""fnn's exact GGN diagonal against BackPACK's ``DiagGGNExact``, timed in one process.

The same network (ReLU hidden layers, identity output, softmax cross-entropy, float32) with the
same weights (fnn's He init copied into ``torch.nn.Linear``) and the same batch in both; the two
diagonals are first checked to agree to float32 rounding. PyTorch runs on 2 threads
(``torch.set_num_threads(2)``), JAX on its default CPU threads; the torch rows are timed on 1
thread as well, because on a CPU shared with other work torch's two OpenMP threads can lose far
more than half their speed (a 8-16-4 network's ``loss.backward()`` took 80 ms on 2 threads and
0.8 ms on 1 at a load average of 15 on 2 cores), and the goal is judged against BackPACK's faster
thread count in each round. Every row is warmed up, then
timed in interleaved rounds whose order is reversed every other round; in each round every row
makes one untimed call and then several timed ones. The figures are medians over rounds, and
the ratio fnn / BackPACK is taken round by round (the two timed close together) with a
bootstrap 95% interval of its median and the min-max over rounds. A second, separately
compiled copy of the fnn row is the run's resolution. A plain gradient in each framework
(fnn's hand-written backward; ``loss.backward()`` on a plain, unextended copy of the torch
model) is the common yardstick: each GGN row is also given as a multiple of its own
framework's gradient, which other work on the machine inflates about as much as the GGN row.
The load average (``os.getloadavg``) is recorded before and after each size.

    python experiments/ggn_vs_backpack.py           # needs torch and backpack-for-pytorch
    python experiments/ggn_vs_backpack.py --quick   # tiny sizes, 3 rounds (the test suite's run)
"""

from __future__ import annotations

import importlib.metadata
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn.core.backprop import Objective, manual_value_and_grad

from common import figure, main, table

SIZES = {"mnist": ((784, 1024, 1024, 10), 256), "digits": ((64, 128, 128, 10), 128)}
QUICK_SIZES = {"mnist": ((24, 32, 32, 10), 16), "digits": ((8, 16, 16, 4), 8)}
TORCH_THREADS = 2
GOAL_RATIO = "fnn / BackPACK at its faster thread count"
ROWS = ("fnn exact GGN diagonal", "fnn exact GGN diagonal (2nd copy)", "fnn plain gradient (manual)",
        "BackPACK DiagGGNExact", "PyTorch plain gradient (loss.backward())",
        "BackPACK DiagGGNExact (torch 1 thread)", "PyTorch plain gradient (torch 1 thread)")
GGN, TWIN, GRAD, BACKPACK, TORCH_GRAD, BACKPACK_1, TORCH_GRAD_1 = ROWS


def _torch():
    """torch and BackPACK, or one line that says what to install."""
    try:
        import torch
        import backpack
        import backpack.extensions
    except ImportError as e:
        raise SystemExit(f"ggn_vs_backpack needs torch and backpack-for-pytorch ({e.name} is missing): "
                         "install your platform's CPU torch wheel, then fnn's 'oracles' extra") from None
    return torch, backpack


def gflop(sizes, batch) -> dict:
    """GFLOP of one call of each computation (2 per multiply-add, GEMMs only).

    fnn's GGN diagonal: the forward pass, the ``k = d_L − 1`` factor columns per example (softmax
    cross-entropy's Hessian has rank ``d_L − 1``) through every layer above the first
    (``(B·k, d_l) @ W_lᵀ``), and one ``(y²)ᵀ Σ_s δz²`` GEMM per layer. BackPACK's pass does the
    same with ``k = d_L`` columns (its ``d_L × d_L`` square-root factor), plus the gradient's
    backward (``loss.backward()`` runs it).
    """
    layers = list(zip(sizes[:-1], sizes[1:]))
    forward = sum(2 * batch * a * b for a, b in layers)
    backward = forward + sum(2 * batch * a * b for a, b in layers[1:])  # no ∂R/∂x for the input layer
    columns = lambda k: sum(2 * batch * k * a * b for a, b in layers[1:])
    squares = forward
    return {"plain gradient": (forward + backward) / 1e9,
            "fnn GGN diagonal": (forward + columns(sizes[-1] - 1) + squares) / 1e9,
            "BackPACK DiagGGNExact": (forward + backward + columns(sizes[-1]) + squares) / 1e9}


def _problem(sizes, batch):
    net, loss = fnn.MLP(sizes, "relu"), fnn.get_loss("softmax_cross_entropy")
    params = fnn.init(jax.random.key(0), net, "he")
    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(k1, (batch, sizes[0]), jnp.float32)
    v = jax.random.randint(k2, (batch,), 0, sizes[-1])
    return net, loss, params, x, v


def _torch_models(torch, backpack, params, x, v):
    """BackPACK's extended model and loss, and a plain copy, all with fnn's weights."""
    def model():
        layers = []
        for i, p in enumerate(params):
            lin = torch.nn.Linear(*p["W"].shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.asarray(p["W"]).T.copy()))
                lin.bias.copy_(torch.from_numpy(np.asarray(p["b"]).copy()))
            layers += [lin] + ([torch.nn.ReLU()] if i < len(params) - 1 else [])
        return torch.nn.Sequential(*layers)

    extended = backpack.extend(model())
    lossf = backpack.extend(torch.nn.CrossEntropyLoss())
    tx, tv = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(v, np.int64))
    return extended, lossf, model(), torch.nn.CrossEntropyLoss(), tx, tv


def _rows(sizes, batch):
    """The timed rows, ``run(k)``: ``k`` calls, finished; and the agreement of the two diagonals."""
    torch, backpack = _torch()
    torch.set_num_threads(TORCH_THREADS)
    net, loss, params, x, v = _problem(sizes, batch)
    objective = Objective(net, loss)
    ggn = jax.jit(lambda p: fnn.ggn_diagonal(net, loss, p, x, v))
    twin = jax.jit(lambda p: fnn.ggn_diagonal(net, loss, p, x, v))  # the same program, compiled again
    grad = jax.jit(lambda p: manual_value_and_grad(objective, p, x, v))
    extended, lossf, plain, plain_lossf, tx, tv = _torch_models(torch, backpack, params, x, v)
    extension = backpack.extensions.DiagGGNExact

    def jax_row(fn):
        def run(k):
            for _ in range(k):
                out = fn(params)
            jax.block_until_ready(out)
        return run

    def backpack_row(k):
        for _ in range(k):
            extended.zero_grad(set_to_none=True)
            with backpack.backpack(extension()):
                lossf(extended(tx), tv).backward()

    def torch_row(k):
        for _ in range(k):
            plain.zero_grad(set_to_none=True)
            plain_lossf(plain(tx), tv).backward()

    def one_thread(row):  # the same row with torch on 1 thread: what other work on the CPU costs its 2 threads
        def run(k):
            torch.set_num_threads(1)
            try:
                row(k)
            finally:
                torch.set_num_threads(TORCH_THREADS)
        return run

    rows = dict(zip(ROWS, (jax_row(ggn), jax_row(twin), jax_row(grad), backpack_row, torch_row,
                           one_thread(backpack_row), one_thread(torch_row))))
    backpack_row(1)
    torch_row(1)
    return rows, _agreement(ggn(params), extended, grad(params)[1], plain)


def _agreement(ours, extended, our_grad, plain) -> dict:
    """Largest relative difference (‖a − b‖ / ‖b‖, per tensor) of the GGN diagonals and of the
    gradients, fnn against BackPACK / PyTorch."""
    linears = [m for m in extended if hasattr(m, "weight")]
    plain_linears = [m for m in plain if hasattr(m, "weight")]
    rel = lambda a, b: float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-30))
    ggn = [rel(o["W"], m.weight.diag_ggn_exact.detach().numpy().T) for o, m in zip(ours, linears)]
    ggn += [rel(o["b"], m.bias.diag_ggn_exact.detach().numpy()) for o, m in zip(ours, linears)]
    grads = [rel(o["W"], m.weight.grad.detach().numpy().T) for o, m in zip(our_grad, plain_linears)]
    return {"ggn_diagonal_max_rel_diff": max(ggn), "gradient_max_rel_diff": max(grads)}


def _calls(rows, target_s: float) -> dict:
    """Warms every row (three calls), then picks its calls per round: about ``target_s`` of work, at least 3."""
    calls = {}
    for name, run in rows.items():
        run(3)
        t = time.perf_counter()
        run(2)
        calls[name] = max(3, int(round(target_s / max((time.perf_counter() - t) / 2, 1e-7))))
    return calls


def time_rounds(rows, calls, rounds: int) -> tuple[dict, list]:
    """Seconds per call of every row in every round; the order is reversed every other round.
    Each row makes one untimed call right before its timed ones."""
    times, orders = {name: [] for name in rows}, []
    for r in range(rounds):
        order = list(rows) if r % 2 == 0 else list(rows)[::-1]
        orders.append(order)
        for name in order:
            rows[name](1)
            t = time.perf_counter()
            rows[name](calls[name])
            times[name].append((time.perf_counter() - t) / calls[name])
    return times, orders


def interval(per_round, seed: int = 0) -> dict:
    """The median over rounds of a per-round ratio, a bootstrap 95% interval of it (rounds
    resampled, scipy's percentile bootstrap) and the min and max over rounds."""
    from scipy.stats import bootstrap

    a = np.asarray(per_round, np.float64)
    ci = bootstrap((a,), np.median, confidence_level=0.95, n_resamples=2000, method="percentile",
                   random_state=np.random.default_rng(seed)).confidence_interval
    return {"median": float(np.median(a)), "ci95": [float(ci.low), float(ci.high)], "min": float(a.min()),
            "max": float(a.max()), "per_round": a.tolist()}


def bench(name: str, sizes, batch, rounds: int, target_s: float) -> dict:
    load_before = os.getloadavg()
    rows, agreement = _rows(sizes, batch)
    if agreement["ggn_diagonal_max_rel_diff"] > 1e-4 or agreement["gradient_max_rel_diff"] > 1e-4:
        raise SystemExit(f"{name}: fnn and BackPACK disagree beyond float32 rounding ({agreement}): nothing timed")
    calls = _calls(rows, target_s)
    times, orders = time_rounds(rows, calls, rounds)
    t = {k: np.asarray(a) for k, a in times.items()}
    flops = gflop(sizes, batch)
    ratios = {"fnn / BackPACK": interval(t[GGN] / t[BACKPACK]),
              "fnn / BackPACK (torch 1 thread)": interval(t[GGN] / t[BACKPACK_1]),
              "fnn / BackPACK at its faster thread count": interval(t[GGN] / np.minimum(t[BACKPACK], t[BACKPACK_1])),
              "resolution: fnn 2nd copy / fnn": interval(t[TWIN] / t[GGN]),
              "fnn GGN / fnn gradient": interval(t[GGN] / t[GRAD]),
              "BackPACK / PyTorch gradient": interval(t[BACKPACK] / t[TORCH_GRAD]),
              "BackPACK / PyTorch gradient (torch 1 thread)": interval(t[BACKPACK_1] / t[TORCH_GRAD_1]),
              "PyTorch gradient / fnn gradient": interval(t[TORCH_GRAD] / t[GRAD]),
              "fnn / BackPACK, each over its own gradient": interval((t[GGN] / t[GRAD]) / (t[BACKPACK] / t[TORCH_GRAD]))}
    return {"config": name, "sizes": list(sizes), "batch": batch, "rounds": rounds, "calls_per_round": calls,
            "torch_threads": TORCH_THREADS, "cpus": len(os.sched_getaffinity(0)), "agreement": agreement,
            "gflop": flops, "ms": {k: 1e3 * statistics.median(a) for k, a in times.items()},
            "ms_per_round": {k: [1e3 * s for s in a] for k, a in times.items()}, "ratios": ratios,
            "first_orders": orders[:2], "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg())}


def run(quick: bool) -> dict:
    torch, backpack = _torch()
    sizes = QUICK_SIZES if quick else SIZES
    rounds, target = (3, 0.005) if quick else (15, 0.25)
    out = {"versions": {"jax": jax.__version__, "torch": torch.__version__.split("+")[0],
                        "backpack": importlib.metadata.version("backpack-for-pytorch")},
           "device": jax.devices()[0].device_kind, "goal": "fnn / BackPACK <= 0.5 at the MNIST size",
           "sections": [bench(name, s, b, rounds, target) for name, (s, b) in sizes.items()]}
    mnist = out["sections"][0]["ratios"][GOAL_RATIO]
    out["goal_met"] = None if quick else bool(mnist["ci95"][1] <= 0.5)  # tiny sizes measure overhead only
    return out


def _fmt_ratio(r) -> str:
    return f"{r['median']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] ({r['min']:.3f}-{r['max']:.3f})"


def report(res: dict):
    v = res["versions"]
    lines = ["# Exact GGN diagonal: fnn against BackPACK's DiagGGNExact", "",
             f"JAX {v['jax']} ({res['device']}, default threads), PyTorch {v['torch']} on "
             f"{TORCH_THREADS} threads, BackPACK {v['backpack']}; ReLU, softmax cross-entropy, float32, same weights "
             "and batch; medians over interleaved rounds (order reversed every other round). Ratios are per round: "
             "median [bootstrap 95% interval of the median] (min-max over rounds).", ""]
    for s in res["sections"]:
        ag, fl = s["agreement"], s["gflop"]
        lines += [f"## {s['config']}: {tuple(s['sizes'])}, batch {s['batch']}, {s['rounds']} rounds", "",
                  f"Load average (1, 5, 15 min) before {', '.join(f'{a:.2f}' for a in s['loadavg_before'])}, after "
                  f"{', '.join(f'{a:.2f}' for a in s['loadavg_after'])} on {s['cpus']} CPUs. The diagonals agree to "
                  f"{ag['ggn_diagonal_max_rel_diff']:.1e} (largest relative difference of a tensor), the gradients to "
                  f"{ag['gradient_max_rel_diff']:.1e}.", "",
                  table(["row", "median ms per call", "calls per round"],
                        [[k, float(m), s["calls_per_round"][k]] for k, m in s["ms"].items()]), "",
                  table(["ratio", "median [95% CI] (min-max)"], [[k, _fmt_ratio(r)] for k, r in s["ratios"].items()]),
                  "", "GFLOP per call (GEMMs): " + ", ".join(f"{k} {g:.3g}" for k, g in fl.items()) + ".", ""]
    m = res["sections"][0]["ratios"][GOAL_RATIO]
    verdict = {True: "met", False: "not met", None: "not judged (quick mode's tiny sizes)"}[res["goal_met"]]
    lines.append(f"Goal ({res['goal']}): {verdict}. Judged on {GOAL_RATIO} (each "
                 f"round's faster of BackPACK's 1- and 2-thread rows, so that a slowdown of torch's threads by other "
                 f"work on the CPU does not count for fnn): median {m['median']:.3f}, upper end of the interval "
                 f"{m['ci95'][1]:.3f}.")
    return "\n".join(lines), _figure(res)


def _figure(res):
    plt = figure()
    fig, axes = plt.subplots(1, len(res["sections"]), figsize=(5 * len(res["sections"]), 3.6), squeeze=False)
    for ax, s in zip(axes[0], res["sections"]):
        for i, key in enumerate(("fnn / BackPACK", GOAL_RATIO, "resolution: fnn 2nd copy / fnn")):
            r = s["ratios"][key]
            ax.scatter(np.full(len(r["per_round"]), i) + np.linspace(-0.2, 0.2, len(r["per_round"])), r["per_round"],
                       s=12)
            ax.hlines(r["median"], i - 0.3, i + 0.3, color="k")
        ax.axhline(0.5, color="r", ls="--", lw=1, label="goal 0.5")
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        ax.set_xticks(range(3), ["fnn / BackPACK\n(torch 2 threads)", "fnn / BackPACK\n(faster threads)",
                                 "fnn copy / fnn"], fontsize=8)
        ax.set_title(f"{s['config']} {tuple(s['sizes'])}, B={s['batch']}", fontsize=9)
        ax.set_ylabel("time ratio per round")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main(sys.modules[__name__])
