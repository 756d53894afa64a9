"""Run and sweep folders as one unit: locks, interrupted starts, failed final writes,
file permissions, one-line flag errors, quiet compile caches, figures (issue 20)."""

import errno
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fnn
from fnn.io import checkpoint
from fnn.io import files
from fnn.cli import sweeprun
from fnn.cli.main import main
from fnn.io.plots import band

cli = sys.modules["fnn.cli.main"]  # the module (fnn.cli.main is also the name of the function)

SMALL = ["--dataset", "xor", "--hidden", "4", "--epochs", "2", "--no-progress", "--no-plot", "--no-gradcheck",
         "--no-compile-cache"]
SWEEP = ["sweep", "--dataset", "xor", "--hidden", "4", "--epochs", "2", "--seeds", "2", "--lr", "0.01", "0.1",
         "--no-progress", "--no-plot", "--no-compile-cache"]


def _run(args, capsys):
    try:
        status = main(args)
    except SystemExit as exit_info:
        status = exit_info.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def _interrupt(*a, **k):
    raise KeyboardInterrupt


# --- run folders -----------------------------------------------------------------------------------

def test_an_interrupt_before_the_first_epoch_leaves_nothing_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "fit", _interrupt)
    status, _, err = _run(["train", *SMALL, "--out", str(tmp_path / "new" / "r")], capsys)
    assert status == 130 and "nothing was kept" in err and "--resume" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    assert _run(["train", *SMALL, "--out", str(tmp_path / "new" / "r")], capsys)[0] == 0


def test_an_interrupt_after_an_epoch_offers_resume(tmp_path, capsys, monkeypatch):
    real_fit = cli.fit

    def fit(*a, on_epoch, **k):
        def once(state, metrics):
            on_epoch(state, metrics)
            raise KeyboardInterrupt
        return real_fit(*a, on_epoch=once, **k)

    monkeypatch.setattr(cli, "fit", fit)
    status, _, err = _run(["train", *SMALL, "--out", str(tmp_path / "r")], capsys)
    assert status == 130 and f"--resume {tmp_path / 'r'}" in err
    monkeypatch.undo()
    assert _run(["train", "--resume", str(tmp_path / "r"), "--no-progress", "--no-gradcheck"], capsys)[0] == 0
    assert checkpoint.load(tmp_path / "r" / "checkpoint.npz").step == 2


def test_a_killed_start_without_a_checkpoint_is_taken_over_by_out(tmp_path, capsys):
    folder = tmp_path / "r"
    assert _run(["train", *SMALL, "--out", str(folder)], capsys)[0] == 0
    for name in ("checkpoint.npz", "metrics.json", "metrics.csv", "timings.json"):
        (folder / name).unlink()  # what a SIGKILL during the first epoch leaves: config.json
    status, _, err = _run(["train", "--resume", str(folder), "--no-progress"], capsys)
    assert status == 2 and f"Start it again with --out {folder}" in err
    assert _run(["train", *SMALL, "--out", str(folder)], capsys)[0] == 0
    assert (folder / "checkpoint.npz").exists() and not (folder / files.LOCK_NAME).exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_held_folder_refuses_a_second_process_and_names_its_pid(resume, tmp_path, capsys):
    folder = tmp_path / "r"
    if resume:
        assert _run(["train", *SMALL, "--out", str(folder)], capsys)[0] == 0
    else:
        folder.mkdir()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    lock = files.FolderLock(folder)  # another process's hold (flock conflicts within a process too)
    try:
        args = ["--resume", str(folder)] if resume else ["--out", str(folder)]
        status, _, err = _run(["train", *SMALL, *args], capsys)
        assert status == 2 and f"in use by fnn process {os.getpid()}" in err and len(err.splitlines()) == 1
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != files.LOCK_NAME} == before
    finally:
        lock.release()
    assert not (folder / files.LOCK_NAME).exists()


def test_two_runs_started_together_on_one_folder(tmp_path):
    run = [sys.executable, "-m", "fnn", "train", *SMALL[:4], "--epochs", "100000", *SMALL[6:],
           "--out", str(tmp_path / "r")]
    procs = [subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.time() + 600
        while all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.1)
        loser = next(p for p in procs if p.poll() is not None)  # the winner trains on for minutes
        assert loser.returncode == 2 and "is in use by fnn process" in loser.stderr.read()
        winner = next(p for p in procs if p is not loser)
        while not (tmp_path / "r" / "checkpoint.npz").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert winner.poll() is None and str(winner.pid) in (tmp_path / "r" / files.LOCK_NAME).read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    commands = json.loads((tmp_path / "r" / "config.json").read_text())["commands"]
    assert len(commands) == 1


# --- sweep folders ---------------------------------------------------------------------------------

def test_a_sweep_whose_final_write_fails_keeps_its_runs_and_finishes_on_a_rerun(tmp_path, capsys, monkeypatch):
    out = ["--out", str(tmp_path / "sw")]

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(sweeprun, "write_json", full)
    status, _, err = _run([*SWEEP, *out], capsys)
    assert status == 2 and "No space left on device" in err and "run the same fnn sweep command again" in err
    assert len(err.strip().splitlines()) == 1
    kept = np.load(tmp_path / "sw" / "params.npz")["relu/W1"]
    assert kept.shape[0] == 4 and (tmp_path / "sw" / "group-0.npz").exists()
    monkeypatch.undo()
    status, _, err = _run([*SWEEP[:-4], "--lr", "0.01", "0.2", *SWEEP[-3:], *out], capsys)
    assert status == 2 and "unfinished sweep with other settings" in err  # not mixed with another sweep
    monkeypatch.setattr(sweeprun, "sweep", _interrupt)  # the rerun trains nothing
    assert _run([*SWEEP, *out], capsys)[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "sw" / "params.npz")["relu/W1"], kept)
    names = sorted(p.name for p in (tmp_path / "sw").iterdir())
    assert names == ["params.npz", "summary.csv", "summary.md", "sweep.json"]
    assert len(json.loads((tmp_path / "sw" / "sweep.json").read_text())["runs"]) == 4
    status, _, err = _run([*SWEEP, *out], capsys)
    assert status == 2 and "already holds a finished sweep" in err


def test_a_sweep_interrupted_before_a_group_finished_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweeprun, "sweep", _interrupt)
    status, _, err = _run([*SWEEP, "--out", str(tmp_path / "a" / "sw")], capsys)
    assert status == 130 and "nothing was kept" in err and not (tmp_path / "a").exists()


# --- permissions -----------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(umask, tmp_path, capsys):
    old = os.umask(umask)
    try:
        assert _run(["train", *SMALL[:-2], "--out", str(tmp_path / "r")], capsys)[0] == 0
        assert _run([*SWEEP, "--out", str(tmp_path / "sw")], capsys)[0] == 0
        net = fnn.MLP((2, 2), ("identity",))
        checkpoint.save(tmp_path / "c" / "x.npz", net=net, params=fnn.init(__import__("jax").random.key(0), net))
    finally:
        os.umask(old)
    written = [p for p in tmp_path.rglob("*")]
    assert len(written) > 10
    for p in written:
        expected = (0o777 if p.is_dir() else 0o666) & ~umask
        assert p.stat().st_mode & 0o777 == expected, p


# --- messages --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["train", "--hidden", "0"], "fnn train: error: argument --hidden: must be a positive integer, got 0"),
    (["train", "--lr", "-1"], "fnn train: error: argument --lr: must be positive and finite, got -1"),
    (["train", "--optimizer", "Adam"], "did you mean adam?"),
    (["train", "--dataset", "digts"], "did you mean digits?"),
    (["sweep", "--optimizer", "adan"], "did you mean adam?"),
    (["evaluate"], "fnn evaluate: error: the following arguments are required: run"),
    (["bench", "--rounds", "0"], "fnn bench: error: argument --rounds"),
    (["bench", "--dtype", "float16"], "fnn bench: error: argument --dtype"),
])
def test_flag_errors_are_one_line_with_a_pointer_to_help(args, message, capsys):
    status, out, err = _run(args, capsys)
    assert status == 2 and message in err and err.count("\n") == 1
    assert f"(see fnn {args[0]} --help)" in err and "usage" not in err


@pytest.mark.parametrize("seeds,shown", [(["0"], "got 0."), (["1", "1"], "got 1 1.")])
def test_bad_seeds_are_named(seeds, shown, tmp_path, capsys):
    status, _, err = _run(["sweep", "--seeds", *seeds, "--out", str(tmp_path / "sw")], capsys)
    assert status == 2 and shown in err


def test_sweep_help_shows_one_value_for_one_value_flags(capsys):
    from fnn.cli.args import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["sweep"].format_help()
    assert "[--loss LOSS]" in text and "NAME|PATH [NAME|PATH" not in text and "[--lr LR [LR ...]]" in text


@pytest.mark.parametrize("damage", ["file", "entries"])
def test_an_unusable_compile_cache_is_one_line(damage, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "FNN_CACHE_DIR": str(cache), "FNN_NO_COMPILE_CACHE": "0"}
    run = [sys.executable, "-m", "fnn", "train", *SMALL[:-1]]
    if damage == "file":
        cache.write_text("not a folder")
    else:
        subprocess.run([*run, "--out", str(tmp_path / "a")], env=env, check=True, capture_output=True)
        for entry in cache.iterdir():
            entry.write_bytes(b"damaged")
    done = subprocess.run([*run, "--out", str(tmp_path / "b")], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and (tmp_path / "b" / "checkpoint.npz").exists()
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "the compile cache" in lines[0] and str(cache) in lines[0], done.stderr


# --- figures ---------------------------------------------------------------------------------------

def test_bands_stay_inside_what_the_metric_can_be():
    curves = np.array([[0.9, 1.0], [1.0, 1.0], [0.2, 1.0]])
    low, high = band("test_accuracy", curves, curves.mean(0), np.array([0.9, 0.1]))
    assert low.min() >= 0 and high.max() <= 1
    losses = np.array([[0.5, 0.01], [3.0, 0.02], [np.nan, 0.03]])
    low, high = band("test_loss", losses, np.nanmean(losses, 0), np.array([5.0, 0.1]))
    np.testing.assert_array_equal(low, [0.5, 0.01])  # the lowest run, not below 0
    low, _ = band("test_r2", curves, curves.mean(0), np.array([0.1, 0.1]))
    _, high = band("test_r2", curves, curves.mean(0), np.array([0.9, 0.9]))
    assert high.max() <= 1


def test_figures_are_not_left_in_pyplot_and_have_whole_epoch_ticks():
    plt = fnn.plots.pyplot()
    before = plt.get_fignums()
    history = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.4], "test_loss": [1.1, 0.7, 0.6],
               "train_accuracy": [0.5, 0.8, 0.9], "test_accuracy": [0.4, 0.7, 0.8],
               "diag_grad_norm_l1": [1.0, 2.0, 3.0]}
    for fig in (fnn.plot_history(history), fnn.plots.plot_diagnostics(history)):
        fig.canvas.draw()
        ticks = fig.axes[0].get_xticks()
        assert np.all(ticks == np.round(ticks))
    assert plt.get_fignums() == before
