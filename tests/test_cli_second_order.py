"""The CLI's second-order path: each optimizer's own learning rate, K-FAC's own flags, --config
switching optimizers, and default run/sweep folders that two starts never share."""

import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fnn
from fnn.cli.args import build_parser
from fnn.cli.main import main
from fnn.io import checkpoint
from fnn.training.optim import default_learning_rate, get_optimizer, make_update_step

TINY = ["--dataset", "moons", "--hidden", "8", "--epochs", "1", "--no-progress", "--no-plot", "--no-gradcheck"]
ROOT = Path(__file__).resolve().parents[1]


def _run(args, capsys):
    try:
        status = main(args)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, captured.err


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["config"]


# --- 1. --lr: each optimizer's own -------------------------------------------------------------

def test_the_default_rates_are_the_transformations_own():
    own = {name: inspect.signature(f).parameters["learning_rate"].default for name, f in [
        ("gauss_newton", fnn.gauss_newton), ("newton", fnn.newton), ("kfac", fnn.kfac), ("ekfac", fnn.kfac),
        ("ggn_diag", fnn.ggn_diag_precond)]}
    assert own["gauss_newton"] == own["newton"] == 1.0
    assert {n: default_learning_rate(n) for n in [*own, "adam", "sgd", "momentum"]} == {
        **own, "adam": 1e-3, "sgd": 1e-3, "momentum": 1e-3}
    assert build_parser().parse_args(["train"]).lr is None
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "learning rate (default: each optimizer's own: " in text
    for part in ("1 for gauss_newton and newton", f"{own['kfac']:g} for kfac", "0.001 for the others"):
        assert part in text
    guide = (ROOT / "docs" / "guides" / "training.md").read_text()
    assert "each optimizer's own" in guide and "--kfac-momentum" in guide


def test_ggn_diag_defaults_train_digits_where_damping_1e_3_diverged(tmp_path, capsys):
    """`fnn train --optimizer ggn_diag` on its defaults (η = 0.01, λ = 0.1) trains the default digits
    network; λ = 1e-3, the old default, goes non-finite in the first epoch (a fresh user's report)."""
    assert inspect.signature(fnn.ggn_diag_precond).parameters["damping"].default == 0.1
    args = ["train", "--optimizer", "ggn_diag", "--no-progress", "--no-plot", "--no-gradcheck"]
    status, _, err = _run([*args, "--damping", "0.001", "--epochs", "1", "--out", str(tmp_path / "old")], capsys)
    assert status == 1 and "non-finite" in err and "Raise the damping" in err
    status, _, _ = _run([*args, "--epochs", "10", "--out", str(tmp_path / "new")], capsys)
    history = json.loads((tmp_path / "new" / "metrics.json").read_text())["history"]
    assert status == 0 and history["test_accuracy"][-1] > 0.9


def test_gauss_newton_without_lr_trains_at_rate_one_and_replays_it(tmp_path, capsys):
    run = tmp_path / "gn"
    args = ["train", "--optimizer", "gauss_newton", "--hidden", "32", "--epochs", "2", "--no-progress",
            "--no-plot", "--no-gradcheck"]
    status, out, _ = _run([*args, "--out", str(run)], capsys)
    assert status == 0 and "gauss_newton lr=1.0" in out
    config = _config(run)
    assert (config["lr"], config["momentum"]) == (1.0, None)  # the rate used; gauss_newton has no momentum
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert history["test_accuracy"][-1] > 0.9  # at the old default 1e-3: 10% after 2 epochs
    # --config and --resume replay the recorded rate.
    status, out, _ = _run(["train", "--config", str(run), "--epochs", "1", "--no-progress", "--no-plot",
                           "--no-gradcheck", "--out", str(tmp_path / "again")], capsys)
    assert status == 0 and "gauss_newton lr=1.0" in out and _config(tmp_path / "again")["lr"] == 1.0
    status, out, _ = _run(["train", "--resume", str(run), "--epochs", "3", "--no-progress", "--no-plot",
                           "--no-gradcheck"], capsys)
    assert status == 0 and "gauss_newton lr=1.0" in out and _config(run)["lr"] == 1.0


KFAC_RATE = inspect.signature(fnn.kfac).parameters["learning_rate"].default


@pytest.mark.parametrize("optimizer,lr,momentum", [("adam", 1e-3, None), ("momentum", 1e-3, 0.9),
                                                   ("kfac", KFAC_RATE, None)])
def test_config_json_records_the_rate_and_momentum_used(optimizer, lr, momentum, tmp_path, capsys):
    status, _, _ = _run(["train", *TINY, "--optimizer", optimizer, "--out", str(tmp_path / "r")], capsys)
    assert status == 0
    config = _config(tmp_path / "r")
    assert (config["lr"], config["momentum"]) == (lr, momentum)


def test_sweep_without_lr_gives_each_optimizer_its_rate_in_a_unique_default_folder(tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *a: "20260101-000000")
    (tmp_path / "sweeps" / "moons-20260101-000000").mkdir(parents=True)  # another sweep's, this second
    status, out, _ = _run(["sweep", "--dataset", "moons", "--hidden", "4", "--epochs", "1", "--seeds", "1",
                           "--optimizer", "adam", "gauss_newton", "--no-progress", "--no-plot"], capsys)
    assert status == 0 and "sweep folder: sweeps/moons-20260101-000000-2" in out
    doc = json.loads((tmp_path / "sweeps" / "moons-20260101-000000-2" / "sweep.json").read_text())
    assert [(r["config"]["optimizer"], r["config"]["lr"]) for r in doc["runs"]] == [("adam", 1e-3),
                                                                                   ("gauss_newton", 1.0)]
    assert not any((tmp_path / "sweeps" / "moons-20260101-000000").iterdir())


# --- 2. K-FAC's own settings -------------------------------------------------------------------

def test_get_optimizer_passes_kfac_momentum_norm_constraint_and_damping_mode_to_kfac():
    net = fnn.MLP((3, 5, 2), ("tanh", "identity"))
    params = fnn.init(jax.random.key(0), net)
    x = jax.random.normal(jax.random.key(1), (16, 3))
    v = jax.random.randint(jax.random.key(2), (16,), 0, 2)
    own = dict(damping=0.1, inverse_update_period=1, norm_constraint=1e-3, damping_mode="pi")
    ours = get_optimizer("kfac", 0.5, 0.9, kfac_momentum=0.7, **own)
    theirs = fnn.kfac(0.5, momentum=0.7, **own)
    plain = fnn.kfac(0.5, **own)  # no momentum: differs from the second step on
    results = []
    for opt in (ours, theirs, plain):
        step = make_update_step(net, "softmax_cross_entropy", opt, donate=False)
        p, s = params, opt.init(params)
        for _ in range(3):
            p, s, _ = step(p, s, x, v)
        results.append(p)
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[2])))
    with pytest.raises(ValueError, match="gauss_newton takes no setting kfac_momentum"):
        get_optimizer("gauss_newton", 1.0, kfac_momentum=0.5)


def test_kfac_flags_are_recorded_and_resumed(tmp_path, capsys):
    flags = ["--optimizer", "kfac", "--kfac-momentum", "0.5", "--norm-constraint", "0.01", "--damping-mode", "pi",
             "--inverse-update-period", "2"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert _run(["train", *TINY, *flags, "--epochs", "2", "--out", str(full)], capsys)[0] == 0
    config = _config(full)
    assert (config["kfac_momentum"], config["norm_constraint"], config["damping_mode"], config["momentum"]) == (
        0.5, 0.01, "pi", None)
    assert _run(["train", *TINY, *flags, "--out", str(part)], capsys)[0] == 0
    assert _run(["train", "--resume", str(part), "--epochs", "2", "--no-progress", "--no-plot", "--no-gradcheck"],
                capsys)[0] == 0
    for a, b in zip(checkpoint.load(full / "checkpoint.npz").params, checkpoint.load(part / "checkpoint.npz").params):
        np.testing.assert_array_equal(a["W"], b["W"])


def test_an_old_kfac_run_with_momentum_and_without_the_new_keys_resumes_unchanged(tmp_path, capsys):
    full, old = tmp_path / "full", tmp_path / "old"
    assert _run(["train", *TINY, "--optimizer", "kfac", "--epochs", "2", "--out", str(full)], capsys)[0] == 0
    assert _run(["train", *TINY, "--optimizer", "kfac", "--out", str(old)], capsys)[0] == 0
    doc = json.loads((old / "config.json").read_text())
    for key in ("norm_constraint", "damping_mode", "kfac_momentum"):
        del doc["config"][key]
    doc["config"]["momentum"] = 0.9  # what fnn recorded before: K-FAC never used it
    (old / "config.json").write_text(json.dumps(doc))
    assert _run(["train", "--resume", str(old), "--epochs", "2", "--no-progress", "--no-plot", "--no-gradcheck"],
                capsys)[0] == 0
    assert _config(old)["momentum"] == 0.9
    for a, b in zip(checkpoint.load(full / "checkpoint.npz").params, checkpoint.load(old / "checkpoint.npz").params):
        np.testing.assert_array_equal(a["W"], b["W"])


def test_sweep_over_kfac_momentum_with_kfacs_other_flags(tmp_path, capsys):
    status, out, _ = _run(["sweep", "--dataset", "xor", "--hidden", "4", "--epochs", "1", "--seeds", "1",
                           "--optimizer", "kfac", "--kfac-momentum", "0", "0.5", "--damping-mode", "pi",
                           "--norm-constraint", "0.01", "--no-progress", "--no-plot", "--out", str(tmp_path / "sw")],
                          capsys)
    assert status == 0 and "(1 seeds × --kfac-momentum 0.0 0.5)" in out
    doc = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [(r["config"]["lr"], r["config"]["kfac_momentum"], r["config"]["damping_mode"],
             r["config"]["norm_constraint"]) for r in doc["runs"]] == [(KFAC_RATE, 0.0, "pi", 0.01),
                                                                      (KFAC_RATE, 0.5, "pi", 0.01)]
    final = [r["history"]["train_loss"][-1] for r in doc["runs"]]
    assert np.all(np.isfinite(final)) and final[0] != final[1]  # the momentum reached the optimizer


@pytest.mark.parametrize("flags,message", [
    (["--optimizer", "kfac", "--momentum", "0.5"], "its own momentum is --kfac-momentum"),
    (["--optimizer", "gauss_newton", "--kfac-momentum", "0.5"], "gauss_newton takes no setting kfac_momentum"),
    (["--optimizer", "adam", "--norm-constraint", "1"], "'adam' takes no settings such as norm_constraint"),
    (["--optimizer", "ekfac", "--damping-mode", "pi"], "use damping_mode='exact' with ekfac"),
    (["--damping-mode", "factored"], "invalid choice: 'factored'"),
    (["--kfac-momentum", "1"], r"--kfac-momentum: must lie in \[0, 1\)"),
    (["--norm-constraint", "0"], "--norm-constraint: must be positive"),
])
def test_misplaced_second_order_flags_get_one_line(flags, message, tmp_path, capsys):
    status, _, err = _run(["train", *TINY, *flags, "--out", str(tmp_path / "r")], capsys)
    assert status == 2 and re.search(message, err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# --- 3. --config with another --optimizer ------------------------------------------------------

@pytest.fixture(scope="module")
def kfac_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kfac") / "k"
    assert main(["train", *TINY, "--optimizer", "kfac", "--damping", "0.3", "--inverse-update-period", "2",
                 "--curvature-ema", "0.9", "--kfac-momentum", "0.5", "--damping-mode", "pi", "--out",
                 str(folder)]) == 0
    return folder


def test_config_with_a_new_optimizer_drops_the_settings_it_does_not_take(kfac_run, tmp_path, capsys):
    status, out, err = _run(["train", "--config", str(kfac_run), "--optimizer", "adam", "--no-progress",
                             "--no-gradcheck", "--out", str(tmp_path / "adam")], capsys)
    assert status == 0 and "adam lr=0.001" in out
    assert "does not inherit" in err and f"learning rate {KFAC_RATE}: it trains at its own 0.001" in err
    config = _config(tmp_path / "adam")
    assert all(config[k] is None for k in ("damping", "inverse_update_period", "curvature_ema", "kfac_momentum",
                                           "damping_mode", "momentum"))
    status, out, _ = _run(["train", "--config", str(kfac_run), "--optimizer", "gauss_newton", "--no-progress",
                           "--no-gradcheck", "--out", str(tmp_path / "gn")], capsys)
    config = _config(tmp_path / "gn")
    assert status == 0 and (config["lr"], config["damping"], config["inverse_update_period"]) == (1.0, 0.3, None)
    assert config["kfac_momentum"] is None and config["damping_mode"] is None
    # The same run with its own optimizer keeps everything (and a new --lr is kept, with no note).
    status, _, err = _run(["train", "--config", str(kfac_run), "--lr", "0.02", "--no-progress", "--no-gradcheck",
                           "--out", str(tmp_path / "same")], capsys)
    config = _config(tmp_path / "same")
    assert status == 0 and err == "" and (config["lr"], config["kfac_momentum"], config["damping_mode"]) == (
        0.02, 0.5, "pi")


@pytest.mark.parametrize("flags,message", [
    (["--optimizer", "adam", "--damping", "1"], "'adam' takes no settings such as damping"),
    (["--optimizer", "gauss_newton", "--inverse-update-period", "3"], "takes no setting inverse_update_period"),
])
def test_config_still_refuses_explicit_settings_the_new_optimizer_does_not_take(flags, message, kfac_run,
                                                                               tmp_path, capsys):
    status, _, err = _run(["train", "--config", str(kfac_run), *flags, "--no-progress", "--out",
                           str(tmp_path / "r")], capsys)
    assert status == 2 and message in err and not (tmp_path / "r").exists()


# --- 4. default folders are never shared ---------------------------------------------------------

def test_a_taken_default_run_folder_gets_the_next_free_suffix(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *a: "20260101-000000")
    taken = tmp_path / "runs" / "moons-20260101-000000"
    (taken / "sub").mkdir(parents=True)
    (taken.parent / f"{taken.name}-2").mkdir()  # an empty folder someone made: also taken
    status, out, _ = _run(["train", *TINY], capsys)
    assert status == 0 and "run folder: runs/moons-20260101-000000-3" in out
    assert (taken.parent / f"{taken.name}-3" / "checkpoint.npz").exists()
    assert not any((taken.parent / f"{taken.name}-2").iterdir()) and os.listdir(taken) == ["sub"]


def test_two_identical_starts_in_the_same_second_get_two_folders(tmp_path):
    # Both processes see the same timestamp, as two starts within one second do.
    code = ("import sys, time; time.strftime = lambda *a: '20260101-000000'; from fnn.cli.main import main; "
            "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    starts = [subprocess.Popen([sys.executable, "-c", code, "train", "--dataset", "xor", "--hidden", "4",
                                "--epochs", "1", "--no-progress", "--no-plot", "--no-gradcheck",
                                "--no-compile-cache"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in starts]
    assert [p.returncode for p in starts] == [0, 0], [err for _, err in results]
    assert sorted(os.listdir(tmp_path / "runs")) == ["xor-20260101-000000", "xor-20260101-000000-2"]
    for name in os.listdir(tmp_path / "runs"):
        assert (tmp_path / "runs" / name / "checkpoint.npz").exists()


# --- 5. sweep output is not committed --------------------------------------------------------------

def test_default_output_folders_are_git_ignored():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "runs/" in ignored and "sweeps/" in ignored
