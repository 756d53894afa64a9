"""The run folder under faults: failed starts, kills, divergence, resume, damaged files, full disks."""

import errno
import gzip
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fnn
from fnn.data.tables import as_binary
from fnn.io import checkpoint
from fnn.io import files
from fnn.cli.main import main

SMALL = ["--dataset", "moons", "--hidden", "16", "--epochs", "4", "--batch-size", "32", "--no-progress",
         "--no-plot", "--no-gradcheck"]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(args, capsys):
    try:
        status = main(args)
    except SystemExit as exit_:  # argparse's one-line errors (--activation rleu) exit with 2
        status = exit_.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, captured.err


@pytest.fixture
def small_run(tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *SMALL, "--out", str(folder)]) == 0
    capsys.readouterr()
    return folder


# --- a failed start leaves nothing behind ---------------------------------------------------------

def _fake_mnist(folder: Path, label: int):
    folder.mkdir(parents=True)
    for name, n in [("train", 40), ("t10k", 10)]:
        images = np.zeros((n, 28, 28), np.uint8)
        labels = np.full(n, label, np.uint8)
        for kind, a in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
            (folder / f"{name}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + a.tobytes()))


@pytest.mark.parametrize("case", ["batch_too_large", "too_many_devices", "labels_out_of_range",
                                  "unknown_activation", "bad_loss"])
def test_a_failed_start_creates_no_folder(case, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    args = {
        "batch_too_large": [*SMALL, "--batch-size", "5000"],
        "too_many_devices": [*SMALL, "--devices", "64"],
        "labels_out_of_range": ["--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"), "--epochs", "1",
                                "--no-progress"],
        "unknown_activation": [*SMALL, "--activation", "rleu"],
        "bad_loss": [*SMALL, "--loss", "mse"],
    }[case]
    if case == "labels_out_of_range":
        _fake_mnist(tmp_path / "mnist", label=12)
    status, _, err = _run(["train", *args, "--out", str(out)], capsys)
    assert status == 2 and err.count("\n") == 1
    message = {"batch_too_large": "larger than the 384", "too_many_devices": "Asked for 64 devices",
               "labels_out_of_range": r"Labels must lie in \[0, 10\)", "unknown_activation": "Unknown activation",
               "bad_loss": "does not fit the classification dataset"}[case]
    assert re.search(message, err)
    assert not (tmp_path / "new").exists()


def test_out_below_a_regular_file_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    status, _, err = _run(["train", *SMALL, "--out", str(tmp_path / "file" / "run")], capsys)
    assert status == 2 and "is not a folder" in err
    assert (tmp_path / "file").read_text() == "x"


def test_an_existing_run_is_never_overwritten_by_a_new_one(small_run, capsys):
    before = _snapshot(small_run)
    status, _, err = _run(["train", *SMALL, "--out", str(small_run)], capsys)
    assert status == 2 and f"--resume {small_run}" in err
    assert _snapshot(small_run) == before


# --- resume semantics -------------------------------------------------------------------------

@pytest.mark.parametrize("flags,message", [
    (["--hidden", "32"], r"--hidden 32 would change the run .* which has --hidden 16"),
    (["--lr", "0.5"], r"--lr 0.5 would change .* --lr 0.001"),
    (["--optimizer", "sgd"], r"--optimizer sgd would change .* --optimizer adam"),
    (["--activation", "tanh"], "--activation tanh would change"),
    (["--dataset", "xor"], "--dataset xor would change"),
    (["--seed", "3"], "--seed 3 would change"),
    (["--x64"], "--x64 True would change"),
    (["--out", "elsewhere"], "--out cannot be combined with --resume"),
])
def test_resume_refuses_flags_that_change_the_run(flags, message, small_run, capsys):
    before = _snapshot(small_run)
    status, _, err = _run(["train", "--resume", str(small_run), "--epochs", "6", *flags, "--no-progress"], capsys)
    assert status == 2 and re.search(message, err), err
    assert _snapshot(small_run) == before


def test_resume_takes_the_runs_configuration_and_records_the_new_epochs(small_run, capsys):
    # Flags equal to the run's own values are accepted; --epochs is recorded.
    status, out, _ = _run(["train", "--resume", str(small_run), "--epochs", "6", "--hidden", "16",
                           "--no-progress", "--no-plot"], capsys)
    assert status == 0 and "resuming" in out
    doc = json.loads((small_run / "config.json").read_text())
    assert doc["config"]["epochs"] == 6 and doc["config"]["hidden"] == [16]
    assert len(doc["commands"]) == 2 and doc["commands"][1]["versions"]["jax"] == jax.__version__
    history = json.loads((small_run / "metrics.json").read_text())["history"]
    assert history["epoch"] == [1, 2, 3, 4, 5, 6]
    # The gradient check ran on the resumed parameters, not on fresh ones.
    ckpt = checkpoint.load(small_run / "checkpoint.npz")
    assert "on the resumed parameters" in out
    # Nothing to do when the run is already there.
    status, out, _ = _run(["train", "--resume", str(small_run), "--epochs", "6", "--no-progress"], capsys)
    assert status == 0 and "nothing to train" in out
    assert ckpt.step == 6


def test_gradcheck_on_resume_uses_the_resumed_parameters(small_run, capsys):
    epoch4 = checkpoint.load(small_run / "checkpoint.npz")
    data = as_binary(fnn.data.load("moons", seed=0))  # two classes: --loss auto picks binary cross-entropy
    _, grads = fnn.value_and_grad(epoch4.net, "binary_cross_entropy", epoch4.params, data.x_train[:32],
                                  data.y_train[:32])
    _, fresh = fnn.value_and_grad(epoch4.net, "binary_cross_entropy",
                                  fnn.init(jax.random.split(jax.random.key(0), 3)[0], epoch4.net, "he"),
                                  data.x_train[:32], data.y_train[:32])
    status, out, _ = _run(["train", "--resume", str(small_run), "--epochs", "5", "--no-progress",
                           "--no-plot"], capsys)
    assert status == 0
    printed = float(re.search(r"^\s+1\s+W\s+(\S+)", out, re.M).group(1))
    assert printed == pytest.approx(float(np.linalg.norm(grads[0]["W"])), rel=1e-3)
    assert printed != pytest.approx(float(np.linalg.norm(fresh[0]["W"])), rel=1e-3)


# --- kills, divergence, full disks --------------------------------------------------------------

def test_a_killed_run_keeps_its_history_and_resumes_to_the_same_result(tmp_path):
    args = [sys.executable, "-m", "fnn", "train", "--dataset", "moons", "--hidden", "16", "--batch-size", "8",
            "--epochs", "400", "--no-progress", "--no-gradcheck"]
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    metrics = tmp_path / "killed" / "metrics.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            curves = (tmp_path / "killed" / "curves.png").exists()  # drawn after 5 s of training
            if len(json.loads(metrics.read_text())["history"]["epoch"]) >= 3 and curves:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    history = json.loads(metrics.read_text())["history"]
    ckpt = checkpoint.load(tmp_path / "killed" / "checkpoint.npz")
    assert len(history["epoch"]) >= 3 and ckpt.step in (len(history["epoch"]), len(history["epoch"]) - 1)
    # Each file is whole; a kill between two writes leaves them at most one epoch apart.
    rows = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    assert len(rows) - 1 in (len(history["epoch"]), len(history["epoch"]) - 1)
    assert all(len(r.split(",")) == len(rows[0].split(",")) for r in rows)
    assert (tmp_path / "killed" / "curves.png").stat().st_size > 0
    # Continue to epoch ckpt.step + 2 and compare with a run that was never killed.
    target = str(ckpt.step + 2)
    assert subprocess.run([sys.executable, "-m", "fnn", "train", "--resume", str(tmp_path / "killed"),
                           "--epochs", target, "--no-progress", "--no-gradcheck"],
                          capture_output=True).returncode == 0
    assert not list((tmp_path / "killed").glob(".*.tmp"))
    full = [*args[:args.index("--epochs") + 1], target, "--no-progress", "--no-gradcheck"]
    assert subprocess.run([*full, "--out", str(tmp_path / "full")], capture_output=True).returncode == 0
    a = checkpoint.load(tmp_path / "killed" / "checkpoint.npz")
    b = checkpoint.load(tmp_path / "full" / "checkpoint.npz")
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    ha = json.loads((tmp_path / "killed" / "metrics.json").read_text())["history"]
    hb = json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]
    assert ha == hb


@pytest.mark.parametrize("args", [
    ["--dataset", "diabetes", "--optimizer", "sgd", "--lr", "1000", "--hidden", "64", "64", "--init", "normal"],
    ["--dataset", "diabetes", "--optimizer", "adam", "--lr", "1e20", "--hidden"],  # a linear model
])
def test_divergence_never_saves_or_keeps_bad_parameters(args, tmp_path, capsys):
    out = tmp_path / "run"
    status, _, err = _run(["train", *args, "--epochs", "20", "--no-progress", "--no-gradcheck", "--out",
                           str(out)], capsys)
    assert status == 1 and "non-finite at step" in err and "last good checkpoint" in err
    ckpt = checkpoint.load(out / "checkpoint.npz")
    data = fnn.data.load("diabetes", seed=0)
    assert np.isfinite(fnn.evaluate(ckpt.net, "mse", ckpt.params, data.x_train, data.y_train)["loss"])
    status, report, _ = _run(["evaluate", str(out)], capsys)
    assert status == 0 and "nan" not in report


def test_evaluate_refuses_a_checkpoint_with_non_finite_parameters(small_run, capsys):
    ckpt = checkpoint.load(small_run / "checkpoint.npz")
    bad = [{"W": layer["W"] * np.nan, "b": layer["b"]} for layer in ckpt.params]
    checkpoint.save(small_run / "checkpoint.npz", net=ckpt.net, params=bad, step=ckpt.step)
    status, _, err = _run(["evaluate", str(small_run)], capsys)
    assert status == 1 and "NaN or Inf" in err


def test_a_full_disk_during_a_checkpoint_write_is_one_error_and_loses_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        # config.json, then per epoch metrics.json, metrics.csv, checkpoint.npz: fail epoch 3's checkpoint
        if len(calls) == 1 + 3 * 2 + 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files, "_sync_folder", lambda folder: None)
    status, _, err = _run(["train", *SMALL, "--out", str(out)], capsys)
    assert status == 2 and "No space left on device" in err and err.count("\n") == 1
    assert checkpoint.load(out / "checkpoint.npz").step == 2  # the last complete one, intact
    assert not list(out.glob(".*.tmp"))


def test_stale_temp_files_are_removed_on_the_next_start(small_run, capsys):
    (small_run / ".checkpoint.npz.abc123.tmp").write_bytes(b"half a file")
    assert main(["train", "--resume", str(small_run), "--epochs", "5", "--no-progress", "--no-plot",
                 "--no-gradcheck"]) == 0
    assert not list(small_run.glob(".*.tmp"))


# --- damaged files and bad flags through the CLI --------------------------------------------------

@pytest.mark.parametrize("damage,message", [
    ("truncate_config", r"config.json is not valid JSON"),
    ("drop_checkpoint_array", r"checkpoint.npz is not a complete fnn checkpoint"),
    ("truncate_checkpoint", r"checkpoint.npz is not a readable fnn checkpoint"),
    ("no_checkpoint", r"has no checkpoint.npz"),
    ("not_a_folder", r"nothing does not exist; give a run folder"),
])
@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_damaged_run_folders_give_one_line(damage, message, command, small_run, capsys):
    config, ckpt = small_run / "config.json", small_run / "checkpoint.npz"
    if damage == "truncate_config":
        config.write_text(config.read_text()[:40])
    elif damage == "drop_checkpoint_array":
        with np.load(ckpt) as z:
            arrays = {k: z[k] for k in z.files if k != "params/0/b"}
        np.savez(ckpt, **arrays)
    elif damage == "truncate_checkpoint":
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    elif damage == "no_checkpoint":
        ckpt.unlink()
    target = small_run / "nothing" if damage == "not_a_folder" else small_run
    before = _snapshot(small_run)
    args = ["evaluate", str(target)] if command == "evaluate" else \
        ["train", "--resume", str(target), "--epochs", "6", "--no-progress"]
    status, _, err = _run(args, capsys)
    assert status == 2 and re.search(message, err) and err.count("\n") == 1, err
    assert _snapshot(small_run) == before


@pytest.mark.parametrize("args,message", [
    (["bench", "--rounds", "0"], "must be at least 1"),
    (["bench", "--steps", "-1"], "must be at least 0"),
    (["bench", "--rounds", "many"], "must be an integer"),
])
def test_nonsense_benchmark_flags(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_version_and_python_m_fnn():
    out = subprocess.run([sys.executable, "-m", "fnn", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"fnn {fnn.__version__}"


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "f.txt"
    files.atomic_write(target, "old")

    def boom(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        files.atomic_write(target, boom)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("flags,message", [
    (["--lr", "inf"], "--lr: must be positive and finite"),
    (["--lr", "abc"], "--lr: must be positive and finite, got 'abc'"),
    (["--momentum", "1.5"], r"--momentum: must lie in \[0, 1\)"),
    (["--l2", "-0.1"], "--l2: must be a finite number >= 0"),
    (["--l2", "nan"], "--l2: must be a finite number >= 0"),
    (["--seed", "-1"], r"--seed: must be an integer in \[0, 2\*\*63\)"),
    (["--epochs", "0"], "--epochs: must be a positive integer"),
    (["--devices", "two"], "--devices: must be a positive integer"),
])
def test_nonsense_training_flags(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", *flags])
    assert info.value.code == 2 and re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("key,value,message", [
    ("lr", "abc", "lr is 'abc', but it must be a positive finite number"),
    ("hidden", [16, 0], "hidden is \\[16, 0\\]"),
    ("validation", "yes", "validation is 'yes'"),
    ("seed", None, "seed is None"),
])
def test_a_config_json_with_bad_values_is_one_clear_error(key, value, message, small_run, capsys):
    doc = json.loads((small_run / "config.json").read_text())
    doc["config"][key] = value
    (small_run / "config.json").write_text(json.dumps(doc))
    before = _snapshot(small_run)
    for args in (["evaluate", str(small_run)], ["train", "--resume", str(small_run), "--epochs", "6"]):
        status, _, err = _run(args, capsys)
        assert status == 2 and "config.json" in err and re.search(message, err), err
    assert _snapshot(small_run) == before


@pytest.mark.parametrize("field,value", [("step", "three"), ("net", None), ("has_key", 1), ("meta", [])])
def test_a_checkpoint_header_with_bad_fields_is_one_clear_error(field, value, small_run, capsys):
    ckpt = small_run / "checkpoint.npz"
    with np.load(ckpt) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes().decode())
    header[field] = value
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(ckpt, **arrays)
    status, _, err = _run(["evaluate", str(small_run)], capsys)
    assert status == 2 and f"header field '{field}'" in err


def test_dp_sgd_from_the_cli(tmp_path, capsys):
    out = tmp_path / "dp"
    assert main(["train", *SMALL, "--clip-norm", "1.0", "--noise-multiplier", "0.8", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["clip_norm"] == 1.0
    capsys.readouterr()
    for flags, message in ((["--noise-multiplier", "1.0"], "noise_multiplier needs clip_norm"),
                           (["--clip-norm", "1.0", "--method", "autodiff"], "method='manual'")):
        status, _, err = _run(["train", *SMALL, *flags, "--out", str(tmp_path / "bad")], capsys)
        assert status == 2 and message in err and not (tmp_path / "bad").exists()


def test_diagnostics_from_the_cli(tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["train", *SMALL, "--diagnostics", "--hidden", "16", "8", "--out", str(out)]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    for key in ("grad_norm", "snr", "norm_spread", "ggn_trace"):
        for layer in (1, 2, 3):
            values = history[f"diag_{key}_l{layer}"]
            assert len(values) == 4 and all(np.isfinite(values)) and all(a >= 0 for a in values)
    assert "diag_" not in capsys.readouterr().out  # kept in the files, not printed each epoch
    assert main(["train", *[a for a in SMALL if a != "--no-plot"], "--diagnostics", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "diagnostics.png").stat().st_size > 0


def test_a_full_disk_at_the_start_leaves_no_new_folder(tmp_path, capsys, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fsync)
    status, _, err = _run(["train", *SMALL, "--out", str(tmp_path / "new" / "run")], capsys)
    assert status == 2 and "No space left on device" in err
    assert not (tmp_path / "new").exists()
