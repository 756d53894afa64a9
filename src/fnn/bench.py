"""``fnn bench``: one training step (forward, backward, SGD update; softmax cross-entropy, ReLU)
timed for fnn's hand-written backward, fnn with ``jax.grad``, the scan-fused epoch, and the
peers a researcher would otherwise use (PyTorch eager and torch.compile, Flax NNX, Equinox)
when installed.

Every row is timed in the same process, interleaved round by round (the order rotating each
round) so that drift and position hit all rows alike; the figure is the median over rounds
of the per-step time. The machine's float32 matmul throughput is measured on the very GEMMs
the step runs (forward ``y W``, weight gradient ``yᵀ δz``, and input gradient ``δz Wᵀ``
above the input layer), best of several runs. Every row reports its GFLOP/s on the nominal
count (6 × batch × weights per step) and, as "% of peak", the GEMM work it really executes
(one GEMM fewer: nobody forms ``∂R/∂x``) divided by its time and by that peak. A fixed-batch
scanned update is timed as a diagnostic floor: no dispatch and no data movement, only the
step's arithmetic.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import resource
import statistics
import time
from pathlib import Path

import fnn
from fnn.files import atomic_write, write_json
from fnn.train import make_epoch_fn
from fnn.plots import figure_png

PEER_NAMES = ("torch", "torch-compile", "flax", "equinox")
CONFIGS = {
    "digits": ((64, 128, 128, 10), 128),
    "mnist": ((784, 1024, 1024, 10), 256),
    "wide": ((2048, 4096, 4096, 10), 1024),
}


FLOOR_ROW = "floor: scanned update, one fixed batch (diagnostic)"

# Steps per scan-fused epoch call: the wide step takes about a second on a 2-core CPU.
SCAN_STEPS = {"digits": 16, "mnist": 16, "wide": 4}


def _count(least: int):
    """An argparse type: an integer of at least ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS),
                   help="which configurations (default: all)")
    p.add_argument("--rounds", type=_count(1), default=15, help="interleaved timing rounds (default: %(default)s)")
    p.add_argument("--steps", type=_count(0), default=0,
                   help="steps per round (default: enough for about 0.3 s per row)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu", "tpu"], help="(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype; bfloat16 keeps float32 master weights (default: %(default)s)")
    p.add_argument("--peers", nargs="*", default=list(PEER_NAMES), choices=list(PEER_NAMES),
                   help="peer libraries to time when installed (default: %(default)s)")
    p.add_argument("--out", default="experiments/results", help="folder for benchmark.{json,md,png}")
    p.add_argument("--no-twins", dest="twins", action="store_false",
                   help="skip the second, separately compiled copies of the manual and jax.grad steps "
                        "(they measure how far two identical programs differ: the comparison's resolution)")
    p.add_argument("--leak-steps", type=_count(0), default=0,
                   help="also run this many steps of the digits config and report memory growth")


def _flops(sizes, batch) -> float:
    """The nominal count, 6 × batch × weights: three GEMMs of 2·B·d_in·d_out per layer."""
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 6.0 * batch * weights


def _executed_flops(sizes, batch) -> float:
    """What a step really multiplies: no implementation here forms ∂R/∂x for the input
    layer (fnn skips it, autograd sees x needs no gradient), so one GEMM fewer."""
    return _flops(sizes, batch) - 2.0 * batch * sizes[0] * sizes[1]


TWIN = " (step per call, 2nd copy)"


def _fnn_rows(sizes, batch, dtype_name, device, steps_per_epoch=16, twins=False):
    """name -> (run(k) callable that performs k steps and blocks, steps_per_call)."""
    import jax
    import jax.numpy as jnp
    import optax


    dev = jax.devices(device)[0]
    compute = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
    net = fnn.MLP(sizes, "relu")
    loss = fnn.get_loss("softmax_cross_entropy")
    params = jax.device_put(fnn.init(jax.random.key(0), net, "he"), dev)
    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.device_put(jax.random.normal(k1, (batch, sizes[0]), compute), dev)
    v = jax.device_put(jax.random.randint(k2, (batch,), 0, sizes[-1]), dev)
    opt = optax.sgd(0.01)
    rows = {}

    def cast(p):
        # bf16 compute, float32 master weights: gradients flow back through the cast.
        return jax.tree.map(lambda a: a.astype(compute), p) if compute != jnp.float32 else p

    for copy, method in itertools.product((False, True) if twins else (False,), ("manual", "autodiff")):
        grad_fn = fnn.backprop.get_method(method)

        # A fresh function each time: the twin is compiled and run separately, same program.
        def update(p, s, x, v, grad_fn=grad_fn):
            _, g = grad_fn(net, loss, cast(p), x, v)
            g = jax.tree.map(lambda a: a.astype(jnp.float32), g)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        step = jax.jit(update, donate_argnums=(0, 1))
        run = _stepper(lambda p, s, i, step=step: step(p, s, x, v), params, opt.init(params), 1,
                       _compiled_memory_mb(step, params, opt.init(params), x, v))
        name = "fnn manual" if method == "manual" else "fnn jax.grad"
        rows[name + (TWIN if copy else " (step per call)")] = run

    # Scan-fused epoch: steps_per_epoch batches drawn on device and stepped inside one compiled call.
    data_x = jax.device_put(jax.random.normal(k1, (batch * steps_per_epoch, sizes[0]), compute), dev)
    data_v = jax.device_put(jax.random.randint(k2, (batch * steps_per_epoch,), 0, sizes[-1]), dev)
    if compute == jnp.float32:  # the library's epoch trains in the parameters' dtype; bf16 rows use the step
        epoch = make_epoch_fn(net, loss, opt, batch_size=batch)
        rows["fnn manual (scan-fused epoch)"] = _stepper(
            lambda p, s, i: epoch(p, s, data_x, data_v, jax.random.key(i))[:2], params, opt.init(params),
            steps_per_epoch, _compiled_memory_mb(epoch, params, opt.init(params), data_x, data_v, jax.random.key(0)))

        # Diagnostic floor: the same update scanned over one fixed batch, with no shuffle and
        # no gather. Neither dispatch nor data movement is left, so no fusion of whole steps
        # can beat it; the epoch's distance from it is what shuffling and batching cost.
        update = fnn.make_update_fn(net, loss, opt, "manual")

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def fixed_batch(p, s, x, v):
            def body(carry, _):
                p, s, metrics = update(*carry, x, v)
                return (p, s), metrics["loss"]

            (p, s), _ = jax.lax.scan(body, (p, s), None, length=steps_per_epoch)
            return p, s

        rows[FLOOR_ROW] = _stepper(lambda p, s, i: fixed_batch(p, s, x, v), params, opt.init(params),
                                   steps_per_epoch, _compiled_memory_mb(fixed_batch, params, opt.init(params), x, v))
    return rows


def _stepper(call, params, opt_state, steps_per_call: int, memory_mb: float | None):
    """A timing row: ``run(k)`` advances its own copy of the state by ``k`` steps and blocks.

    ``call(params, opt_state, i) -> (params, opt_state)`` performs ``steps_per_call`` steps;
    ``i`` counts the calls (a fresh PRNG key for each epoch).
    """
    import jax
    import jax.numpy as jnp

    # A copy: the calls donate their state, and the caller's params seed every row.
    p, s = jax.tree.map(jnp.array, (params, opt_state))
    state = {"p": p, "s": s, "i": 0}

    def run(k):
        p, s = state["p"], state["s"]
        for _ in range(max(1, k // steps_per_call)):
            state["i"] += 1
            p, s = call(p, s, state["i"])
        jax.block_until_ready(p)
        state["p"], state["s"] = p, s

    run.steps_per_call = steps_per_call
    run.memory_mb = memory_mb
    return run


def _compiled_memory_mb(fn, *args) -> float | None:
    """XLA's own account of one compiled call's memory: arguments + outputs − donated
    (aliased) buffers + temporaries, all live at once at worst."""
    try:
        m = fn.lower(*args).compile().memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        return total / 2**20
    except Exception:  # not every backend reports it
        return None


def _matmul_peak(sizes, batch, dtype_name, device, repeats=7) -> float:
    """GFLOP/s of the step's own GEMMs (3 per layer, 2 for the input layer), best of
    ``repeats`` and of two ways.

    Called once per GEMM set from Python (what a per-step dispatch pays), and looped
    ``reps`` times inside one compiled call (no dispatch cost: the best the arithmetic
    can do). Each loop iteration feeds its products back into its operands, scaled by
    1e-6, so XLA can neither hoist nor drop any GEMM; the few element-wise adds it costs
    are of the size an SGD update writes anyway. The larger figure is the peak.
    """
    import jax
    import jax.numpy as jnp

    dev = jax.devices(device)[0]
    dtype = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
    key = jax.random.key(0)
    mats = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        k1, k2, k3, key = jax.random.split(key, 4)
        mats.append(jax.device_put((jax.random.normal(k1, (batch, d_in), dtype),
                                    jax.random.normal(k2, (d_in, d_out), dtype),
                                    jax.random.normal(k3, (batch, d_out), dtype)), dev))

    # Forward y W, weight gradient yᵀ δz and, above the input layer, input gradient δz Wᵀ.
    @jax.jit
    def gemms(mats):
        return [(y @ w, y.T @ dz) + ((dz @ w.T,) if l else ()) for l, (y, w, dz) in enumerate(mats)]

    reps = 10

    @jax.jit
    def looped(mats):
        c = jnp.asarray(1e-6, dtype)

        def body(_, mats):
            return [(y + c * (dz @ w.T) if l else y, w + c * (y.T @ dz), dz + c * (y @ w))
                    for l, (y, w, dz) in enumerate(mats)]

        return jax.lax.fori_loop(0, reps, body, mats)

    jax.block_until_ready((gemms(mats), looped(mats)))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(reps):
            out = gemms(mats)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / reps)
        t = time.perf_counter()
        jax.block_until_ready(looped(mats))
        best = min(best, (time.perf_counter() - t) / reps)
    return _executed_flops(sizes, batch) / best / 1e9


def _torch_row(sizes, batch):
    import torch

    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, sizes[0])
    v = torch.randint(0, sizes[-1], (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def run(k):
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), v).backward()
            opt.step()

    run.parts = (model, opt, x, v, loss_fn)
    return {f"PyTorch {torch.__version__} eager": run}


def _torch_compile_row(sizes, batch):
    """The same PyTorch step with the model and the optimizer step under ``torch.compile``."""
    import torch

    eager = _torch_row(sizes, batch)
    (run,) = eager.values()
    model, opt, x, v, loss_fn = run.parts
    compiled = torch.compile(model)
    opt_step = torch.compile(opt.step)

    def run_compiled(k):
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss_fn(compiled(x), v).backward()
            opt_step()

    return {f"PyTorch {torch.__version__} torch.compile": run_compiled}


def _equinox_row(sizes, batch):
    import equinox as eqx
    import jax
    import optax

    model = eqx.nn.MLP(sizes[0], sizes[-1], sizes[1], len(sizes) - 2, activation=jax.nn.relu,
                       key=jax.random.key(0))
    if len(set(sizes[1:-1])) > 1:
        raise ValueError("equinox MLP needs equal hidden widths")
    opt = optax.sgd(0.01)
    x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
    v = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])

    @eqx.filter_jit
    def step(model, state, x, v):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(x), v).mean()

        g = eqx.filter_grad(loss)(model)
        u, state = opt.update(g, state, model)
        return eqx.apply_updates(model, u), state

    st = {"m": model, "s": opt.init(eqx.filter(model, eqx.is_array))}

    def run(k):
        m, s = st["m"], st["s"]
        for _ in range(k):
            m, s = step(m, s, x, v)
        jax.block_until_ready(eqx.filter(m, eqx.is_array))
        st["m"], st["s"] = m, s

    return {f"Equinox {eqx.__version__}": run}


def _flax_row(sizes, batch):
    import flax
    import jax
    import optax
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jax.nn.relu(layer(x))
            return self.layers[-1](x)

    model = MLP(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
    v = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])

    @nnx.jit
    def step(model, opt, x, v):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), v).mean()

        grads = nnx.grad(loss)(model)
        opt.update(model, grads)

    def run(k):
        for _ in range(k):
            step(model, opt, x, v)
        jax.block_until_ready(nnx.state(model))

    return {f"Flax NNX {flax.__version__}": run}


PEERS = {"torch": _torch_row, "torch-compile": _torch_compile_row, "flax": _flax_row,
         "equinox": _equinox_row}
assert tuple(PEERS) == PEER_NAMES


def bench_config(name, args) -> dict:
    sizes, batch = CONFIGS[name]
    rows = _fnn_rows(sizes, batch, args.dtype, args.device, SCAN_STEPS[name], args.twins)
    skipped = {}
    if args.device == "cpu" and args.dtype == "float32":
        for peer in args.peers:
            try:
                rows.update(PEERS[peer](sizes, batch))
            except ImportError as err:
                skipped[peer] = f"not installed ({err.name}); pip install -e '.[bench]'"
            except Exception as err:  # a peer that fails is reported, not fatal
                skipped[peer] = f"failed: {type(err).__name__}: {err}"
    flops, executed = _flops(sizes, batch), _executed_flops(sizes, batch)
    # Warm-up (compilation) and a step count giving ~0.3 s per row per round.
    per_call = {}
    for row, run in rows.items():
        spc = getattr(run, "steps_per_call", 1)
        run(spc)
        t = time.perf_counter()
        run(spc)
        per_call[row] = max(spc, int(round(0.3 / max((time.perf_counter() - t) / spc, 1e-7) / spc)) * spc)
        if args.steps:
            per_call[row] = max(spc, args.steps // spc * spc)
    peak = _matmul_peak(sizes, batch, args.dtype, args.device)
    times = {row: [] for row in rows}
    names = list(rows)
    for r in range(args.rounds):
        # Rotate the order every round, so that no row always runs first or after the same peer
        # (a row's speed depends a little on what ran before it: caches, allocator, threads).
        for row in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            rows[row](per_call[row])
            times[row].append((time.perf_counter() - t) / per_call[row])
    peak = max(peak, _matmul_peak(sizes, batch, args.dtype, args.device))
    manual = statistics.median(times["fnn manual (step per call)"])
    table = []
    for row, ts in times.items():
        med = statistics.median(ts)
        table.append({"impl": row, "ms_per_step": med * 1e3, "gflops": flops / med / 1e9,
                      "executed_gflops": executed / med / 1e9,
                      "fraction_of_matmul_peak": executed / med / 1e9 / peak,
                      "ratio_to_fnn_manual": med / manual, "steps_per_round": per_call[row],
                      "compiled_memory_mb": getattr(rows[row], "memory_mb", None)})
    res = {"config": name, "sizes": sizes, "batch": batch, "matmul_peak_gflops": peak,
           "rows": table, "skipped": skipped}
    med = {r["impl"]: r["ms_per_step"] for r in table}
    if "fnn manual" + TWIN in med:
        # Each pair is one program compiled twice: their gap is noise, not code.
        res["twin_gap"] = max(abs(med[f"fnn {m}{TWIN}"] / med[f"fnn {m} (step per call)"] - 1)
                              for m in ("manual", "jax.grad"))
    return res


def run(args) -> int:
    import jax

    if args.device != "cpu" and not any(d.platform == args.device for d in jax.devices()):
        raise ValueError(f"No {args.device} device here: JAX sees {jax.devices()}.")
    results = {"device": str(jax.devices(args.device)[0].device_kind), "jax": jax.__version__,
               "dtype": args.dtype, "rounds": args.rounds, "cpu_count": os.cpu_count(), "configs": []}
    for name in args.configs:
        res = bench_config(name, args)
        results["configs"].append(res)
        _print_config(res)
    if args.leak_steps:
        results["leak_check"] = _leak_check(args.leak_steps)
        print(f"leak check: {results['leak_check']}")
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the benchmark process: {results['peak_rss_mb']:.0f} MB")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if (args.device, args.dtype) == ("cpu", "float32") else f"_{args.device}_{args.dtype}"
    write_json(out / f"benchmark{suffix}.json", results)
    atomic_write(out / f"benchmark{suffix}.md", _markdown(results))
    _plot(results, out / f"benchmark{suffix}.png")
    print(f"wrote {out}/benchmark{suffix}.{{json,md,png}}")
    return 0


def _leak_check(steps: int) -> dict:
    """Runs ``steps`` digits-size steps and reports resident-memory growth after a warm-up."""
    import gc

    sizes, batch = CONFIGS["digits"]
    run = _fnn_rows(sizes, batch, "float32", "cpu")["fnn manual (step per call)"]
    run(1000)
    gc.collect()
    before = _rss_mb()
    run(steps)
    gc.collect()
    return {"steps": steps, "rss_before_mb": before, "rss_after_mb": _rss_mb(),
            "growth_mb": _rss_mb() - before}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _print_config(res):
    print(f"\n{res['config']}: sizes {res['sizes']}, batch {res['batch']}, "
          f"measured matmul peak {res['matmul_peak_gflops']:.1f} GFLOP/s")
    print(f"{'implementation':<40} {'ms/step':>9} {'GFLOP/s':>9} {'% peak':>7} {'vs manual':>9} {'XLA MB':>7}")
    for r in res["rows"]:
        print(f"{r['impl']:<40} {r['ms_per_step']:>9.4f} {r['gflops']:>9.1f} "
              f"{100 * r['fraction_of_matmul_peak']:>6.1f}% {r['ratio_to_fnn_manual']:>9.3f} "
              f"{_mb(r['compiled_memory_mb']):>7}")
    for peer, why in res["skipped"].items():
        print(f"{peer:<40} skipped: {why}")
    if "twin_gap" in res:
        print(_twin_line(res))


def _twin_line(res) -> str:
    return (f"resolution: the same step compiled twice differed by up to {100 * res['twin_gap']:.1f}% "
            "in this run (the 2nd-copy rows); a gap between rows smaller than that is noise.")


def _mb(mb) -> str:
    return "n/a" if mb is None else f"{mb:.1f}"


def _markdown(results) -> str:
    lines = [f"# Benchmark: one training step (forward, backward, SGD), softmax CE, ReLU",
             "", f"Device: {results['device']} ({results['cpu_count']} CPUs visible), JAX {results['jax']}, "
             f"{results['dtype']}, median of {results['rounds']} interleaved rounds.", "",
             "GFLOP/s counts 6 × batch × weights per step. % of matmul peak divides the GEMM work a step "
             "really executes (the input layer's ∂R/∂x is never formed, so one GEMM fewer) by the time and "
             "by the peak measured on those same GEMMs. The floor row scans the update over one fixed batch: "
             "no dispatch, no shuffle, no gather. Compiled memory is XLA's own account of one call: "
             "arguments + outputs − donated buffers + temporaries; the epoch call holds its data set too.", ""]
    for res in results["configs"]:
        lines += [f"## {res['config']}: {res['sizes']}, batch {res['batch']}",
                  f"Measured matmul peak on the step's GEMM shapes: {res['matmul_peak_gflops']:.1f} GFLOP/s", "",
                  "| implementation | ms/step | GFLOP/s | % of matmul peak | time vs fnn manual | compiled memory (MB) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            lines.append(f"| {r['impl']} | {r['ms_per_step']:.4f} | {r['gflops']:.1f} | "
                         f"{100 * r['fraction_of_matmul_peak']:.1f}% | {r['ratio_to_fnn_manual']:.3f} | "
                         f"{_mb(r['compiled_memory_mb'])} |")
        for peer, why in res["skipped"].items():
            lines.append(f"| {peer} | skipped: {why} | | | | |")
        if "twin_gap" in res:
            lines += ["", _twin_line(res)]
        lines.append("")
    if "leak_check" in results:
        lines.append(f"Leak check: {results['leak_check']}")
    lines.append(f"Peak resident memory of the benchmark process: {results['peak_rss_mb']:.0f} MB")
    return "\n".join(lines) + "\n"


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = results["configs"]
    names = [r["impl"] for r in configs[0]["rows"]]
    fig, axes = plt.subplots(1, len(configs), figsize=(4 + 3.2 * len(configs), 0.45 * len(names) + 1.5),
                             sharey=True, squeeze=False)
    for ax, res in zip(axes[0], configs):
        pct = {r["impl"]: 100 * r["fraction_of_matmul_peak"] for r in res["rows"]}
        values = [pct.get(n, 0.0) for n in names]
        bars = ax.barh(range(len(names)), values, color=["C0" if n.startswith("fnn") else
                                                         "C7" if n.startswith("floor") else "C1" for n in names])
        ax.bar_label(bars, [f"{v:.0f}%" for v in values], padding=2, fontsize=8)
        ax.set(xlabel="% of measured matmul peak", xlim=(0, 125),
               title=f"{res['config']} {tuple(res['sizes'])}, batch {res['batch']}")
        ax.axvline(100, color="k", lw=0.6, ls=":")
    axes[0][0].set_yticks(range(len(names)), ["floor (diagnostic)" if n == FLOOR_ROW else n for n in names])
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    atomic_write(path, figure_png(fig))
