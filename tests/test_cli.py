import json
import subprocess
import sys

import numpy as np
import pytest

from fnn.io import checkpoint
from fnn.cli.main import main

SMALL = ["--dataset", "moons", "--hidden", "16", "--epochs", "4", "--batch-size", "32", "--no-progress"]


def test_default_train_reaches_97_percent_on_digits(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "all layers agree" in out and "epoch  30" in out
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert history["test_accuracy"][-1] >= 0.97
    for name in ("config.json", "metrics.json", "metrics.csv", "curves.png", "checkpoint.npz",
                 "gradcheck.txt", "timings.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,batch_loss,train_accuracy,train_loss") and len(lines) == 31

    assert main(["evaluate", str(tmp_path / "run")]) == 0
    reported = capsys.readouterr().out
    assert f"accuracy {history['test_accuracy'][-1]:.4f}" in reported


def test_resume_through_the_cli_equals_one_run(tmp_path):
    assert main(["train", *SMALL, "--out", str(tmp_path / "full"), "--no-plot", "--no-gradcheck"]) == 0
    part = SMALL.copy()
    part[part.index("--epochs") + 1] = "2"
    assert main(["train", *part, "--out", str(tmp_path / "part"), "--no-plot", "--no-gradcheck"]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--epochs", "4", "--no-plot",
                 "--no-gradcheck", "--no-progress"]) == 0
    a = checkpoint.load(tmp_path / "full" / "checkpoint.npz")
    b = checkpoint.load(tmp_path / "part" / "checkpoint.npz")
    assert a.step == b.step == 4
    for x, y in zip(a.params, b.params):
        np.testing.assert_array_equal(x["W"], y["W"])
    ha = json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]
    hb = json.loads((tmp_path / "part" / "metrics.json").read_text())["history"]
    assert ha == hb


@pytest.mark.parametrize("lr", ["5", "1000"])  # 1000 blows up within the first epoch
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(lr, tmp_path, capsys):
    args = ["train", "--dataset", "diabetes", "--optimizer", "sgd", "--lr", lr, "--epochs", "20",
            "--hidden", "64", "64", "--init", "normal", "--no-progress", "--no-plot", "--no-gradcheck",
            "--out", str(tmp_path / "run")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "non-finite at step" in err and "last good checkpoint" in err
    # Saved even when the loss blows up inside an epoch that no checkpoint has covered yet
    # (here the first): the parameters from just before the bad step, tagged with its epoch.
    c = checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    assert all(np.all(np.isfinite(layer["W"])) for layer in c.params)
    bad_step = int(__import__("re").search(r"non-finite at step (\d+)", err).group(1))
    assert c.step == bad_step // (354 // 32)  # diabetes: 354 training examples, batches of 32


@pytest.mark.parametrize("args,message", [
    (["--lr", "-1"], "must be positive"),
    (["--batch-size", "0"], "must be a positive integer"),
    (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["--dropout", "1.5"], r"must lie in \[0, 1\)"),
])
def test_bad_flags(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    assert exit_info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


@pytest.mark.parametrize("args,message", [
    (["--activation", "rleu"], "Unknown activation 'rleu'"),
    (["--batch-size", "5000"], "larger than the 384 training examples"),
    (["--loss", "mse"], "does not fit the classification dataset"),
])
def test_bad_settings_get_one_clear_error(args, message, tmp_path, capsys):
    try:
        status = main(["train", *SMALL, *args, "--out", str(tmp_path / "r"), "--no-gradcheck"])
    except SystemExit as exit_:  # a name no registry knows is an argparse error (did you mean, --help)
        status = exit_.code
    assert status == 2 and message in capsys.readouterr().err


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "fnn.cli", "train", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--dataset", "--hidden", "--activation", "--loss", "--init", "--optimizer", "--lr",
                 "--batch-size", "--epochs", "--seed", "--method", "--out", "--resume", "--devices"):
        assert flag in out


def test_train_on_several_devices_matches_one(tmp_path):
    one = ["train", *SMALL, "--no-plot", "--no-gradcheck", "--batch-size", "30"]
    assert main([*one, "--out", str(tmp_path / "one")]) == 0
    assert main([*one, "--devices", "4", "--out", str(tmp_path / "four")]) == 0
    a = checkpoint.load(tmp_path / "one" / "checkpoint.npz").params
    b = checkpoint.load(tmp_path / "four" / "checkpoint.npz").params
    for x, y in zip(a, b):
        np.testing.assert_allclose(x["W"], y["W"], rtol=1e-4, atol=1e-6)  # float32 reduction order
