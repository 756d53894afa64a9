"""The timing harness of ``fnn bench``: timing rows, XLA's compiled memory, the matmul peak
measured on a step's own GEMMs, and FLOP counts."""

from __future__ import annotations

import os
import random
import time

import jax
import jax.numpy as jnp


def _flops(sizes, batch) -> float:
    """The nominal count, 6 × batch × weights: three GEMMs of 2·B·d_in·d_out per layer."""
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 6.0 * batch * weights


def _executed_flops(sizes, batch) -> float:
    """What a step really multiplies: no implementation here forms ∂R/∂x for the input
    layer (fnn skips it, autograd sees x needs no gradient), so one GEMM fewer."""
    return _flops(sizes, batch) - 2.0 * batch * sizes[0] * sizes[1]


def _stepper(call, params, opt_state, steps_per_call: int, memory_mb: float | None):
    """A timing row: ``run(k)`` advances its own copy of the state by ``k`` steps and blocks.

    ``call(params, opt_state, i) -> (params, opt_state)`` performs ``steps_per_call`` steps;
    ``i`` counts the calls (a fresh PRNG key for each epoch).
    """
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


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def calibrate(rows: dict, steps: int = 0) -> dict:
    """Warms every row up (compiling it) and picks its steps per round: about 0.3 s of work,
    or ``steps`` when given, in whole calls."""
    per_call = {}
    for row, run in rows.items():
        spc = getattr(run, "steps_per_call", 1)
        run(spc)
        t = time.perf_counter()
        run(spc)
        per_call[row] = max(spc, int(round(0.3 / max((time.perf_counter() - t) / spc, 1e-7) / spc)) * spc)
        if steps:
            per_call[row] = max(spc, steps // spc * spc)
    return per_call


def time_rows(rows: dict, per_call: dict, rounds: int, warm_calls: int = 0) -> dict:
    """Seconds per step of every row in every round, the rows interleaved.

    The order is a fresh (seeded) shuffle every round, so that no row always runs first or
    after the same peer: a row's speed depends on what ran before it (caches, the allocator,
    threads, and a big predecessor's memory still being handed back to the system). A plain
    rotation would not do: it keeps every row behind the same peer in all rounds but one.
    With ``warm_calls``, each row makes that many untimed calls right before its timed ones.
    """
    times = {row: [] for row in rows}
    names = list(rows)
    rng = random.Random(0)
    for _ in range(rounds):
        for row in rng.sample(names, len(names)):
            if warm_calls:
                rows[row](warm_calls * getattr(rows[row], "steps_per_call", 1))
            t = time.perf_counter()
            rows[row](per_call[row])
            times[row].append((time.perf_counter() - t) / per_call[row])
    return times
