"""Every experiment in --quick mode, with its lesson asserted where the lecture makes a claim."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))


def _run(name, tmp_path):
    """Runs the experiment's own command line, ``python experiments/NAME.py --quick --out DIR``."""
    from common import main

    module = __import__(name)
    res = main(module, argv=["--quick", "--out", str(tmp_path)])
    assert (tmp_path / f"{name}.png").stat().st_size > 0 and (tmp_path / f"{name}.md").read_text()
    assert json.loads((tmp_path / f"{name}.json").read_text()).keys() == res.keys()
    return res


def test_backprop_by_hand(tmp_path):
    r = _run("backprop_by_hand", tmp_path)
    assert r["sum_times_product"]["manual"] == r["sum_times_product"]["jax_grad"] == [-4.0, -4.0, 3.0]
    assert round(r["logistic"]["loss"], 5) == 0.47408
    assert np.round(r["logistic"]["manual"], 4).tolist() == [-0.3775] * 3
    assert r["chain"]["manual"] == pytest.approx(4.0) == r["chain"]["jax_grad"]
    assert r["chain"]["backward"] == pytest.approx([1 / np.e, 1.0, 2.0], rel=1e-15)  # the slide's messages
    assert r["net_2322"]["max_abs_diff_vs_jax_grad"] < 1e-12 and r["net_2322"]["zero_gradient_entries"] == 0
    # Deck 001's exercise node by node: the slide's values and messages to its 4 digits, where they are right.
    g = r["logistic_graph"]
    nodes = {k: np.round(v, 4).tolist() for k, v in g["nodes"].items()}
    assert nodes == {"γ, ζ, κ": [1.0, 1.0, -1.5], "λ": 2.0, "μ": 0.5, "ν": -0.5, "ξ": 0.6065, "π": 1.6065,
                     "ϖ": 0.6225, "ρ": -0.4741, "l": 0.4741}  # the slide: ρ = -0.4740, l = 0.4740
    assert {k: round(v, 4) for k, v in g["messages"].items()} == {
        "ρ": -1.0, "ϖ": -1.6065, "π": 0.6225, "ξ": 0.6225, "ν": 0.3775, "μ": -0.3775}  # the slide: 0.6224
    assert g["messages"]["π"] == pytest.approx(1 / (1 + np.exp(-0.5)), rel=1e-15)  # 1/π = σ(0.5)
    assert round(g["messages"]["π"], 5) == 0.62246
    assert np.round(g["dl_dw"], 4).tolist() == [-0.3775] * 3
    assert np.round(g["dl_dx"], 4).tolist() == [-0.3775, -0.3775, 0.5663]
    np.testing.assert_allclose([g["dl_dw"], g["dl_dx"]], g["jax_grad_dl_dw_dl_dx"], rtol=1e-14)
    assert g["w_after_step"][0] == pytest.approx(1 + 0.37754066879814546 * g["lr"], rel=1e-14)  # w1 + 0.3775η
    assert g["loss_after"] < g["loss_before"] == pytest.approx(r["logistic"]["loss"], rel=1e-15)


def test_activations(tmp_path):
    res = _run("activations", tmp_path)
    r = res["runs"]
    # Step: hidden-layer gradients exactly zero; the output layer still gets one.
    assert r["step"]["grad_norms_at_init"][:2] == [0.0, 0.0] and r["step"]["grad_norms_at_init"][2] > 0
    for arm in r.values():  # each arm chose its own rate from the grid, and ran every seed
        assert arm["lr"] in arm["lr_grid"] and len(arm["history"]["test_accuracy"]) == len(arm["seeds"]) == 2
    assert r["relu"]["final_accuracy"][0] > r["step"]["final_accuracy"][0] + 0.1
    # Paired over the shared seeds, Holm over every row; sigmoid beats step on both seeds.
    rows = {(c["a"], c["b"], c["metric"]): c for c in res["comparisons"]}
    assert len(rows) == 10 and all(c["p_value"] <= c["p_holm"] <= 1 for c in rows.values())
    assert rows[("sigmoid", "step", "final_test_accuracy")]["wins"] == 2
    sat = res["saturation"]  # per-seed accuracies; scaling the init by 16 saturates most first-layer units
    assert [len(a) for a in sat["test_accuracy"]] == [2, 2] and sat["saturated_fraction_at_init"][1][0] > 0.5


def test_cross_entropy_vs_mse(tmp_path):
    r = _run("cross_entropy_vs_mse", tmp_path)
    setups = r["setups"]
    assert set(setups) == {"digits", "moons_saturated"}
    for setup in setups.values():
        for arm in setup["arms"].values():
            assert arm["gradcheck_ok"] and arm["lr"] in arm["lr_grid"] and len(arm["history"]["test_accuracy"]) == 2
        assert all(0 <= c["p_value"] <= c["p_holm"] <= 1 for c in setup["comparisons"].values())
    # The mechanism, provoked: outputs saturated on the wrong side, MSE's gradient nearly gone.
    sat = setups["moons_saturated"]["at_init"]
    assert sat["wrong_side_saturated"][0] > 0.2 and sat["grad_ratio_mse_over_ce"][0] < 0.1
    assert setups["digits"]["arms"]["cross_entropy"]["mean"]["test_accuracy"][-1] > 0.85


def test_error_falls_with_width(tmp_path):
    r = _run("universal_approximation", tmp_path)
    rmse = [s["rmse"] for s in r["shallow"]]
    assert rmse[-1] < 0.5 * rmse[0] and r["loglog_slope"] < 0
    assert all(len(s["test_rmse"]) == len(r["seeds"]) for s in r["shallow"] + r["deep"])
    for s in r["shallow"] + r["deep"]:  # curves stored (100 points per seed), ending at the reported RMSE
        curves = np.asarray(s["test_curves"])
        assert curves.shape == (len(r["seeds"]), 100) and "plateaued" in s["plateau"]
        np.testing.assert_allclose(curves[:, -1], s["test_rmse"], rtol=1e-5)
    spread = [np.mean(s["capacity"]["spread"]) for s in r["shallow"]]  # the capacity reference, float64 LS
    assert spread[-1] < 0.5 * spread[0] and all("decades" in s["trained_minus_capacity"] for s in r["shallow"])
    # deep against shallow, paired over seeds with Holm: the parameter-matched single layer and the widest one
    rows = r["depth_comparisons"]
    assert [(c["deep"], c["shallow_width"], c["pairing"]) for c in rows] == [
        ([4, 4], 4, "parameters matched"), ([4, 4], 16, "widest single layer")]
    assert all(c["n"] == len(r["seeds"]) and c["p_holm"] >= c["p_value"] for c in rows)
    assert "p (Holm)" in (tmp_path / "universal_approximation.md").read_text()


def test_depth_comparisons_pair_by_seed_and_adjust_by_holm():
    from universal_approximation import depth_comparisons

    shallow = [{"width": w, "params": 3 * w + 1, "test_rmse": [1e-2, 2e-2, 4e-2, 3e-2]} for w in (4, 16)]
    deep = [{"widths": [4, 4], "hidden_units": 8, "params": 33, "test_rmse": [1e-3, 2e-3, 4e-3, 2e-3]}]
    matched, widest = depth_comparisons(shallow, deep)  # 33 params: 1 × 4 (13) is matched, 1 × 16 (49) is not
    assert matched["shallow_width"] == 4 and widest["pairing"] == "widest single layer"
    assert matched["deep_lower"] == 4 and matched["deep_higher"] == 0
    assert matched["decades"] == pytest.approx(np.mean(np.log10([0.1, 0.1, 0.1, 2 / 30])))
    assert matched["p_holm"] == pytest.approx(min(1.0, 2 * min(matched["p_value"], widest["p_value"])))


def test_mlp_beats_linear_where_no_line_separates(tmp_path):
    res = _run("linear_vs_nonlinear", tmp_path)
    r = res["runs"]
    for name in ("xor", "spirals"):  # on every seed, and paired over seeds
        assert min(r[f"{name}/mlp"]["test_accuracy"]) > 0.95 > 0.75 > max(r[f"{name}/linear"]["test_accuracy"])
        assert res["comparisons"][name]["wins"] == len(res["seeds"]) == 2
    for arm in r.values():  # the curves are kept and checked for a plateau; the test size is stated
        assert np.shape(arm["curves"]) == (len(res["seeds"]), res["epochs"]) and "plateaued" in arm["plateau"]
        assert arm["curves"][0][-1] == arm["test_accuracy"][0] and arm["n_test"] >= 100


def test_manual_and_autodiff_training_agree(tmp_path):
    r = _run("manual_vs_autodiff", tmp_path)
    assert max(r["float64"]) < 1e-12 and max(r["float32"]) < 1e-4


def test_pytorch_example(tmp_path):
    r = _run("pytorch_example", tmp_path)
    losses = list(r["fnn"].values())
    assert len(losses) == 21 and losses[-1] < losses[0]
    # The slide's final print line (a cubic's coefficients) cannot run on Linear(2, 3): every value fails.
    slide = r["slide_print_line"]["expressions"]
    assert len(slide) == 4 and not any(e["runs"] for e in slide.values())
    if r["torch"] is not None:
        assert slide["bias.item()"]["error"].startswith("RuntimeError") and "IndexError" in slide["weight[:, 2].item()"]["error"]
    if r["torch"] is not None:
        torch_losses = list(r["torch"].values())
        # Same float64 computation, different summation order: the initial loss agrees to
        # rounding; the lr puts SGD in an oscillating phase (the loss rises at step 199) that
        # amplifies 1e-16 differences over 2000 steps to ~1e-6, so the trajectory is held to 1e-5.
        assert losses[0] == pytest.approx(torch_losses[0], rel=1e-12)
        np.testing.assert_allclose(losses, torch_losses, rtol=1e-5)


def test_vanishing_gradients(tmp_path):
    res = _run("vanishing_gradients", tmp_path)
    r = res["runs"]
    ratio = lambda k: r[k]["init"][0] / r[k]["init"][-1]
    assert ratio("sigmoid/glorot/10") < 1e-4 < ratio("relu/he/10")  # sigmoid vanishes, relu+he does not
    assert ratio("sigmoid/glorot/10") < ratio("sigmoid/glorot/2")  # and it gets worse with depth
    assert set(res["trained"]) == {f"{s}/{d}" for s in ("sigmoid/glorot", "tanh/glorot", "relu/glorot", "relu/he")
                                   for d in res["trained_depths"]}
    for t in res["trained"].values():  # diverged runs are counted, not dropped: every seed has a score
        assert len(t["score"]) == len(res["seeds"]) and np.isfinite(t["score"]).all() and 0 <= t["diverged"] <= 2
        assert t["mean"] == pytest.approx(np.mean(t["score"])) and isinstance(t["cannot_train"], bool)
        assert "plateaued" in t["plateau"] and t["chance"][0] < 0.2
    assert set(res["first_layer_ratio_by_width"]["relu/he"]) == {"64"}


def test_activations_steps(tmp_path):
    r = _run("activations_steps", tmp_path)
    arms = r["arms"]
    assert all(np.isnan(arms["step"]["steps_to"][t]).all() for t in ("0.25", "0.05"))  # the step net never gets there
    assert all(np.isfinite(arms["tanh"]["steps_to"]["0.25"]))
    assert len(r["speedups"]) == 8 and all(s["p_value"] <= s["p_holm"] or np.isnan(s["p_holm"]) for s in r["speedups"])


def test_mechanisms(tmp_path):
    r = _run("mechanisms", tmp_path)
    dead, sel = r["dead"]["arms"], r["selection"]
    # The provoking rate is chosen on the selection seeds only, disjoint from the measurement seeds,
    # as the first scanned rate at which relu units die; the usual rate (fixed) kills none.
    assert not set(sel["seeds"]) & set(r["seeds"]) and sel["scan"][0]["lr"] < sel["settings"]["onset"]["lr"]
    assert np.median(sel["scan"][[s["lr"] for s in sel["scan"]].index(sel["settings"]["onset"]["lr"])]
                     ["dead_share_max"]) >= 0.1
    assert all(d == 0 for act in ("relu", "leaky_relu") for d in dead[f"usual/{act}"]["dead_share_final"])
    assert min(dead["onset/relu"]["dead_share_final"]) > 0.01  # and it kills on the measurement seeds too
    # Every seed is kept, a diverged one counted as a failure; the negative bias fails by silencing
    # (hidden layer 2 all off on nearly every example, for leaky_relu too), not by dead units.
    assert all(len(a["test_accuracy"]) == 2 and np.all(np.isfinite(a["test_accuracy"])) for a in dead.values())
    for act in ("relu", "leaky_relu"):
        bias = dead[f"negative bias/{act}"]
        assert min(np.asarray(bias["all_off_share"])[:, 0, 1]) > 0.9 > max(bias["dead_share_final"])
    # Sigmoid's positive outputs: every unit's per-example weight-gradient column has one sign,
    # for tanh and the centred sigmoid (same derivative) none does; the minibatch gradient keeps some of it.
    arms = r["centring"]["arms"]
    assert np.array_equal(arms["sigmoid"]["per_example_same_sign"], np.ones((2, 2)))
    for name in ("centred_sigmoid", "tanh"):
        assert np.max(arms[name]["per_example_same_sign"]) < 0.01
        assert np.all(np.mean(arms["sigmoid"]["batch_same_sign"], 1) > np.mean(arms[name]["batch_same_sign"], 1) + 0.2)
    rows = r["dead"]["comparisons"] + r["centring"]["comparisons"]
    assert all(c["p_value"] <= c["p_holm"] or np.isnan(c["p_value"]) for c in rows)


def test_mechanisms_counts_diverged_runs():
    import mechanisms

    arm = mechanisms._dead_arm("leaky_relu", "too fast", {"lr": 100.0, "bias": 0.0}, [0, 1], 20)
    assert arm["diverged"] == 2 and arm["diverged_seeds"] == [True, True]
    assert arm["test_accuracy"] == pytest.approx(mechanisms._majority([0, 1], "test").tolist())
    assert np.all(np.isfinite(arm["dead_share_final"])) and np.all(np.isfinite(arm["train_error_final"]))
    # The counts before the divergence are kept (at init half the units are on), the end's are not.
    active = np.asarray(arm["active_share"])  # (seeds, init/end, layers)
    assert np.all(np.abs(active[:, 0] - 0.5) < 0.1) and np.all(np.isnan(active[:, 1]))
    assert mechanisms._divergence_test([True] * 7 + [False] * 3, [False] * 10) == {
        "only_relu": 7, "only_leaky_relu": 0, "both": 0, "p_value": pytest.approx(2 ** -6)}


def test_paired_reanalysis(tmp_path):
    r = _run("paired_reanalysis", tmp_path)
    assert all(sum(d is not None for d in c["per_seed"]) == c["n"] for c in r["comparisons"])  # the forest plot's dots
    rows = {(c["source"], c["comparison"]): c for c in r["comparisons"]}
    assert {s for s, _ in rows} == {"activations", "vanishing_gradients", "universal_approximation",
                                    "gradient_noise_and_privacy"}
    assert all(c["p_value"] <= c["p_holm"] <= 1 and c["wins"] + c["ties"] + c["losses"] == c["n"]
               for c in r["comparisons"])
    # A diverged run counts as a failure and keeps its pair: every row has every seed, and says how many diverged.
    vg = json.loads((EXPERIMENTS / "results" / "vanishing_gradients.json").read_text())
    assert all(c["n"] == len(vg["seeds"]) for c in r["comparisons"] if c["source"] == "vanishing_gradients")
    assert rows[("vanishing_gradients", "depth 20: relu/he − relu/glorot")]["diverged"] == [
        vg["trained"]["relu/he/20"]["diverged"], vg["trained"]["relu/glorot/20"]["diverged"]]
    assert set(r["provenance"]["inputs"]) == {f"{n}.json" for n in {s for s, _ in rows}}


def test_gradient_noise_and_privacy(tmp_path):
    r = _run("gradient_noise_and_privacy", tmp_path)
    for layer in r["noise_and_curvature"]["layers"].values():
        for key in ("snr", "ggn_trace", "norm_spread", "grad_norm"):
            assert all(np.isfinite(m) and m >= 0 for m, _ in layer[key])
    private = r["privacy"]
    assert set(private) == {"no clipping", "clip C=1, σ=0", "σ=1"}
    for arm in private.values():  # tuned by common.tune_and_test: grid rule, plateau rule, diverged counted
        assert len(arm["test_accuracy"]) == len(r["seeds"]) and arm["lr"] in r["lr_grid"]
        assert np.isfinite(arm["test_accuracy"]).all() and "plateaued" in arm["plateau"] and "grid_note" in arm
    rows = {c["arm"]: c for c in r["comparisons"]}  # paired against no clipping, Holm over the rows
    assert set(rows) == {"clip C=1, σ=0", "σ=1"} and all(c["p_value"] <= c["p_holm"] <= 1 for c in rows.values())
    assert r["provenance"]["script"] == "experiments/gradient_noise_and_privacy.py"


def test_second_order(tmp_path):
    r = _run("second_order", tmp_path)
    assert not set(r["selection_seeds"]) & set(r["seeds"])  # tuned on seeds that are not reported
    res = r["problems"]["digits"]
    assert set(res["arms"]) == {"sgd", "momentum", "adam", "kfac", "gauss_newton"}
    assert set(res["tuning"]["kfac"]["setting"]) == set(res["tuning"]["gauss_newton"]["setting"]) == {"lr", "damping"}
    for arm, run in res["runs"].items():
        assert np.asarray(run["test_loss"]).shape == (len(r["seeds"]), res["epochs"])
        assert np.isfinite(run["val_loss"]).all() and np.isfinite(run["test_loss"]).all()
        assert res["step_cost"]["seconds"][arm] > 0
    adam = res["arms"]["adam"]  # Adam reaches its own level (1% above its best) by its chosen step
    assert all(s is not None and s <= c for s, c in zip(adam["steps_to_adam_val"], adam["val_chosen_step"]))
    claims = r["claims"]
    assert len(claims) == 7 + 5 and all(c["p_value"] <= c["p_holm"] <= 1 for c in claims)
    assert {c["family"] for c in claims if c["claim"].startswith("goal")} == {"primary"}
    assert {c["family"] for c in claims if not c["claim"].startswith("goal")} == {"secondary"}
    for arm in ("kfac", "gauss_newton"):
        mine = {c["claim"]: c for c in claims if c["arm"] == arm}
        steps = np.asarray(mine["steps to Adam's best validation loss"]["per_seed"])
        wall = np.asarray(mine["wall-clock to Adam's best validation loss"]["per_seed"])
        assert wall == pytest.approx(steps * res["step_cost"]["ratio_to_adam"][arm])
    goal = next(c for c in claims if c["claim"] == "goal: steps <= 0.5x Adam's")
    assert goal["below"] + goal["ties"] + goal["above"] == len(r["seeds"])


def test_second_order_censored_statistics():
    from second_order import median_interval, sign_test

    inf = float("inf")
    median, low, high, coverage = median_interval([1, 2, 3, 4, 5, 6, 7, 8, inf, inf])
    assert median == 5.5 and (low, high) == (2, inf) and coverage == pytest.approx(1 - 2 * 11 / 1024)
    assert median_interval([inf] * 6 + [1] * 4)[0] == inf  # most never reached: the median is "never"
    t = sign_test([0.2, 0.3, 0.5, inf, inf], 0.5)  # the tie at the reference is dropped; never is above
    assert (t["below"], t["ties"], t["above"]) == (2, 1, 2) and t["p_value"] == pytest.approx(1.0)
    assert sign_test([0.1] * 10, 1.0)["p_value"] == pytest.approx(2 / 1024)


def test_second_order_steps_to_a_level():
    from second_order import _reach

    assert _reach([4.0, 2.0, 1.0], 2 ** 0.5, 10) == pytest.approx(25.0)  # halfway in log between steps 20 and 30
    assert _reach([4.0, 2.0, 1.0], 2.0, 10) == pytest.approx(20.0)
    assert _reach([1.0, 0.5], 3.0, 10) == 10.0  # below at the first evaluation: one epoch's steps
    assert _reach([4.0, float("nan"), 3.0], 1.0, 10) is None

def test_sharpness(tmp_path):
    r = _run("sharpness", tmp_path)
    arms = r["arms"]
    for arm in arms.values():
        for run in arm["runs"]:
            top, blocks = np.asarray(run["sharpness"]), np.asarray(run["layers"])
            # Cauchy interlacing: a diagonal block's top eigenvalue is at most the whole Hessian's
            # (both are Ritz values; the whole one is within its Lanczos residual of an eigenvalue).
            assert (blocks <= (top + np.asarray(run["residual"]))[:, None]).all() and (blocks > 0).all()
    edge = arms["mse, η=0.4"]  # the edge of stability: every seed reaches 2/η and stays near it
    assert edge["reached"]["n"] == len(r["config"]["seeds"]) and abs(edge["reached"]["hover_mean"][0] - 1) < 0.1
    assert min(s["risk_rise_share"] for s in edge["per_seed"]) > 0  # GD at the edge is not monotone
    stable = arms["mse, η=0.1"]  # far below 2/η: GD is stable and the risk falls at every step
    assert stable["not_reached"]["n"] == len(r["config"]["seeds"]) and stable["not_reached"]["end"][0] < 0.8
    assert all(s["risk_rise_share"] == 0 for s in stable["per_seed"])
    assert arms["cross-entropy, η=0.5"]["all"]["end"][0] < 0.1  # no sharpening: λ_max falls as the risk → 0
    catapult = arms["cross-entropy, η=2"]  # starts above 2/η, falls below it and does not come back
    assert min(s["initial"] for s in catapult["per_seed"]) > 1 and catapult["not_reached"]["n"] == len(r["config"]["seeds"])
    steps = arms["mse, η=0.4"]["runs"][0]["step"]  # λ_max at even and odd steps, so period 2 is not aliased
    assert any(t % 2 for t in steps) and any(t % 2 == 0 for t in steps) and steps[-1] == r["config"]["steps"]


def test_ggn_vs_backpack(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("backpack")
    r = _run("ggn_vs_backpack", tmp_path)
    assert r["goal_met"] is None and [s["config"] for s in r["sections"]] == ["mnist", "digits"]
    for s in r["sections"]:
        # Timed only after the two diagonals (and gradients) agree to float32 rounding, same weights and batch.
        assert s["agreement"]["ggn_diagonal_max_rel_diff"] < 1e-5 and s["agreement"]["gradient_max_rel_diff"] < 1e-5
        assert all(len(t) == s["rounds"] == 3 and min(t) > 0 for t in s["ms_per_round"].values())
        assert s["first_orders"][1] == s["first_orders"][0][::-1]  # the order is reversed every other round
        for ratio in s["ratios"].values():
            assert ratio["min"] <= ratio["ci95"][0] <= ratio["median"] <= ratio["ci95"][1] <= ratio["max"]
        fnn_over_backpack = np.array(s["ms_per_round"]["fnn exact GGN diagonal"]) / s["ms_per_round"]["BackPACK DiagGGNExact"]
        assert s["ratios"]["fnn / BackPACK"]["median"] == pytest.approx(np.median(fnn_over_backpack))
        assert len(s["loadavg_before"]) == len(s["loadavg_after"]) == 3 and s["torch_threads"] == 2
        g = s["gflop"]  # BackPACK's pass is fnn's work plus the gradient's backward and one more column
        assert g["fnn GGN diagonal"] < g["BackPACK DiagGGNExact"] < g["fnn GGN diagonal"] + g["plain gradient"]


# --- the rules every experiment follows: grid edges, plateaus, provenance --------------------------

def _toy_score(peak, diverge_above=np.inf):
    """Per-seed scores of a concave objective in log10(lr), peaked at ``peak``, noisy per seed."""
    def score(values):
        rng = np.random.default_rng(0)
        return [(-(np.log10(a) - np.log10(peak)) ** 2 + 0.01 * rng.standard_normal(5),
                 5 if a > diverge_above else 0) for a in values]
    return score


def test_a_choice_on_the_grid_edge_extends_the_grid_until_interior():
    from common import interior_choice

    c = interior_choice(_toy_score(peak=5.0), [0.01, 0.1, 1.0])
    assert c["value"] == pytest.approx(10.0) and c["extended"] == pytest.approx([10.0, 100.0])
    assert not c["at_edge"] and c["grid"] == pytest.approx([0.01, 0.1, 1.0, 10.0, 100.0])
    low = interior_choice(_toy_score(peak=1e-4), [0.01, 0.1, 1.0], larger_is_better=True)
    assert low["value"] == pytest.approx(1e-4) and low["extended"] == pytest.approx([1e-3, 1e-4, 1e-5])
    # A minimised objective goes the other way.
    neg = interior_choice(lambda v: [(-s, d) for s, d in _toy_score(5.0)(v)], [0.01, 0.1, 1.0],
                          larger_is_better=False)
    assert neg["value"] == pytest.approx(10.0) and not neg["at_edge"]


def test_the_grid_edge_rule_says_why_it_stopped():
    from common import interior_choice

    capped = interior_choice(_toy_score(peak=1e6), [0.01, 0.1, 1.0], extend=2)
    assert capped["at_edge"] and capped["value"] == pytest.approx(100.0) and "after 2 extensions" in capped["note"]
    blocked = interior_choice(_toy_score(peak=1e6, diverge_above=1.0), [0.01, 0.1, 1.0])
    assert blocked["value"] == 1.0 and not blocked["at_edge"] and blocked["diverged"][-1] == 5
    assert "10 beyond the choice diverged" in blocked["note"]
    assert blocked["runner_up"]["value"] == pytest.approx(0.1) and blocked["runner_up"]["distinguishable"]
    flat = interior_choice(lambda v: [(np.full(5, 0.104), 0) for _ in v], [0.1, 1.0])
    assert flat["extended"] == [] and "flat objective" in flat["note"] and flat["at_edge"]


def test_a_flat_objective_at_chance_is_no_choice():
    """vanishing_gradients' deep sigmoid: validation scores 0.092-0.101 over the whole grid,
    drifting with the rate and noisy per seed. With a tolerance the grid reports no choice."""
    from common import counted, flat_objective, interior_choice

    def chance(values):
        rng = np.random.default_rng(1)
        return [(0.092 + 0.003 * np.log10(a / 0.01) + 0.002 * rng.standard_normal(5), 0) for a in values]

    grid = [0.01, 0.03, 0.1, 0.3, 1.0]
    flat = interior_choice(chance, grid, flat_tol=0.05)
    assert flat["flat"] and flat["at_edge"] and flat["extended"] == [] and "flat objective" in flat["note"]
    exact = interior_choice(chance, grid)  # tol 0: only equal scores are flat; the drift extends the grid
    assert not exact["flat"] and exact["extended"] and "flat" not in exact["note"]
    healthy = interior_choice(_toy_score(peak=0.1), grid, flat_tol=0.05)  # a real optimum is still chosen
    assert not healthy["flat"] and healthy["value"] == pytest.approx(0.1) and not healthy["at_edge"]
    # Noise is not flatness: a wide interval of the difference is not within the tolerance.
    rng = np.random.default_rng(2)
    assert not flat_objective(0.1 + 0.2 * rng.standard_normal(5), 0.1 + 0.2 * rng.standard_normal(5), 0.05)
    assert flat_objective(np.full(3, 0.104), np.full(3, 0.104)) and not flat_objective([np.nan], [0.1], 1.0)
    # A diverged run counts as a failure: replaced, not dropped, and counted.
    values, k = counted([0.95, np.nan, 0.97], [0.1, 0.11, 0.12])
    assert k == 1 and values.tolist() == [0.95, 0.11, 0.97]
    curves, k = counted([[0.5, 0.9], [0.4, np.nan], [np.nan, np.nan]], 0.1)
    assert k == 2 and curves.tolist() == [[0.5, 0.9], [0.4, 0.1], [0.1, 0.1]]


def test_plateau_rule():
    from common import plateau

    epochs = np.arange(1, 41)
    rng = np.random.default_rng(0)
    noise = 0.002 * rng.standard_normal((5, 40))
    rising = 1 - np.exp(-epochs / 30) + noise  # still climbing at epoch 40
    flat = 0.95 - 0.5 * np.exp(-epochs / 3) + noise  # done by epoch 20
    assert not plateau(rising)["plateaued"] and plateau(rising)["gain"] > 0.05
    assert plateau(flat)["plateaued"]
    assert plateau(-rising, larger_is_better=False)["plateaued"] is False  # a falling loss still improving
    assert not plateau(flat[:, :3])["plateaued"]  # too short to tell
    noisy = 0.5 + 0.001 * epochs + 0.05 * rng.standard_normal((5, 40))  # a rise hidden in noise: no plateau
    assert not plateau(noisy)["plateaued"] and not plateau(noisy)["p_value"] < 0.05


def test_provenance_names_the_script_version_that_wrote_a_result(tmp_path):
    import shutil

    from common import provenance, provenance_problem

    script = tmp_path / "toy.py"
    shutil.copy(Path(__file__).resolve().parents[1] / "experiments" / "common.py", script)
    result = tmp_path / "toy.json"
    result.write_text(json.dumps({"x": 1, "provenance": provenance(script)}))
    assert provenance_problem(result, script) is None
    script.write_text(script.read_text() + "\n# edited after the result was written\n")
    assert "another version of toy.py" in provenance_problem(result, script)
    result.write_text(json.dumps({"x": 1, "provenance": provenance(script)}))  # rerunning updates it
    assert provenance_problem(result, script) is None
    result.write_text(json.dumps({"x": 1}))
    assert "records no provenance" in provenance_problem(result, script)
    source = tmp_path / "data.json"  # a re-analysis records the results it read
    source.write_text("{}")
    result.write_text(json.dumps({"provenance": provenance(script, [source])}))
    assert provenance_problem(result, script) is None
    source.write_text('{"rerun": true}')
    assert "read a data.json that has changed since" in provenance_problem(result, script)


def test_a_script_edited_during_its_run_does_not_vouch_for_the_result(tmp_path):
    """common.main takes the provenance when the run starts: an edit made while it runs (the
    process keeps the code it imported) leaves the result marked as another version's."""
    import importlib.util

    from common import main, provenance_problem

    script = tmp_path / "toy_edited.py"
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                      "def run(quick):\n    open(__file__, 'a').write('# edited while running\\n')\n    return {'x': 1}\n"
                      "def report(res):\n    return 'x', plt.figure()\n")
    spec = importlib.util.spec_from_file_location("toy_edited", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main(module, argv=["--out", str(tmp_path / "out")])
    assert "another version of toy_edited.py" in provenance_problem(tmp_path / "out" / "toy_edited.json", script)


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# Every script in experiments/ that writes results/NAME.json is checked, whether it writes through
# common.main or on its own. Results written before provenance was recorded, each with the reason;
# a name leaves this list when its script is rerun (the test below fails if a listed result has
# provenance, or an unlisted one lacks it).
WITHOUT_PROVENANCE = {
    "benchmark": "written by `fnn bench` (benchmark.py calls fnn's command line), which records no provenance",
    "progress_chunks": "written before provenance was recorded; not rerun since",
    "sweep_benchmark": "a timing benchmark written before provenance was recorded; it needs a quiet machine",
}
# Results whose recorded script differs from the script as committed, each with the reason (the
# same rule: a name leaves when its script is rerun, and the test fails if the list is stale).
OTHER_VERSION = {
    "cross_entropy_vs_mse": "only its reading's wording changed after its run (leans before Holm, leads under a "
                            "point to check on other seeds); a full rerun does not fit the shared machine's time",
    "compile_once_benchmark": "the script changed after its run (an import path, fnn.files to fnn.io.files); "
                              "a timing benchmark, not rerun on the shared machine",
    "quantities_benchmark": "the script changed after its run; a timing benchmark being reworked",
}


def _writers() -> list[str]:
    """Every script in experiments/ with a committed results/NAME.json of its own name."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.py")
                  if p.stem != "common" and (EXPERIMENTS / "results" / f"{p.stem}.json").exists())


def test_every_committed_result_was_written_by_its_script_as_committed():
    from common import provenance_problem

    writers = _writers()
    assert {"benchmark", "compile_once_benchmark", "quantities_benchmark", "vanishing_gradients"} <= set(writers)
    problems, missing, other = [], set(), set()
    for name in writers:
        problem = provenance_problem(EXPERIMENTS / "results" / f"{name}.json", EXPERIMENTS / f"{name}.py")
        if problem and "records no provenance" in problem:
            missing.add(name)
        elif problem and "another version of" in problem and name in OTHER_VERSION:
            other.add(name)
        elif problem:
            problems.append(problem)
    assert not problems, problems
    assert missing == set(WITHOUT_PROVENANCE), "update WITHOUT_PROVENANCE"
    assert other == set(OTHER_VERSION), "update OTHER_VERSION"
