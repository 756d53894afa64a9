"""The committed results of the experiments that compare arms, read paired over their shared seeds.

Arms of one experiment share their seeds: seed s gives every arm the same split, the same
batch order and (for equal shapes) the same initial weights, so seed-to-seed variation is
common to the arms and cancels in the per-seed difference. Whether two 95% intervals
overlap is not a test; this script states each comparison as the mean per-seed difference
with its Student-t interval, the paired t-test, the sign count and its exact sign test
(``fnn.stats.paired``), and Holm's adjusted p over every comparison it states
(``fnn.stats.holm``). It trains nothing: it reads ``results/NAME.json`` as committed (their
hashes are recorded, and the provenance test fails when one changes without a rerun of this
script) and draws the per-seed points, which show a bimodal arm that a mean ± interval hides.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from common import RESULTS, counted, figure, main, table
from fnn.analysis.stats import holm, paired

CHANCE = 0.1  # digits: ten classes; a diverged run's accuracy where its result file states none

INPUTS = ["activations", "vanishing_gradients", "universal_approximation", "gradient_noise_and_privacy"]


def _load(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()), hashlib.sha256(path.read_bytes()).hexdigest()


def _row(source, what, a, b, scale=100.0, unit=" pts", lower_is_better=False, failure=CHANCE):
    """One comparison; a diverged run (NaN) counts as a failure (``failure``), never drops its pair."""
    (a, ka), (b, kb) = counted(a, failure), counted(b, failure)
    c = paired(a, b)
    return {"source": source, "comparison": what, "lower_is_better": lower_is_better, "diverged": [ka, kb],
            "difference": c.mean * scale, "ci95": c.half_width * scale,
            "p_value": c.p_value, "wins": c.wins, "ties": c.ties, "losses": c.losses, "sign_p": c.sign_p,
            "n": c.n, "text": c.text(scale=scale, unit=unit),
            "per_seed": [float(d) if np.isfinite(d) else None for d in (np.asarray(a) - np.asarray(b)) * scale]}


def _activations(r):
    runs, rows = r["runs"], []
    final = {k: np.asarray(a["history"]["test_accuracy"])[:, -1] for k, a in runs.items()}
    auc = {k: np.asarray(a["history"]["test_accuracy"]).mean(1) for k, a in runs.items()}
    for a, b in (("relu", "tanh"), ("relu", "sigmoid"), ("tanh", "sigmoid"), ("leaky_relu", "relu")):
        rows.append(_row("activations", f"{a} − {b}, final test accuracy", final[a], final[b]))
        rows.append(_row("activations", f"{a} − {b}, mean test accuracy over epochs", auc[a], auc[b]))
    return rows


def _vanishing(r):
    """Test accuracy over the last quarter of the epochs, its diverged runs already counted as
    failures by vanishing_gradients (their split's majority-class share); from a result written
    before that (no ``score``), the final test accuracy with a diverged run's NaN counted as chance."""
    t, rows = r["trained"], []
    acc = {k: counted(a.get("score", a["test_accuracy"]), CHANCE)[0] for k, a in t.items()}
    div = {k: counted(a["test_accuracy"], CHANCE)[1] for k, a in t.items()}
    for d in r["trained_depths"]:
        for a, b in (("relu/he", "relu/glorot"), ("relu/he", "tanh/glorot"), ("tanh/glorot", "sigmoid/glorot")):
            rows.append({**_row("vanishing_gradients", f"depth {d}: {a} − {b}", acc[f"{a}/{d}"], acc[f"{b}/{d}"]),
                         "diverged": [div[f"{a}/{d}"], div[f"{b}/{d}"]]})
    lo, hi = min(r["trained_depths"]), max(r["trained_depths"])
    for s in ("sigmoid/glorot", "tanh/glorot", "relu/glorot", "relu/he"):
        rows.append({**_row("vanishing_gradients", f"{s}: depth {lo} − depth {hi}", acc[f"{s}/{lo}"],
                            acc[f"{s}/{hi}"]), "diverged": [div[f"{s}/{lo}"], div[f"{s}/{hi}"]]})
    return rows


def _universal(r):
    """Deep against shallow at equal (or smaller) parameter counts: log10 RMSE, paired by seed."""
    rows = []
    shallow = {s["params"]: s for s in r["shallow"]}
    for d in r["deep"]:
        match = max((p for p in shallow if p <= d["params"]), default=None)
        if match is None:
            continue
        s = shallow[match]
        rows.append(_row("universal_approximation",
                         f"log10 test RMSE, deep {'-'.join(map(str, d['widths']))} ({d['params']} params) − "
                         f"shallow {s['width']} ({s['params']} params)",
                         np.log10(d["test_rmse"]), np.log10(s["test_rmse"]), scale=1.0, unit=" decades",
                         lower_is_better=True, failure=np.log10(r.get("target_rms", 1.0))))
    return rows


def _privacy(r):
    p = r["privacy"]  # diverged runs already counted as failures by gradient_noise_and_privacy
    base = np.asarray(p["no clipping"]["test_accuracy"])
    div = lambda a: a.get("diverged", 0)
    return [{**_row("gradient_noise_and_privacy", f"{arm} − no clipping, final test accuracy",
                    np.asarray(a["test_accuracy"]), base), "diverged": [div(a), div(p["no clipping"])]}
            for arm, a in p.items() if arm != "no clipping"]


def run(quick: bool = False) -> dict:
    loaded = {name: _load(name) for name in INPUTS}
    rows = (_activations(loaded["activations"][0]) + _vanishing(loaded["vanishing_gradients"][0])
            + _universal(loaded["universal_approximation"][0]) + _privacy(loaded["gradient_noise_and_privacy"][0]))
    for row, p in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = p
    sources = {name: {"sha256": h, "provenance": d.get("provenance") or "none recorded: written by an earlier "
                      "version of its script"} for name, (d, h) in loaded.items()}
    last = "score" in next(iter(loaded["vanishing_gradients"][0]["trained"].values()))
    return {"comparisons": rows, "inputs": sources,
            "vanishing_metric": "the mean test accuracy over the last quarter of each run's epochs" if last
            else "the final test accuracy (that result predates the last-quarter score)"}


def _reading(r):
    if not r["p_holm"] < 0.05:
        return "not distinguishable"
    return "first better" if (r["difference"] < 0) == r["lower_is_better"] else "second better"


def report(res):
    rows = [[r["source"], r["comparison"], r["text"], f"{r['diverged'][0]}, {r['diverged'][1]} of {r['n']}",
             f"{r['p_holm']:.2g}", _reading(r)] for r in res["comparisons"]]
    stale = [n for n, s in res["inputs"].items() if isinstance(s["provenance"], str)]
    md = ["# Paired re-analysis of the committed results", "",
          "Each row: first − second arm, mean ± 95% t-interval of the per-seed difference, paired t-test, sign "
          "count and exact sign test; p (Holm) adjusts for every row of the table (family-wise 5%). A row that "
          "reads \"not distinguishable\" is not evidence of equality: the interval says how large a difference "
          "the seeds leave possible. RMSE: lower is better. A diverged run counts as a failure and keeps its pair "
          "(accuracy: its split's majority-class share, or 0.1, chance on ten classes, where the result file states "
          "none; RMSE: that of predicting zero); 'diverged' counts them per arm. vanishing_gradients' rows compare "
          f"{res['vanishing_metric']}. With 5 seeds the exact sign test cannot go below p = 2/2⁵ = 0.0625, and Holm over "
          f"{len(rows)} comparisons asks a 5/5 paired t-test for p < {0.05 / len(rows):.4f}.", "",
          table(["experiment", "comparison", "first − second", "diverged (first, second)", "p (Holm)", "reading"],
                rows), "",
          f"Inputs read as committed: {', '.join(INPUTS)}. Written by an earlier version of their scripts (no "
          f"provenance recorded): {', '.join(stale) or 'none'}; their numbers are those runs', not reruns."]
    return "\n".join(md), _forest(res)


def _forest(res):
    """The comparisons as a forest plot, one panel per experiment (each its own scale): each row's
    per-seed paired differences (grey dots) and their mean with its 95% interval (filled red:
    Holm p < 0.05; open blue: not distinguishable). An interval wider than the panel is cut at its edge."""
    plt = figure()
    sources = list(dict.fromkeys(r["source"] for r in res["comparisons"]))
    groups = [[r for r in res["comparisons"] if r["source"] == s] for s in sources]
    heights = [len(g) + 1.5 for g in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 0.25 * sum(heights) + 1.5), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, rows in zip(axes[:, 0], groups):
        y = np.arange(len(rows))[::-1]
        points = [0.0]
        for yi, r in zip(y, rows):
            seeds = np.array([np.nan if d is None else d for d in r["per_seed"]], float)
            ax.scatter(seeds, np.full(len(seeds), yi) + np.linspace(-0.2, 0.2, len(seeds)), s=8, color="0.55", zorder=2)
            strong = r["p_holm"] < 0.05
            ax.errorbar(r["difference"], yi, xerr=np.nan_to_num(r["ci95"]), fmt="o", ms=5, capsize=3, zorder=3,
                        color="C3" if strong else "C0", mfc="C3" if strong else "white")
            points += [*seeds[np.isfinite(seeds)], r["difference"]]
        lo, hi = np.nanmin(points), np.nanmax(points)
        ax.set_xlim(lo - 0.08 * (hi - lo) - 1e-9, hi + 0.08 * (hi - lo) + 1e-9)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, [r["comparison"] for r in rows], fontsize=7)
        unit = "decades of test RMSE" if rows[0]["lower_is_better"] else "points of test accuracy"
        ax.set(ylim=(-0.7, len(rows) - 0.3), title=rows[0]["source"], xlabel=f"first − second ({unit})")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, axis="x")
    handles = [plt.Line2D([], [], marker="o", color="C3", ls="", label="mean, 95% interval: Holm p < 0.05"),
               plt.Line2D([], [], marker="o", color="C0", mfc="white", ls="", label="mean, 95% interval: not distinguishable"),
               plt.Line2D([], [], marker="o", color="0.55", ms=3, ls="", label="one seed's difference")]
    fig.legend(handles=handles, fontsize=8, loc="upper center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    return fig


if __name__ == "__main__":
    main(sys.modules[__name__])
