"""``fnn bench``: one training step (forward, backward, SGD update; softmax cross-entropy, ReLU)
timed for fnn's hand-written backward, fnn with ``jax.grad``, the scan-fused epoch, and the
peers a researcher would otherwise use (PyTorch eager and torch.compile, Flax NNX, Equinox)
when installed.

Every row is timed in the same process, interleaved round by round (in a fresh shuffled
order each round) so that drift and position hit all rows alike; the figure is the median over rounds
of the per-step time. The machine's float32 matmul throughput is measured on the very GEMMs
the step runs (forward ``y W``, weight gradient ``yᵀ δz``, and input gradient ``δz Wᵀ``
above the input layer), best of several runs. Every row reports its GFLOP/s on the nominal
count (6 × batch × weights per step) and, as "% of peak", the GEMM work it really executes
(one GEMM fewer: nobody forms ``∂R/∂x``) divided by its time and by that peak. A fixed-batch
scanned update is timed as a diagnostic floor: no dispatch and no data movement, only the
step's arithmetic.

The package has one module per concept: :mod:`~fnn.bench.contestants` (what is timed),
:mod:`~fnn.bench.harness` (how it is timed) and :mod:`~fnn.bench.report` (what is written).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
from pathlib import Path

import jax

from fnn.bench.contestants import PEER_NAMES, PEERS, TWIN, _fnn_rows
from fnn.bench.harness import _executed_flops, _flops, _matmul_peak, _rss_mb, calibrate, time_rows
from fnn.bench.report import _markdown, _plot, _print_config
from fnn.io.files import atomic_write, write_json


CONFIGS = {
    "digits": ((64, 128, 128, 10), 128),
    "mnist": ((784, 1024, 1024, 10), 256),
    "wide": ((2048, 4096, 4096, 10), 1024),
}


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
    """The flags of ``fnn bench``."""
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


def bench_config(name, args) -> dict:
    """Times every row of configuration ``name`` (interleaved rounds) and returns its results."""
    sizes, batch = CONFIGS[name]
    rows, skipped = _rows(sizes, batch, args)
    per_call = calibrate(rows, args.steps)
    peak = _matmul_peak(sizes, batch, args.dtype, args.device)
    times = time_rows(rows, per_call, args.rounds)
    peak = max(peak, _matmul_peak(sizes, batch, args.dtype, args.device))
    flops, executed = _flops(sizes, batch), _executed_flops(sizes, batch)
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


def _rows(sizes, batch, args) -> tuple[dict, dict]:
    """fnn's rows and the requested peers' (CPU, float32 only); peers that cannot run are skipped."""
    rows = _fnn_rows(sizes, batch, args.dtype, args.device, SCAN_STEPS[_config_name(sizes)], args.twins)
    skipped = {}
    if args.device == "cpu" and args.dtype == "float32":
        for peer in args.peers:
            try:
                rows.update(PEERS[peer](sizes, batch))
            except ImportError as err:
                skipped[peer] = f"not installed ({err.name}); pip install -e '.[bench]'"
            except Exception as err:  # a peer that fails is reported, not fatal
                skipped[peer] = f"failed: {type(err).__name__}: {err}"
    return rows, skipped


def _config_name(sizes) -> str:
    return next(name for name, (s, _) in CONFIGS.items() if s == sizes)


def run(args) -> int:
    """``fnn bench``: times every configuration and writes ``benchmark.{json,md,png}`` to ``--out``."""
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
    sizes, batch = CONFIGS["digits"]
    run = _fnn_rows(sizes, batch, "float32", "cpu")["fnn manual (step per call)"]
    run(1000)
    gc.collect()
    before = _rss_mb()
    run(steps)
    gc.collect()
    return {"steps": steps, "rss_before_mb": before, "rss_after_mb": _rss_mb(),
            "growth_mb": _rss_mb() - before}
