"""Summaries over seeds: mean, standard deviation and a 95% confidence interval per grid point;
paired comparisons of two arms that share their seeds (:func:`paired`), and Holm's correction
when several comparisons are stated at once (:func:`holm`)."""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Paired:
    """What :func:`paired` returns: the comparison of arm ``a`` with arm ``b`` over shared seeds.

    Attributes:
      mean: the mean per-seed difference ``d̄ = mean(a_s − b_s)`` (units of the metric).
      half_width: the half-width ``t_{n−1} · s_d / √n`` of its ``confidence`` t-interval.
      p_value: two-sided p of the paired t-test of ``E[d] = 0`` (``scipy.stats.ttest_rel``).
      n: the number of seeds where both arms are finite (the pairs used).
      wins, ties, losses: seeds with ``a_s > b_s``, ``a_s == b_s``, ``a_s < b_s``.
      sign_p: two-sided exact sign-test p: ``binomtest(wins, wins + losses, ½)``, ties dropped.
    """

    mean: float
    half_width: float
    p_value: float
    n: int
    wins: int
    ties: int
    losses: int
    sign_p: float

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the paired t-test rejects ``E[d] = 0`` at level ``alpha`` (false for NaN p)."""
        return bool(self.p_value < alpha)

    def text(self, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
        """``+1.40 ± 0.84 (paired t p = 0.0044; 8 wins, 1 tie, 1 loss, sign p = 0.039)``, the
        difference and half-width multiplied by ``scale`` (100 for points of accuracy)."""
        count = lambda k, word, plural: f"{k} {word if k == 1 else plural}"
        signs = ", ".join([count(self.wins, "win", "wins"), count(self.ties, "tie", "ties"),
                           count(self.losses, "loss", "losses")])
        return (f"{self.mean * scale:+.{digits}f} ± {self.half_width * scale:.{digits}f}{unit} (paired t p = "
                f"{self.p_value:.2g}; {signs}, sign p = {self.sign_p:.2g})")


def paired(a, b, confidence: float = 0.95) -> Paired:
    """Compares two arms run on the same seeds (same splits, initial weights and batches):
    the Student-t interval of the mean per-seed difference, the paired t-test and the sign test.

    With ``d_s = a_s − b_s`` over the ``n`` seeds where both are finite (a diverged run's NaN
    drops its pair), ``d̄`` the mean and ``s_d`` the sample standard deviation (``ddof=1``)::

        T = d̄ / (s_d / √n) ~ t_{n−1} under E[d] = 0;   p = 2·P(t_{n−1} ≥ |T|)
        interval: d̄ ± t_{n−1, (1+confidence)/2} · s_d / √n

    Assumes the pairs are independent across seeds and the differences roughly normal (the
    t-test is robust to mild skew at n ≈ 10; the sign test assumes only independence and a
    continuous difference, and is the check when a few seeds dominate). Pairing removes the
    variance the arms share through their seed, which is why it resolves differences that
    overlapping unpaired intervals cannot (overlap of two 95% intervals is not a test).
    Degenerate cases: ``n < 2`` gives NaN interval and p; all differences equal gives a zero
    half-width and p = 0 (or p = 1 when they are all zero).

    Args:
      a, b: ``(seeds,)`` metric values, position ``s`` of both from the same seed.
      confidence: the interval's coverage (default 95%).

    Returns:
      A :class:`Paired`.

    Raises:
      ValueError: when ``a`` and ``b`` differ in length.

    References: Student (1908), "The probable error of a mean", Biometrika 6(1); the sign test:
    Dixon & Mood (1946), JASA 41(236); Demšar (2006), "Statistical comparisons of classifiers
    over multiple data sets", JMLR 7.
    """
    from scipy.stats import binomtest
    from scipy.stats import t as student

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired: the arms have {a.size} and {b.size} values; pass one value per shared seed.")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n, wins, losses = len(d), int((d > 0).sum()), int((d < 0).sum())
    sign_p = float(binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    if n < 2:
        return Paired(float(d.mean()) if n else math.nan, math.nan, math.nan, n, wins, n - wins - losses, losses,
                      sign_p)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = float(2 * student.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return Paired(mean, half, p, n, wins, n - wins - losses, losses, sign_p)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better: accuracies and R² (``*_accuracy``,
    ``*_r2``) yes; losses and errors (every other metric) no."""
    return metric.endswith(("accuracy", "r2"))


def lead(best_values, its_values, metric: str) -> Paired:
    """The lead of one arm (``best_values``) over another on ``metric``, paired over shared seeds
    and oriented by the metric's direction, so that positive means ahead: :func:`paired` of
    ``best − other`` when higher is better (:func:`higher_is_better`), of ``other − best`` when
    lower is better (a loss). ``wins`` are then the seeds where ``best_values`` is better."""
    if higher_is_better(metric):
        return paired(best_values, its_values)
    return paired(its_values, best_values)


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values: reject hypothesis ``i`` at family-wise level ``α``
    when its adjusted p is ``≤ α``; the chance of any false rejection among the ``m`` stays
    ``≤ α`` under any dependence between the tests.

    With the p-values sorted ascending, ``p_(1) ≤ … ≤ p_(m)``::

        p̃_(k) = min(1, max_{j ≤ k} (m − j + 1) · p_(j))

    NaN p-values are left NaN and do not count towards ``m``. Returns the adjusted values in
    the input's order.

    Reference: Holm (1979), "A simple sequentially rejective multiple test procedure",
    Scandinavian Journal of Statistics 6(2), 65-70.
    """
    p = np.asarray(p_values, np.float64).ravel()
    out = np.full(p.shape, math.nan)
    live = np.flatnonzero(np.isfinite(p))
    order = live[np.argsort(p[live], kind="stable")]
    m = len(order)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out.tolist()


def summarise(configs: list[dict], history: dict, diverged: np.ndarray, points: list[dict],
              select: str | None) -> tuple[list[dict], dict | None]:
    """One row per grid point: its settings, ``n`` runs, ``diverged`` runs, and for every final
    metric ``m``: ``m_mean``, ``m_std``, ``m_ci95`` over the runs that did not diverge. Returns
    the rows and (a copy of) the best row by ``select`` among points without a diverged run;
    when a second such point exists, the copy has ``runner_up`` (:func:`runner_up`): the
    second-best point compared with the best, paired over the seeds they share and oriented by
    ``select``'s direction (positive difference and wins: the best is better)."""
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
    sign = -1.0 if higher_is_better(select) else 1.0
    live = sorted((g for g, r in enumerate(rows) if r["diverged"] == 0 and math.isfinite(r[f"{select}_mean"])),
                  key=lambda g: sign * rows[g][f"{select}_mean"])
    if not live:
        return rows, None
    best = dict(rows[live[0]])
    if len(live) > 1:
        mine, other = (by_seed(configs, history[select], diverged, g) for g in live[:2])
        shared = sorted(set(mine) & set(other))
        best["runner_up"] = runner_up(points[live[1]], [mine[s] for s in shared],
                                      [other[s] for s in shared], select)
    return rows, best


def by_seed(configs: list[dict], history: np.ndarray, diverged: np.ndarray, point: int) -> dict:
    """``{seed: final value}`` of grid point ``point``'s runs (NaN for a diverged run), from a
    sweep's ``configs``, one ``(runs, epochs)`` history array and ``diverged``."""
    final = np.where(np.asarray(diverged) > 0, math.nan, np.asarray(history)[:, -1])
    return {c["seed"]: float(final[i]) for i, c in enumerate(configs) if c["point"] == point}


def runner_up(point: dict, best_values, its_values, metric: str = "accuracy") -> dict:
    """The runner-up entry of a sweep's ``best``: its settings, and the best's :func:`lead` over
    it on ``metric`` across their shared seeds: ``difference`` (units of the metric; positive
    when the best is ahead: best − runner-up when higher is better, runner-up − best for a loss
    or error), ``ci95``, ``p_value``, ``wins`` / ``losses`` (seeds where the best is better /
    worse), ``ties``, ``sign_p``, ``n``, ``higher_is_better``, and ``distinguishable``, true when
    the paired t-test rejects equality at 5%. With one shared seed nothing is distinguishable."""
    c = lead(best_values, its_values, metric)
    return {"settings": dict(point), "difference": c.mean, "ci95": c.half_width, "p_value": c.p_value,
            "n": c.n, "wins": c.wins, "ties": c.ties, "losses": c.losses, "sign_p": c.sign_p,
            "higher_is_better": higher_is_better(metric), "distinguishable": c.significant()}
