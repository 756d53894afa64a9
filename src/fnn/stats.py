"""Summaries over seeds: mean, standard deviation and a 95% confidence interval per grid point."""

from __future__ import annotations

import math

import numpy as np


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided Student-t critical value: ``P(|T| <= q) = confidence`` with ``dof`` degrees
    of freedom (scipy's ``t.ppf``)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, dof))


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, std, half_width, n)`` of the finite ``values``: the sample standard deviation
    (``ddof=1``) and the half-width ``t · std / √n`` of the ``confidence`` t-interval for the
    mean (NaN below two values)."""
    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    n = len(a)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if n == 1:
        return float(a[0]), math.nan, math.nan, 1
    std = float(a.std(ddof=1))
    return float(a.mean()), std, t_quantile(confidence, n - 1) * std / math.sqrt(n), n


def summarise(configs: list[dict], history: dict, diverged: np.ndarray, points: list[dict],
              select: str | None) -> tuple[list[dict], dict | None]:
    """One row per grid point: its settings, ``n`` runs, ``diverged`` runs, and for every final
    metric ``m``: ``m_mean``, ``m_std``, ``m_ci95`` over the runs that did not diverge. Returns
    the rows and the best row by ``select`` among points without a diverged run."""
    rows = []
    point_of = np.array([c["point"] for c in configs])
    for g, point in enumerate(points):
        mine = point_of == g
        row = {**point, "n": int(mine.sum()), "diverged": int((diverged[mine] > 0).sum())}
        for key, a in history.items():
            mean, std, half, _ = mean_ci(a[mine & (diverged == 0), -1])
            row.update({f"{key}_mean": mean, f"{key}_std": std, f"{key}_ci95": half})
        rows.append(row)
    if select is None:
        return rows, None
    if f"{select}_mean" not in rows[0]:
        raise ValueError(f"Cannot select on {select!r}: the history has {', '.join(history)}.")
    sign = -1.0 if select.endswith(("accuracy", "r2")) else 1.0
    live = [r for r in rows if r["diverged"] == 0 and math.isfinite(r[f"{select}_mean"])]
    return rows, min(live, key=lambda r: sign * r[f"{select}_mean"]) if live else None
