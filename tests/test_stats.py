"""fnn.stats: paired comparisons, the sign test and Holm's correction on known numbers (against
scipy), and the sweep's runner-up."""

import math

import numpy as np
import pytest
from scipy import stats as sp

from fnn.analysis.stats import by_seed, holm, paired, summarise

# Ten seeds of two arms (accuracy): b trails a on 8 seeds, ties on 1, leads on 1.
A = np.array([0.91, 0.93, 0.90, 0.95, 0.92, 0.94, 0.90, 0.93, 0.96, 0.91])
B = np.array([0.90, 0.91, 0.90, 0.93, 0.91, 0.92, 0.91, 0.90, 0.94, 0.89])


def test_paired_t_interval_and_p_against_scipy():
    c = paired(A, B)
    d = A - B
    ref = sp.ttest_rel(A, B)
    assert c.mean == pytest.approx(d.mean(), abs=1e-15) and c.n == 10
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    low, high = ref.confidence_interval(0.95)
    assert (c.mean - c.half_width, c.mean + c.half_width) == (pytest.approx(low), pytest.approx(high))
    # The same numbers by hand: d̄ = 0.014, s_d = 0.011738, t_{9, 0.975} = 2.262157.
    assert c.half_width == pytest.approx(2.262157 * d.std(ddof=1) / math.sqrt(10), rel=1e-6)
    assert c.significant() and not paired(A, A).significant()


def test_sign_count_and_exact_sign_test():
    c = paired(A, B)
    assert (c.wins, c.ties, c.losses) == (8, 1, 1)
    assert c.sign_p == pytest.approx(sp.binomtest(8, 9, 0.5).pvalue)
    assert c.sign_p == pytest.approx(2 * (1 + 9) / 2 ** 9)  # P(X ≤ 1) + P(X ≥ 8) for X ~ Bin(9, ½)
    assert "+1.40 ± 0.84 (paired t p = 0.0044; 8 wins, 1 tie, 1 loss, sign p = 0.039)" in c.text(scale=100)


def test_paired_drops_nan_pairs_and_degenerate_cases():
    a, b = A.copy(), B.copy()
    a[0], b[1] = np.nan, np.inf  # a diverged run drops its pair
    c = paired(a, b)
    assert c.n == 8 and c.p_value == pytest.approx(sp.ttest_rel(A[2:], B[2:]).pvalue)
    one = paired([1.0], [0.5])
    assert one.n == 1 and math.isnan(one.p_value) and math.isnan(one.half_width) and not one.significant()
    shifted = paired(A + 0.01, A)
    assert shifted.half_width == pytest.approx(0, abs=1e-12) or shifted.p_value < 1e-10
    assert paired(A, A).p_value == 1.0 and paired(A, A).sign_p == 1.0
    with pytest.raises(ValueError, match="one value per shared seed"):
        paired(A, B[:3])


def test_holm_on_a_textbook_example():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 → 4·0.005, 3·0.01, 2·0.03, max(0.06, 1·0.04).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.02, float("nan"), 0.01])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def _summary(a, b, diverged=None):
    seeds = list(range(len(a)))
    configs = [{"seed": s, "point": g} for g in (0, 1) for s in seeds]
    history = {"test_accuracy": np.concatenate([a, b])[:, None]}
    diverged = np.zeros(len(configs), int) if diverged is None else diverged
    return summarise(configs, history, diverged, [{"lr": 0.1}, {"lr": 1.0}], "test_accuracy")


def test_sweep_best_says_whether_the_runner_up_is_distinguishable():
    rows, best = _summary(B, A)
    assert best["lr"] == 1.0 and "runner_up" not in rows[1]  # a copy: the summary rows stay flat
    r = best["runner_up"]
    assert r["settings"] == {"lr": 0.1} and r["distinguishable"] and r["n"] == 10
    assert r["difference"] == pytest.approx(0.014) and r["p_value"] == pytest.approx(sp.ttest_rel(A, B).pvalue)
    _, close = _summary(A, A + np.array([0.01, -0.01] * 5) * np.arange(10))
    assert not close["runner_up"]["distinguishable"]
    _, alone = _summary(A, B, diverged=np.array([0] * 10 + [0] * 9 + [3]))
    assert "runner_up" not in alone  # the other point has a diverged run: not a candidate
    assert by_seed([{"seed": 5, "point": 0}, {"seed": 6, "point": 0}], np.array([[1.0], [2.0]]),
                   np.array([0, 1]), 0) == {5: 1.0, 6: pytest.approx(math.nan, nan_ok=True)}


# Three seeds of two grid points: point 1 is better on every seed, whichever way the metric points.
DIRECTIONS = {"test_loss": (np.array([0.5, 0.6, 0.4]), np.array([0.2, 0.32, 0.08])),  # lower is better
              "test_accuracy": (np.array([0.6, 0.5, 0.55]), np.array([0.9, 0.78, 0.87]))}  # higher is better


@pytest.mark.parametrize("metric", list(DIRECTIONS))
def test_the_runner_up_lead_is_oriented_by_the_metric_direction(metric):
    worse, better = DIRECTIONS[metric]
    configs = [{"seed": s, "point": g} for g in (0, 1) for s in range(3)]
    history = {metric: np.concatenate([worse, better])[:, None]}
    _, best = summarise(configs, history, np.zeros(6, int), [{"lr": 0.1}, {"lr": 1.0}], metric)
    r = best["runner_up"]
    assert best["lr"] == 1.0 and r["settings"] == {"lr": 0.1}
    assert (r["wins"], r["ties"], r["losses"]) == (3, 0, 0)  # the best is better on every seed
    assert r["difference"] == pytest.approx(np.abs(better - worse).mean())  # positive: the best's lead
    assert r["higher_is_better"] == (metric == "test_accuracy")


@pytest.mark.parametrize("metric", list(DIRECTIONS))
def test_fnn_sweep_says_the_best_wins_for_a_loss_and_an_accuracy(metric):
    from types import SimpleNamespace

    from fnn.cli.sweeprun import best_lines

    worse, better = DIRECTIONS[metric]
    other = "test_accuracy" if metric == "test_loss" else "test_loss"
    result = SimpleNamespace(
        configs=[{"seed": s, "point": g} for g in (0, 1) for s in range(3)], diverged=np.zeros(6, int),
        history={metric: np.concatenate([worse, better])[:, None], other: np.ones((6, 1))},
        summary=[{"lr": lr, "diverged": 0, f"{metric}_mean": m.mean()} for lr, m in ((0.001, worse), (0.3, better))])
    plan = SimpleNamespace(select=metric, grid={"lr": [0.001, 0.3]}, activations=["relu"], seeds=[0, 1, 2])
    lines = best_lines(plan, [("relu", result)], "test")
    assert lines[0].endswith("--lr 0.3") and "runner-up --lr 0.001 is behind it" in lines[1]
    ahead = "best − runner-up +" if metric == "test_accuracy" else "runner-up − best (lower is better) +"
    assert ahead in lines[1] and "3 wins, 0 ties, 0 losses" in lines[1], lines
