"""Compile once: the first and the second identical ``fnn.fit`` in one process, as a notebook runs
a cell twice, at the digits size of ``fnn train`` (64-128-128-10, relu, Adam 1e-3, batch 32).

Each of ``--processes`` fresh processes times, in order:

1. the first ``fit`` (it compiles the epoch, the metrics and the small eager programs);
2. the second, identical ``fit`` (the goal: at most 10% of the first);
3. a third ``fit`` with ``optax.adam(1e-3)`` built anew: a new optimizer object is a new
   program, so this is what every second ``fit`` paid before programs were memoised;

and counts the programs JAX compiles during 2 (``jax_log_compiles``). The table gives the
median over the processes, and the ratio of the medians.

    python experiments/compile_once_benchmark.py [--processes 5] [--epochs 20] [--quick]

Writes experiments/results/compile_once_benchmark.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, provenance, table


def child(epochs: int) -> dict:
    """One process: the three timed fits (imports and data loading are not timed)."""
    import logging

    import jax
    import optax

    import fnn

    data = fnn.data.load("digits", seed=0)
    net = fnn.MLP((64, 128, 128, 10), "relu")
    params = fnn.init(jax.random.key(0), net, "he")
    compiled = []

    class Count(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling "):
                compiled.append(record.getMessage().split(" with ")[0])

    def fit(**kw):
        start = time.perf_counter()
        p, _ = fnn.fit(net, "softmax_cross_entropy", params, data.x_train, data.y_train, key=jax.random.key(1),
                       epochs=epochs, batch_size=32, test=(data.x_test, data.y_test), **kw)
        jax.block_until_ready(p)
        return time.perf_counter() - start

    first = fit()
    logging.getLogger("jax").addHandler(Count())
    with jax.log_compiles(True):
        second = fit()
        count = len(compiled)
        new_optimizer = fit(optimizer=optax.adam(1e-3))
    return {"first_s": first, "second_s": second, "second_compiles": count, "new_optimizer_s": new_optimizer}


def run(processes: int, epochs: int) -> dict:
    env = {**os.environ, "FNN_NO_COMPILE_CACHE": "1"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # in-process reuse only: no persistent cache
    runs = []
    for _ in range(processes):
        out = subprocess.run([sys.executable, __file__, "--child", "--epochs", str(epochs)], env=env,
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1], file=sys.stderr)
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {"processes": processes, "epochs": epochs, "cpu_count": os.cpu_count(), "runs": runs, "median": median,
            "second_over_first": median["second_s"] / median["first_s"],
            "new_optimizer_over_first": median["new_optimizer_s"] / median["first_s"]}


def report(results: dict) -> str:
    m = results["median"]
    rows = [["first fit (compiles)", f"{m['first_s']:.3f}", "1.00"],
            ["second, identical fit", f"{m['second_s']:.3f}", f"{results['second_over_first']:.3f}"],
            ["third fit, optax.adam(1e-3) built anew (recompiles)", f"{m['new_optimizer_s']:.3f}",
             f"{results['new_optimizer_over_first']:.3f}"]]
    return (f"# Compile once: a second identical fit in one process\n\n"
            f"digits (1438 training examples), 64-128-128-10 relu, Adam 1e-3, batch 32, {results['epochs']} "
            f"epochs, test set evaluated every epoch; median of {results['processes']} processes on "
            f"{results['cpu_count']} CPU cores (shared).\n\n"
            + table(["fit", "seconds (median)", "× first"], rows)
            + f"\n\nPrograms compiled during the second fit: {', '.join(str(r['second_compiles']) for r in results['runs'])}"
              " (one number per process).\n")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processes", type=int, default=5)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="2 processes of 2 epochs")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.epochs)))
        return {}
    results = run(2, 2) if args.quick else run(args.processes, args.epochs)
    results["provenance"] = provenance(__file__)
    markdown = report(results)
    from fnn.io.files import atomic_write, write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compile_once_benchmark.json", results)
    atomic_write(out / "compile_once_benchmark.md", markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
