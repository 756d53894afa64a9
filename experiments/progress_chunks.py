"""Does running long epochs in chunks (so that the progress bar moves) cost training speed?

`fnn.fit` runs an epoch of more than `fnn.trainer.CHUNK_BATCHES` (128) batches as
several compiled calls of equal chunks of at most 128 batches (1875 batches: 15 of 125),
with the epoch's shuffle drawn once; shorter epochs stay one call. This times whole epochs against chunked ones, interleaved, on the
digits default (44 batches: never chunked, so the check is that nothing else changed) and
on an MNIST-sized epoch (60,000 × 784 synthetic inputs, 1875 batches of 32).
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np
import optax

import fnn
import fnn.training.trainer
from fnn.data.datasets import load

from common import main


def _cases(quick: bool):
    digits = load("digits")
    rng = np.random.default_rng(0)
    n = 6000 if quick else 60000
    big = (rng.standard_normal((n, 784)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32))
    return {"digits (44 batches)": ((64, 128, 128, 10), digits.x_train, digits.y_train),
            f"MNIST-sized ({n // 32} batches)": ((784, 128, 128, 10), *big)}


def _epoch_seconds(sizes, x, y, chunk: int, epochs: int) -> list[float]:
    net = fnn.MLP(sizes, ("relu",) * (len(sizes) - 2) + ("identity",))
    params = fnn.init(jax.random.key(0), net)
    times = []
    fnn.trainer.CHUNK_BATCHES = chunk
    start = [time.perf_counter()]

    def on_epoch(state, metrics):
        now = time.perf_counter()
        times.append(now - start[0])
        start[0] = now

    fnn.fit(net, "softmax_cross_entropy", params, x, y, key=jax.random.key(1), optimizer=optax.adam(1e-3),
            epochs=epochs, batch_size=32, on_epoch=on_epoch)
    return times[1:]  # the first epoch compiles


def run(quick: bool) -> dict:
    rounds, epochs = (2, 3) if quick else (5, 4)
    default = fnn.trainer.CHUNK_BATCHES
    rows = []
    try:
        for name, (sizes, x, y) in _cases(quick).items():
            samples = {"whole epoch": [], f"chunks of <= {default}": []}
            for _ in range(rounds):  # interleaved
                samples["whole epoch"] += _epoch_seconds(sizes, x, y, 10**9, epochs)
                samples[f"chunks of <= {default}"] += _epoch_seconds(sizes, x, y, default, epochs)
            medians = {k: float(np.median(a)) for k, a in samples.items()}
            rows.append({"case": name, "median_epoch_s": medians, "samples": len(samples["whole epoch"]),
                         "ratio_chunked_over_whole": medians[f"chunks of <= {default}"] / medians["whole epoch"]})
    finally:
        fnn.trainer.CHUNK_BATCHES = default
    return {"rows": rows, "rounds": rounds, "epochs_per_round": epochs, "device": str(jax.devices()[0])}


def report(results: dict):
    lines = ["| case | whole epoch (median s) | chunked (median s) | chunked / whole |", "|---|---|---|---|"]
    for r in results["rows"]:
        whole, chunked = r["median_epoch_s"].values()
        lines.append(f"| {r['case']} | {whole:.4f} | {chunked:.4f} | {r['ratio_chunked_over_whole']:.3f} |")
    lines.append("")
    lines.append(f"Medians over {results['rows'][0]['samples']} epochs per arm (compile excluded), "
                 f"{results['rounds']} interleaved rounds, on {results['device']}.")
    plt = fnn.plots.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    names = [r["case"] for r in results["rows"]]
    ax.bar(names, [r["ratio_chunked_over_whole"] for r in results["rows"]], color="tab:blue")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set(ylabel="chunked / whole epoch time", title="cost of chunked epochs (1 = no cost)")
    fig.subplots_adjust(bottom=0.15)
    return "\n".join(lines), fig


if __name__ == "__main__":
    main(sys.modules[__name__])
