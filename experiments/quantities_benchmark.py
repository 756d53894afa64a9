"""What the quantities from the backward pass cost: per-example gradient norms, one DP-SGD step and
the exact GGN diagonal, against a plain gradient or step, and against the ``jax.vmap(jax.grad)``
route, at the digits and MNIST sizes (softmax cross-entropy, ReLU, float32).

All rows of a size run in one process, interleaved with the order rotating each round
(``fnn.bench.harness``); the figures are medians over rounds. Compiled memory is XLA's account
of one call (arguments + outputs − donated + temporaries).

    python experiments/quantities_benchmark.py            # writes results/quantities_benchmark.{json,md}
    python experiments/quantities_benchmark.py --rounds 3 --configs digits
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import fnn
from fnn.backprop import Objective, manual_value_and_grad
from fnn.bench.harness import _compiled_memory_mb, calibrate, time_rows
from fnn.files import atomic_write, write_json

CONFIGS = {"digits": ((64, 128, 128, 10), 128), "mnist": ((784, 1024, 1024, 10), 256)}
RESULTS = Path(__file__).parent / "results"


def _vmap_grads(objective, params, x, v):
    """The autodiff route: B copies of every gradient, from vmap over per-example jax.grad."""
    def one(xb, vb):
        return jax.grad(lambda p: objective.evaluate(p, xb[None], vb[None])[0])(params)

    return jax.vmap(one)(x, v)


def _norms_vmap(objective, params, x, v):
    g = _vmap_grads(objective, params, x, v)
    return jnp.sqrt(sum(jnp.sum(a.reshape(a.shape[0], -1) ** 2, 1) for a in jax.tree.leaves(g)))


def _dp_vmap(objective, params, x, v, key, clip, sigma):
    """DP-SGD the autodiff way: materialise per-example gradients, clip, sum, add noise."""
    g = _vmap_grads(objective, params, x, v)
    norms = jnp.sqrt(sum(jnp.sum(a.reshape(a.shape[0], -1) ** 2, 1) for a in jax.tree.leaves(g)))
    scale = jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-12))
    summed = jax.tree.map(lambda a: jnp.tensordot(scale, a, 1), g)
    leaves, treedef = jax.tree.flatten(summed)
    keys = jax.random.split(key, len(leaves))
    noisy = [(a + sigma * clip * jax.random.normal(k, a.shape, a.dtype)) / x.shape[0] for a, k in zip(leaves, keys)]
    return treedef.unflatten(noisy)


def _rows(sizes, batch):
    net = fnn.MLP(sizes, "relu")
    loss = fnn.get_loss("softmax_cross_entropy")
    objective = Objective(net, loss)
    params = fnn.init(jax.random.key(0), net, "he")
    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(k1, (batch, sizes[0]))
    v = jax.random.randint(k2, (batch,), 0, sizes[-1])
    key = jax.random.key(2)
    opt = optax.sgd(0.01)
    state = opt.init(params)
    plain_step = jax.jit(fnn.make_update_fn(net, loss, opt))
    twin_step = jax.jit(fnn.make_update_fn(net, loss, opt))  # the same program, compiled again
    dp_step = jax.jit(fnn.make_update_fn(net, loss, opt, clip_norm=1.0, noise_multiplier=1.0))
    clip_step = jax.jit(fnn.make_update_fn(net, loss, opt, clip_norm=1.0))
    fns = {
        "plain gradient (fnn manual)": (jax.jit(lambda p: manual_value_and_grad(objective, p, x, v)), (params,)),
        "per-example norms (fnn)": (jax.jit(lambda p: fnn.per_example_grad_norms(net, loss, p, x, v)), (params,)),
        "per-example norms (vmap(grad))": (jax.jit(lambda p: _norms_vmap(objective, p, x, v)), (params,)),
        "plain step (fnn)": (plain_step, (params, state, x, v)),
        "plain step (fnn, 2nd copy)": (twin_step, (params, state, x, v)),
        "DP-SGD step (fnn, one backward)": (dp_step, (params, state, x, v, key)),
        "clipping-only step (fnn, no noise)": (clip_step, (params, state, x, v)),
        "DP-SGD gradient (vmap(grad))": (jax.jit(lambda p, k: _dp_vmap(objective, p, x, v, k, 1.0, 1.0)),
                                         (params, key)),
        "exact GGN diagonal (fnn)": (jax.jit(lambda p: fnn.ggn_diagonal(net, loss, p, x, v)), (params,)),
    }
    rows, memory = {}, {}
    rows.update(_torch_rows(sizes, batch))
    memory.update({name: None for name in rows})
    for name, (fn, args) in fns.items():
        def run(k, fn=fn, args=args):
            for _ in range(k):
                out = fn(*args)
            jax.block_until_ready(out)

        rows[name] = run
        memory[name] = _compiled_memory_mb(fn, *args)
    return rows, memory


def _torch_rows(sizes, batch) -> dict:
    """PyTorch's plain step and BackPACK's BatchL2Grad and DiagGGNExact passes, when installed."""
    try:
        import torch
        from backpack import backpack, extend
        from backpack.extensions import BatchL2Grad, DiagGGNExact
    except ImportError:
        return {}
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    model = extend(torch.nn.Sequential(*layers))
    lossf = extend(torch.nn.CrossEntropyLoss())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, v = torch.randn(batch, sizes[0]), torch.randint(0, sizes[-1], (batch,))

    def step(k, extension=None):
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(x), v)
            if extension is None:
                loss.backward()
                opt.step()
            else:
                with backpack(extension()):
                    loss.backward()

    version = torch.__version__.split("+")[0]
    return {f"PyTorch {version} plain step": step,
            "BackPACK BatchL2Grad pass": lambda k: step(k, BatchL2Grad),
            "BackPACK DiagGGNExact pass": lambda k: step(k, DiagGGNExact),
            **_opacus_rows(sizes, batch, x, v)}


def _opacus_rows(sizes, batch, x, v) -> dict:
    """Opacus's DP-SGD step (C = 1, σ = 1): per-sample gradients from hooks, and ghost clipping
    (norms from a first backward, the clipped sum from a second), when installed."""
    try:
        import torch
        from opacus import GradSampleModule
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
    except ImportError:
        return {}

    def model():
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
        return torch.nn.Sequential(*layers)

    private = dict(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch)
    hooks = GradSampleModule(model())
    hooks_opt = DPOptimizer(torch.optim.SGD(hooks.parameters(), lr=0.01), **private)
    ghost = GradSampleModuleFastGradientClipping(model(), max_grad_norm=1.0, use_ghost_clipping=True)
    ghost_opt = DPOptimizerFastGradientClipping(torch.optim.SGD(ghost.parameters(), lr=0.01), **private)
    ghost_loss = DPLossFastGradientClipping(ghost, ghost_opt, torch.nn.CrossEntropyLoss(), loss_reduction="mean")
    lossf = torch.nn.CrossEntropyLoss()

    def per_sample(k):
        for _ in range(k):
            hooks_opt.zero_grad()
            lossf(hooks(x), v).backward()
            hooks_opt.step()

    def ghost_clipping(k):
        for _ in range(k):
            ghost_opt.zero_grad()
            ghost_loss(ghost(x), v).backward()
            ghost_opt.step()

    import opacus

    return {f"Opacus {opacus.__version__} DP-SGD step (per-sample grads)": per_sample,
            f"Opacus {opacus.__version__} DP-SGD step (ghost clipping)": ghost_clipping}


def bench(name: str, rounds: int) -> dict:
    sizes, batch = CONFIGS[name]
    rows, memory = _rows(sizes, batch)
    per_call = calibrate(rows)
    times = time_rows(rows, per_call, rounds)
    med = {row: statistics.median(ts) for row, ts in times.items()}
    ratio = lambda a, b: med[a] / med[b]
    torch_ratios = {}
    plain_torch = next((r for r in rows if r.endswith("plain step") and r.startswith("PyTorch")), None)
    if plain_torch:
        torch_ratios = {
            "BackPACK BatchL2Grad / PyTorch plain step": ratio("BackPACK BatchL2Grad pass", plain_torch),
            "BackPACK BatchL2Grad / fnn norms": ratio("BackPACK BatchL2Grad pass", "per-example norms (fnn)"),
            "BackPACK DiagGGNExact / fnn GGN diagonal": ratio("BackPACK DiagGGNExact pass", "exact GGN diagonal (fnn)"),
        }
        for row in rows:
            if row.startswith("Opacus"):
                what = row.split("(")[-1].rstrip(")")
                torch_ratios[f"Opacus {what} / fnn DP step"] = ratio(row, "DP-SGD step (fnn, one backward)")
                torch_ratios[f"Opacus {what} / PyTorch plain step"] = ratio(row, plain_torch)
    return {
        "config": name, "sizes": sizes, "batch": batch, "rounds": rounds,
        "rows": [{"row": row, "ms": med[row] * 1e3, "compiled_memory_mb": memory[row]} for row in rows],
        "ratios": {
            "norms / plain gradient": ratio("per-example norms (fnn)", "plain gradient (fnn manual)"),
            "vmap(grad) norms / fnn norms": ratio("per-example norms (vmap(grad))", "per-example norms (fnn)"),
            "DP step / plain step": ratio("DP-SGD step (fnn, one backward)", "plain step (fnn)"),
            "clipping-only step / plain step": ratio("clipping-only step (fnn, no noise)", "plain step (fnn)"),
            "vmap(grad) DP gradient / fnn DP step": ratio("DP-SGD gradient (vmap(grad))",
                                                          "DP-SGD step (fnn, one backward)"),
            "GGN diagonal / plain gradient": ratio("exact GGN diagonal (fnn)", "plain gradient (fnn manual)"),
            "resolution: plain step 2nd copy / plain step": ratio("plain step (fnn, 2nd copy)", "plain step (fnn)"),
            **torch_ratios,
        },
    }


def markdown(results: list[dict]) -> str:
    lines = ["# What the quantities from the backward pass cost", "",
             f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, float32, softmax cross-entropy, ReLU; "
             "median ms per call over interleaved rounds, all rows of a size in one process.", ""]
    for res in results:
        lines += [f"## {res['config']}: {tuple(res['sizes'])}, batch {res['batch']}, {res['rounds']} rounds", "",
                  "| row | ms per call | compiled memory (MB) |", "|---|---:|---:|"]
        for r in res["rows"]:
            mem = "n/a" if r["compiled_memory_mb"] is None else f"{r['compiled_memory_mb']:.1f}"
            lines.append(f"| {r['row']} | {r['ms']:.3f} | {mem} |")
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in res["ratios"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    results = []
    for name in args.configs:
        results.append(bench(name, args.rounds))
        print(markdown(results[-1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "quantities_benchmark.json", results)
    atomic_write(out / "quantities_benchmark.md", markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
