"""What Lanczos costs in Hessian-vector products, and how many of the top-20 Hessian
eigenpairs it converges: the Lanczos rows of ``quantities_benchmark.py`` alone, so they can
be rerun without the PyTorch, BackPACK, Opacus and ``vmap(grad)`` rows (which take most of
that script's time), at 40, 80 and 160 steps (partial reorthogonalisation, the default), and
at 80 steps with full reorthogonalisation. An untimed run of 300 steps then counts, for every
``m``, how many of the top 20 have converged in ``T_m``: the products a converged top-20 needs.

One process per size (softmax cross-entropy, ReLU, float32): the rows are a hand-written
Hessian-vector product (its own forward pass included) and ``fnn.top_eigenpairs`` with
``k = 20`` at 40, 60 and 80 steps (one forward pass, then one operator product and one
reorthogonalisation per step), timed interleaved in a fresh shuffled order each round after
one untimed call (``fnn.bench.harness``); the figures are medians over rounds. A pair counts
as converged when its Lanczos residual ``‖A u − λ u‖`` is at most ``1e-6 |λ|`` (and, as the
quantities benchmark counted it, ``1e-4 |λ|``). The float64 check of ``quantities_benchmark``
(Lanczos's top-20 against ``eigh`` of a dense Hessian) is run again with the code as it is.

    python experiments/lanczos_benchmark.py            # writes results/lanczos_benchmark.{json,md}
    python experiments/lanczos_benchmark.py --rounds 3 --configs digits
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import jax
import numpy as np

import fnn
from fnn.analysis.spectrum import _top_eigenpairs, curvature_matvec, lanczos_segments
from fnn.bench.harness import calibrate, time_rows
from fnn.io.files import atomic_write, write_json

from common import provenance
from quantities_benchmark import CONFIGS, TOP_K, float64_check

RESULTS = Path(__file__).parent / "results"
STEPS = (40, 80, 160)
FULL = 80  # the steps of the row with full reorthogonalisation (as before partial was the default)
LONG = 300  # the steps of the untimed run that finds how many steps a converged top-20 needs
HVP = "Hessian-vector product (fnn)"
FULL_ROW = f"Lanczos top-{TOP_K}, {FULL} steps, full reorthogonalisation"


def _rows(sizes, batch) -> dict:
    net, loss = fnn.MLP(sizes, "relu"), fnn.get_loss("softmax_cross_entropy")
    params = fnn.init(jax.random.key(0), net, "he")
    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(k1, (batch, sizes[0]))
    v = jax.random.randint(k2, (batch,), 0, sizes[-1])
    fns = {HVP: jax.jit(lambda p, x, v: fnn.hvp(net, loss, p, x, v, p))}
    for m in STEPS:
        fns[f"Lanczos top-{TOP_K}, {m} steps"] = lambda p, x, v, m=m: fnn.top_eigenpairs(
            net, loss, p, x, v, jax.random.key(3), k=TOP_K, num_iters=m)
    fns[FULL_ROW] = lambda p, x, v: _top_eigenpairs(net, loss, "hessian", (TOP_K, FULL, False), 0, p, x, v,
                                                    jax.random.key(3))
    rows = {}
    for name, fn in fns.items():
        def run(k, fn=fn, kept=[]):
            for _ in range(k):
                out = fn(params, x, v)
            kept[:] = [jax.block_until_ready(out)]

        run.last = lambda kept=run.__defaults__[-1]: kept[0]
        rows[name] = run
    return rows


def steps_to_converge(sizes, batch, steps=LONG, rel=1e-6) -> dict:
    """From one run of ``steps`` Lanczos steps (partial reorthogonalisation, the benchmark's start
    vector), for every ``m`` the number of the top-20 Ritz pairs of ``T_m`` with residual bound
    ``|β_m s_{m,j}| ≤ rel |θ_j|``: how many operator products a converged top-20 needs (Krylov
    convergence, not the implementation's overhead)."""
    net, loss = fnn.MLP(sizes, "relu"), fnn.get_loss("softmax_cross_entropy")
    params = fnn.init(jax.random.key(0), net, "he")
    k1, k2 = jax.random.split(jax.random.key(1))
    x, v = jax.random.normal(k1, (batch, sizes[0])), jax.random.randint(k2, (batch,), 0, sizes[-1])

    @jax.jit
    def run(p):
        matvec, theta = curvature_matvec(net, loss, p, x, v)
        start, restart = jax.random.split(jax.random.key(3))
        return lanczos_segments(matvec, jax.random.rademacher(start, theta.shape, theta.dtype), steps, restart, True)[:2]

    alpha, beta = (np.asarray(a, np.float64) for a in run(params))
    counts = []
    for m in range(TOP_K, steps + 1):
        t = np.diag(alpha[:m]) + np.diag(beta[:m - 1], 1) + np.diag(beta[:m - 1], -1)
        theta, s = np.linalg.eigh(t)
        top = np.argsort(-theta)[:TOP_K]
        counts.append(int(np.sum(np.abs(beta[m - 1] * s[-1, top]) <= rel * np.abs(theta[top]))))
    first = next((m for m, c in zip(range(TOP_K, steps + 1), counts) if c == TOP_K), None)
    return {"steps": steps, "rel": rel, "converged_by_steps": dict(zip(range(TOP_K, steps + 1), counts)),
            "first_all_converged": first}


def _converged(res, rel) -> int:
    return int(sum(float(r) <= rel * abs(float(lam)) for lam, r in zip(res.eigenvalues, res.residuals)))


def bench(name: str, rounds: int) -> dict:
    sizes, batch = CONFIGS[name]
    rows = _rows(sizes, batch)
    times = time_rows(rows, calibrate(rows), rounds, warm_calls=1)
    med = {row: statistics.median(ts) * 1e3 for row, ts in times.items()}
    out = {"config": name, "sizes": sizes, "batch": batch, "rounds": rounds, "hvp_ms": med[HVP], "lanczos": []}
    for m in STEPS:
        row = f"Lanczos top-{TOP_K}, {m} steps"
        res = rows[row].last()
        out["lanczos"].append({
            "steps": m, "ms": med[row], "hvps": med[row] / med[HVP], "hvps_per_step": med[row] / med[HVP] / m,
            "converged_1e-6": _converged(res, 1e-6), "converged_1e-4": _converged(res, 1e-4),
            "eigenvalues": [float(a) for a in res.eigenvalues], "residuals": [float(a) for a in res.residuals]})
    res = rows[FULL_ROW].last()
    out["full"] = {"steps": FULL, "ms": med[FULL_ROW], "hvps": med[FULL_ROW] / med[HVP],
                   "converged_1e-6": _converged(res, 1e-6), "converged_1e-4": _converged(res, 1e-4)}
    out["krylov"] = steps_to_converge(sizes, batch)
    return out


def markdown(results: list[dict], check: dict | None = None) -> str:
    lines = ["# What Lanczos costs", "",
             f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, float32, softmax cross-entropy, ReLU; "
             f"`fnn.top_eigenpairs` with k = {TOP_K}, median ms over interleaved rounds, the rows of a size in "
             "one process. HVP: one hand-written Hessian-vector product with its own forward pass. "
             "Converged: Lanczos residual ≤ 1e-6 |λ| (≤ 1e-4 |λ|).", ""]
    for res in results:
        lines += [f"## {res['config']}: {tuple(res['sizes'])}, batch {res['batch']}, {res['rounds']} rounds", "",
                  f"One HVP: {res['hvp_ms']:.2f} ms.", "",
                  f"| steps | ms | in HVPs | HVPs per step | top-{TOP_K} converged to 1e-6 | to 1e-4 |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['steps']} | {r['ms']:.1f} | {r['hvps']:.1f} | {r['hvps_per_step']:.2f} | "
                  f"{r['converged_1e-6']} | {r['converged_1e-4']} |" for r in res["lanczos"]]
        full, kry = res["full"], res["krylov"]
        by, first = kry["converged_by_steps"], kry["first_all_converged"] or f"> {kry['steps']}"
        lines += [f"| {full['steps']}, full reorthogonalisation | {full['ms']:.1f} | {full['hvps']:.1f} | "
                  f"{full['hvps'] / full['steps']:.2f} | {full['converged_1e-6']} | {full['converged_1e-4']} |", "",
                  f"Krylov convergence (one untimed run of {kry['steps']} steps, residual bound ≤ 1e-6 |θ| from "
                  f"T_m alone): top-{TOP_K} converged after m = " + ", ".join(
                      f"{m}: {by[m]}" for m in (20, 30, 40, 50, 80, 120, 160, 200, 250, 300) if m in by)
                  + f"; all {TOP_K} first at m = {first}."]
        last = res["lanczos"][-1]
        lines += ["", f"Top-{TOP_K} after {last['steps']} steps: " + ", ".join(f"{a:.4g}" for a in last["eigenvalues"])
                  + "; residuals " + ", ".join(f"{a:.1e}" for a in last["residuals"]) + ".", ""]
    if check:
        lines += [f"## Lanczos against a dense Hessian (float64, {tuple(check['sizes'])}, batch {check['batch']}, "
                  f"{check['parameters']} parameters)", "", f"| steps | max relative error of the top-{TOP_K} | "
                  "within 1e-6 |", "|---:|---:|---:|"]
        lines += [f"| {k.split()[0]} | {v['max relative error']:.1e} | {v['pairs within 1e-6']} |"
                  for k, v in check.items() if k.endswith("steps")]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    results = []
    for name in args.configs:
        results.append(bench(name, args.rounds))
        print(markdown(results[-1:]), flush=True)
    check = float64_check()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "lanczos_benchmark.json", {"configs": results, "lanczos_float64_check": check,
                                                "provenance": provenance(__file__)})
    atomic_write(out / "lanczos_benchmark.md", markdown(results, check))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
