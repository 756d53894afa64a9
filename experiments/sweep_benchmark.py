"""What many runs cost as one program: time per run-step of K digits-size runs trained by
:func:`fnn.sweep` (one program, the run axis vmapped inside the scanned epoch), against K solo
runs one after another (the same process, the one-run epoch program), against PyTorch's own
ensembling (``torch.func.stack_module_state`` + ``vmap`` + ``functional_call`` + ``grad``, with
a vectorised Adam step).

Digits size: 64-128-128-10, ReLU, softmax cross-entropy, Adam, batches of 32, 44 batches per
epoch, float32. Wide: the MNIST-1D network 40-512-512-512-10, batches of 128, 31 per epoch. The K runs are one seed and K learning rates, so they share their batches
(fnn's first-layer products become one wide matrix product). Compilation is timed apart.
Arms are interleaved round by round; figures are medians over rounds of whole epochs.

    python experiments/sweep_benchmark.py              # writes results/sweep_benchmark.{json,md,png}
    python experiments/sweep_benchmark.py --quick      # K = 1, 4, 16, 1 round
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import numpy as np
import optax

import fnn
from fnn.data.datasets import load
from fnn.training.epoch import make_epoch_fn
from fnn.training.sweep import DEFAULTS as SWEEP_DEFAULTS
from fnn.training.sweep import _Data, _Group

from common import main

# name: (sizes, batch size, dataset); the wide case is the MNIST-1D network of the README.
CASES = {"digits": ((64, 128, 128, 10), 32, "digits"), "wide": ((40, 512, 512, 512, 10), 128, "mnist1d")}
SIZES, BATCH = CASES["digits"][:2]


def _fnn_sweep(data, k: int):
    """A callable that runs one epoch of K runs, and its compile time."""
    net = fnn.MLP(SIZES, "relu")
    loss = fnn.get_loss("softmax_cross_entropy")
    shared = _Data(net, loss, data.x_train, data.y_train, None, 1, False)
    points = [{**SWEEP_DEFAULTS, "lr": float(lr), "batch_size": BATCH} for lr in np.geomspace(1e-4, 1e-2, k)]
    group = _Group(net, loss, shared, [0], points, None, 0.0)
    params, opt_state, hyper, keys = group._start()
    epoch = group._epoch_fn()
    t = time.perf_counter()
    out = epoch(params, opt_state, hyper, *shared.train, keys)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t

    def run():
        jax.block_until_ready(epoch(params, opt_state, hyper, *shared.train, keys))

    return run, compile_s


def _fnn_solo(data):
    net = fnn.MLP(SIZES, "relu")
    loss = fnn.get_loss("softmax_cross_entropy")
    opt = optax.adam(1e-3)
    params = fnn.init(jax.random.key(0), net, "he")
    state = opt.init(params)
    epoch = make_epoch_fn(net, loss, opt, batch_size=BATCH, donate=False)
    x, v = jax.numpy.asarray(data.x_train), jax.numpy.asarray(data.y_train)
    t = time.perf_counter()
    jax.block_until_ready(epoch(params, state, x, v, jax.random.key(1)))
    compile_s = time.perf_counter() - t

    def run():
        jax.block_until_ready(epoch(params, state, x, v, jax.random.key(1)))

    return run, compile_s


def _torch_ensemble(data, k: int):
    """K models stacked with torch.func; one epoch of shuffled batches with a vectorised Adam."""
    import torch
    from torch.func import functional_call, grad, stack_module_state, vmap

    torch.manual_seed(0)
    def model():
        layers = []
        for a, b in zip(SIZES[:-1], SIZES[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers[:-1])

    models = [model() for _ in range(k)]
    params, buffers = stack_module_state(models)
    base = models[0].to("meta")
    lrs = torch.tensor(np.geomspace(1e-4, 1e-2, k), dtype=torch.float32)
    x, v = torch.from_numpy(np.ascontiguousarray(data.x_train)), torch.from_numpy(data.y_train.astype(np.int64))

    def loss_fn(p, b, xb, vb):
        return torch.nn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), vb)

    grads_fn = vmap(grad(loss_fn), in_dims=(0, 0, None, None))
    m = {n: torch.zeros_like(a) for n, a in params.items()}
    s = {n: torch.zeros_like(a) for n, a in params.items()}

    def run():
        order = torch.randperm(len(x))
        with torch.no_grad():
            for step, i in enumerate(range(0, len(x) - BATCH + 1, BATCH), 1):
                idx = order[i:i + BATCH]
                g = grads_fn(params, buffers, x[idx], v[idx])
                for n, a in params.items():
                    m[n].mul_(0.9).add_(g[n], alpha=0.1)
                    s[n].mul_(0.999).addcmul_(g[n], g[n], value=0.001)
                    lr = lrs.view(-1, *[1] * (a.dim() - 1)) * (1 - 0.999**step) ** 0.5 / (1 - 0.9**step)
                    a.sub_(lr * m[n] / (s[n].sqrt() + 1e-8))

    t = time.perf_counter()
    run()
    return run, time.perf_counter() - t


def run(quick: bool) -> dict:
    global SIZES, BATCH
    rows, out = [], {}
    for case, (sizes, batch, dataset) in CASES.items():
        if quick and case != "digits":
            continue
        SIZES, BATCH = sizes, batch
        ks = ([1, 4, 16] if quick else [1, 4, 16, 64, 256]) if case == "digits" else [1, 4, 16]
        result = _case(load(dataset), ks, 1 if quick else (5 if case == "digits" else 3))
        for r in result["rows"]:
            r["case"] = f"{case} {'-'.join(map(str, sizes))}, batch {batch}"
        rows += result["rows"]
        out.update({k: a for k, a in result.items() if k != "rows"})
    SIZES, BATCH = CASES["digits"][:2]
    return {**out, "rows": rows}


def _case(data, ks, rounds) -> dict:
    batches = len(data.x_train) // BATCH
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    solo, solo_compile = _fnn_solo(data)
    rows = []
    for k in ks:
        arms = {"fnn.sweep": _fnn_sweep(data, k)}
        if have_torch:
            arms["torch.func ensemble"] = _torch_ensemble(data, k)
        arms["fnn solo × K"] = (solo, solo_compile)
        samples = {name: [] for name in arms}
        for r in range(rounds):
            for name in list(arms)[r % len(arms):] + list(arms)[:r % len(arms)]:
                fn = arms[name][0]
                t = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - t
                samples[name].append(elapsed * (k if name == "fnn solo × K" else 1))
        for name, times in samples.items():
            epoch_s = statistics.median(times)
            rows.append({"K": k, "arm": name, "epoch_s": epoch_s, "per_run_step_us": epoch_s / (k * batches) * 1e6,
                         "compile_s": arms[name][1], "rounds": rounds})
    solo_per = {r["K"]: r["per_run_step_us"] for r in rows if r["arm"] == "fnn solo × K"}
    for r in rows:
        r["speedup_vs_solo"] = solo_per[r["K"]] / r["per_run_step_us"]
    return {"rows": rows, "device": str(jax.devices()[0]), "batches_per_epoch": batches, "torch": have_torch}


def report(results: dict):
    lines = ["| case | K | arm | epoch of K runs (ms) | per run-step (µs) | vs solo (×, >1 faster) | compile (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['case']} | {r['K']} | {r['arm']} | {r['epoch_s'] * 1e3:.1f} | {r['per_run_step_us']:.1f} | "
                     f"{r['speedup_vs_solo']:.2f} | {r['compile_s']:.2f} |")
    lines.append("")
    lines.append(f"Medians over interleaved rounds (digits {results['rows'][0]['rounds']}, wide 3) of one epoch "
                 f"on {results['device']}; 'fnn solo × K' is K times one solo epoch, timed in the same rounds.")
    plt = fnn.plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for case in dict.fromkeys(r["case"] for r in results["rows"]):
        for arm in dict.fromkeys(r["arm"] for r in results["rows"]):
            rows = [r for r in results["rows"] if r["arm"] == arm and r["case"] == case]
            ax.plot([r["K"] for r in rows], [r["per_run_step_us"] for r in rows], "o-" if "digits" in case else "s--",
                    label=f"{arm} ({case.split()[0]})")
    ax.set(xscale="log", yscale="log", xlabel="runs K", ylabel="time per run-step (µs)",
           title="K digits-size runs: time per run-step (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.9)
    return "\n".join(lines), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
