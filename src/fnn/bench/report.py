"""The report of ``fnn bench``: the printed table, the markdown file and the figure."""

from __future__ import annotations

from fnn.bench.contestants import FLOOR_ROW
from fnn.io.files import atomic_write
from fnn.io.plots import figure_png, pyplot


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
    lines = ["# Benchmark: one training step (forward, backward, SGD), softmax CE, ReLU",
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
    plt = pyplot()
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
