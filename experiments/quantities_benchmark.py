"""What the quantities from the backward pass cost: per-example gradient norms, one DP-SGD step,
the exact GGN diagonal, a Hessian-vector product and Lanczos for the top-20 Hessian
eigenvalues, against a plain gradient or step, the ``jax.vmap(jax.grad)`` route, and (where
installed) PyTorch, BackPACK and Opacus, at the digits and MNIST sizes (softmax
cross-entropy, ReLU, float32; PyTorch on as many threads as the process has cores).

All rows of a size run in one process, interleaved in a fresh shuffled order each round,
each row after one untimed call of its own (``fnn.bench.harness``); the figures are medians
over rounds. Compiled memory is XLA's account of one call (arguments + outputs − donated +
temporaries). A float64 check compares Lanczos's top-20 with ``eigh`` of a dense Hessian.

Why earlier runs put fnn's GGN diagonal at 177-224 ms (MNIST size) when it takes about 80 ms
on its own: the rounds rotated the order, so the GGN row ran right after the
``vmap(grad)`` DP-SGD row (2.6 GB of buffers) in every round but one, and its first call
paid for that row's memory being handed back to the system on the other core (first calls
there took 1.5-3× the next ones; measured with the old code under load). Now the order is
shuffled and every row warms up first.

    python experiments/quantities_benchmark.py            # writes results/quantities_benchmark.{json,md}
    python experiments/quantities_benchmark.py --rounds 3 --configs digits
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

import fnn
from fnn.core.backprop import Objective, manual_value_and_grad
from fnn.bench.harness import _compiled_memory_mb, calibrate, time_rows
from fnn.io.files import atomic_write, write_json

from common import provenance

CONFIGS = {"digits": ((64, 128, 128, 10), 128), "mnist": ((784, 1024, 1024, 10), 256)}
RESULTS = Path(__file__).parent / "results"
TOP_K, LANCZOS_STEPS = 20, 40  # the spectrum rows: top-20 Hessian eigenvalues from 40 Lanczos steps
THREADS = len(os.sched_getaffinity(0))  # PyTorch's intra-op threads: every core this process may use


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
        **_spectrum_rows(net, loss, params, x, v),
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
        def run(k, fn=fn, args=args, kept=[]):
            for _ in range(k):
                out = fn(*args)
            kept[:] = [jax.block_until_ready(out)]

        run.last = lambda kept=run.__defaults__[-1]: kept[0]  # the row's latest result

        rows[name] = run
        memory[name] = _compiled_memory_mb(fn, *args)
    return rows, memory


def _spectrum_rows(net, loss, params, x, v) -> dict:
    """One hand-written Hessian-vector product (its own forward pass included), and Lanczos
    for the top-20 Hessian eigenpairs (one forward pass, then one R-operator product and one
    reorthogonalisation per step)."""
    key = jax.random.key(3)
    hvp = jax.jit(lambda p, x, v: fnn.hvp(net, loss, p, x, v, p))
    eigs = lambda p, x, v: fnn.top_eigenpairs(net, loss, p, x, v, key, k=TOP_K, num_iters=LANCZOS_STEPS)
    return {"Hessian-vector product (fnn)": (hvp, (params, x, v)),
            f"Lanczos top-{TOP_K}, {LANCZOS_STEPS} steps (fnn)": (eigs, (params, x, v))}


def float64_check(sizes=(64, 32, 32, 10), batch=128) -> dict:
    """Lanczos's top-20 Hessian eigenvalues (float64, 40, 80 and 160 steps) against ``eigh`` of the
    dense Hessian from ``jax.hessian`` on a network small enough to form it (3466 parameters)."""
    with jax.enable_x64(True):
        net, loss = fnn.MLP(sizes, "tanh"), fnn.get_loss("softmax_cross_entropy")
        params = fnn.init(jax.random.key(0), net, "he", dtype=jnp.float64)
        k1, k2 = jax.random.split(jax.random.key(1))
        x = jax.random.normal(k1, (batch, sizes[0]), jnp.float64)
        v = jax.random.randint(k2, (batch,), 0, sizes[-1])
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        dense = jax.jit(jax.hessian(lambda f: fnn.risk(loss, fnn.forward(net, unravel(f), x), v)))(flat)
        want = jnp.linalg.eigvalsh(dense)[::-1][:TOP_K]
        out = {"sizes": sizes, "batch": batch, "parameters": int(flat.size)}
        for steps in (LANCZOS_STEPS, 2 * LANCZOS_STEPS, 4 * LANCZOS_STEPS):
            got = fnn.top_eigenpairs(net, loss, params, x, v, jax.random.key(3), k=TOP_K, num_iters=steps)
            rel = jnp.abs(got.eigenvalues - want) / jnp.abs(want)
            out[f"{steps} steps"] = {"max relative error": float(jnp.max(rel)),
                                     "pairs within 1e-6": int(jnp.sum(rel <= 1e-6))}
        return out


def _torch_rows(sizes, batch) -> dict:
    """PyTorch's plain step and BackPACK's BatchL2Grad and DiagGGNExact passes, when installed."""
    try:
        import torch
        from backpack import backpack, extend
        from backpack.extensions import BatchL2Grad, DiagGGNExact
    except ImportError:
        return {}
    torch.set_num_threads(THREADS)
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
    times = time_rows(rows, per_call, rounds, warm_calls=1)
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
    eigs = _lanczos_summary(rows)
    return {
        "config": name, "sizes": sizes, "batch": batch, "rounds": rounds, "torch_threads": THREADS,
        "lanczos_top": eigs,
        "rows": [{"row": row, "ms": med[row] * 1e3, "compiled_memory_mb": memory[row]} for row in rows],
        "ratios": {
            "norms / plain gradient": ratio("per-example norms (fnn)", "plain gradient (fnn manual)"),
            "vmap(grad) norms / fnn norms": ratio("per-example norms (vmap(grad))", "per-example norms (fnn)"),
            "DP step / plain step": ratio("DP-SGD step (fnn, one backward)", "plain step (fnn)"),
            "clipping-only step / plain step": ratio("clipping-only step (fnn, no noise)", "plain step (fnn)"),
            "vmap(grad) DP gradient / fnn DP step": ratio("DP-SGD gradient (vmap(grad))",
                                                          "DP-SGD step (fnn, one backward)"),
            "GGN diagonal / plain gradient": ratio("exact GGN diagonal (fnn)", "plain gradient (fnn manual)"),
            f"Lanczos top-{TOP_K} / Hessian-vector product": ratio(f"Lanczos top-{TOP_K}, {LANCZOS_STEPS} steps (fnn)",
                                                                   "Hessian-vector product (fnn)"),
            "resolution: plain step 2nd copy / plain step": ratio("plain step (fnn, 2nd copy)", "plain step (fnn)"),
            **torch_ratios,
        },
    }


def _lanczos_summary(rows) -> dict:
    """The top-20 from the timed Lanczos row, with the residuals that say which converged."""
    res = rows[f"Lanczos top-{TOP_K}, {LANCZOS_STEPS} steps (fnn)"].last()
    lam, r = [float(a) for a in res.eigenvalues], [float(a) for a in res.residuals]
    return {"eigenvalues": lam, "residuals": r,
            "converged (residual <= 1e-4 * eigenvalue)": sum(ri <= 1e-4 * abs(li) for li, ri in zip(lam, r))}


def markdown(results: list[dict], check: dict | None = None) -> str:
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
        top = res["lanczos_top"]
        lines += ["", f"PyTorch on {res['torch_threads']} threads. Lanczos top-{TOP_K} from {LANCZOS_STEPS} steps: "
                  f"{top['converged (residual <= 1e-4 * eigenvalue)']} of {TOP_K} converged (residual ≤ 1e-4 λ); "
                  "eigenvalues " + ", ".join(f"{a:.4g}" for a in top["eigenvalues"]) + "; residuals "
                  + ", ".join(f"{a:.1e}" for a in top["residuals"]) + ".", ""]
    if check:
        lines += [f"## Lanczos against a dense Hessian (float64, {tuple(check['sizes'])}, batch {check['batch']}, "
                  f"{check['parameters']} parameters)", "", "| steps | max relative error of the top-20 | within 1e-6 |",
                  "|---:|---:|---:|"]
        lines += [f"| {k.split()[0]} | {v['max relative error']:.1e} | {v['pairs within 1e-6']} |"
                  for k, v in check.items() if k.endswith("steps")]
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
    check = float64_check()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "quantities_benchmark.json", {"configs": results, "lanczos_float64_check": check,
                                                   "provenance": provenance(__file__)})
    atomic_write(out / "quantities_benchmark.md", markdown(results, check))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
