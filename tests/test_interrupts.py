"""Ctrl-C in fnn train and fnn sweep: the message names the checkpoint's epoch, the metrics never
stand ahead of the checkpoint, and a second Ctrl-C during the cleanup prints no traceback."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from fnn.cli import process
from fnn.cli.main import main
from fnn.cli.runs import RunFolder
from fnn.io import checkpoint as ckpt_io

TINY = ["train", "--dataset", "moons", "--hidden", "4", "--epochs", "6", "--no-plot", "--no-progress",
        "--no-gradcheck", "--no-compile-cache"]


@pytest.fixture
def python_sigint():
    """SIGINT with Python's default handler (whatever the test runner set), put back afterwards."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _csv_epochs(run):
    with open(run / "metrics.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_deferred_raises_a_ctrl_c_only_when_the_block_has_ended(python_sigint):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with process.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_while_an_epoch_is_written_waits_for_its_checkpoint(tmp_path, monkeypatch, capsys,
                                                                     python_sigint):
    # The signal arrives after metrics.json/csv of epoch 3 and before its checkpoint: the
    # checkpoint is written all the same, and the message names epoch 3.
    original = RunFolder.write_history

    def write_history(self, history, *a, **kw):
        original(self, history, *a, **kw)
        if history["epoch"][-1] == 3 and not kw.get("final"):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RunFolder, "write_history", write_history)
    run = tmp_path / "r"
    assert main([*TINY, "--out", str(run)]) == 130
    assert ckpt_io.load(run / "checkpoint.npz").step == 3 and _csv_epochs(run) == [1, 2, 3]
    captured = capsys.readouterr()
    assert "metrics of epoch 3:" in captured.err
    # The epoch the message names was printed before the held-back Ctrl-C landed.
    assert "epoch   3  batch_loss" in captured.out + captured.err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main() put it back


def test_metrics_are_trimmed_to_the_checkpoint_when_it_was_not_written(tmp_path, monkeypatch, capsys):
    # Before: the message said epoch 3 and metrics.csv had a row 3 while the checkpoint held epoch 2.
    original = RunFolder.save

    def save(self, net, loss, state, best=False):
        if state.epoch == 3:
            raise KeyboardInterrupt  # as if Ctrl-C came between the metrics and the checkpoint
        original(self, net, loss, state, best)

    monkeypatch.setattr(RunFolder, "save", save)
    run = tmp_path / "r"
    assert main([*TINY, "--out", str(run)]) == 130
    assert ckpt_io.load(run / "checkpoint.npz").step == 2 and _csv_epochs(run) == [1, 2]
    assert "holds the checkpoint and metrics of epoch 2:" in capsys.readouterr().err


def test_an_interrupt_before_the_first_epoch_names_no_run_folder(tmp_path, monkeypatch, capsys):
    def fit(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["fnn.cli.main"], "fit", fit)
    run = tmp_path / "r"
    assert main([*TINY, "--out", str(run)]) == 130
    out, err = capsys.readouterr()
    assert "nothing was kept" in err and "run folder" not in out and not run.exists()


def test_three_quick_ctrl_cs_exit_130_without_a_traceback(tmp_path):
    # Before: the second and third SIGINT hit the cleanup (the last metrics, JAX's exit
    # handlers) and printed a traceback ending in KeyboardInterrupt.
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "fnn", "train", "--dataset", "moons", "--hidden", "4", "--epochs", "100000",
           "--no-progress", "--no-gradcheck", "--out", str(run)]
    # A terminal's Ctrl-C reaches a process whose SIGINT has its default disposition. The test runner's
    # worker may not have it (an ignored SIGINT is inherited, and Python then installs no handler), so
    # the child gets the default, as from a shell.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("epoch"):
            break
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    step = ckpt_io.load(run / "checkpoint.npz").step
    assert _csv_epochs(run)[-1] == step
