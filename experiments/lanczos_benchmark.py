"""What Lanczos costs in Hessian-vector products, and how many of the top-20 Hessian
eigenpairs it converges: the Lanczos rows of ``quantities_benchmark.py`` alone, so they can
be rerun without the PyTorch, BackPACK, Opacus and ``vmap(grad)`` rows (which take most of
that script's time), at 40, 60 and 80 steps.

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

import fnn
from fnn.bench.harness import calibrate, time_rows
from fnn.io.files import atomic_write, write_json

from common import provenance
from quantities_benchmark import CONFIGS, TOP_K, float64_check

RESULTS = Path(__file__).parent / "results"
STEPS = (40, 60, 80)
HVP = "Hessian-vector product (fnn)"


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
    rows = {}
    for name, fn in fns.items():
        def run(k, fn=fn, kept=[]):
            for _ in range(k):
                out = fn(params, x, v)
            kept[:] = [jax.block_until_ready(out)]

        run.last = lambda kept=run.__defaults__[-1]: kept[0]
        rows[name] = run
    return rows


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
