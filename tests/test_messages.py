"""One-line messages that name the command, the close match and the fix; the records a resumed
run keeps; the compile cache repairing a damaged entry; dp-accounting's warnings folded into one;
two-class datasets and binary_cross_entropy."""

import json
import logging
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import fnn
from fnn.cli.args import build_parser
from fnn.cli.main import main
from fnn.cli.records import not_a_run
from fnn.cli.sweeprun import configurations
from fnn.cli.runs import DEFAULTS

QUIET = ["--no-progress", "--no-plot", "--no-gradcheck", "--no-compile-cache"]


def _error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    return err


# --- item 8: flags and names --------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("flag,value,close", [("--activation", "relux", "'relu'"), ("--loss", "hubr", "'huber'")])
def test_an_unknown_activation_or_loss_names_the_close_match_and_the_help(command, flag, value, close, capsys):
    err = _error([command, flag, value], capsys)
    assert f"did you mean {close}?" in err and err.rstrip().endswith(f"(see fnn {command} --help)")
    assert "losss" not in err and ("Known losses:" in err or "Known activations:" in err)


def test_the_library_message_names_the_close_match_with_a_right_plural():
    with pytest.raises(ValueError, match=r"Unknown loss 'hubr' \(did you mean 'huber'\?\)\. Known losses: "):
        fnn.get_loss("hubr")


@pytest.mark.parametrize("command", ["train", "sweep", "evaluate RUN", "bench"])
def test_an_unknown_flag_names_the_command_and_its_help(command, capsys):
    words = command.split()
    err = _error([*words, "--bogus"], capsys)
    assert err.startswith(f"fnn {words[0]}: error: unrecognized arguments: --bogus")
    assert err.rstrip().endswith(f"(see fnn {words[0]} --help)")


def test_a_mistyped_flag_gets_its_close_match(capsys):
    assert "did you mean --hidden?" in _error(["train", "--hiden", "3"], capsys)


@pytest.mark.parametrize("flag,values", [("lr", [0.1, 0.1]), ("activation", ["relu", "tanh", "relu"])])
def test_a_repeated_grid_value_is_refused_like_a_repeated_seed(flag, values):
    given = {k: [a] for k, a in DEFAULTS.items()}
    given.update(hidden=[8], seeds=[2], **{flag: values})
    with pytest.raises(ValueError, match=f"--{flag} gives each grid value once"):
        configurations(given)


def test_sweep_help_shows_one_value_defaults_plainly():
    sweep = build_parser()._subparsers._group_actions[0].choices["sweep"]
    text = sweep.format_help()
    assert "(default: ['" not in text and "(default: [0" not in text
    assert "(default: digits" in text and "(default: 32)" in text  # --batch-size; --lr is each optimizer's own


@pytest.mark.parametrize("kind", ["sweep", "bench", "empty", "file", "missing"])
def test_evaluate_says_what_a_folder_is_when_it_is_not_a_run(kind, tmp_path, capsys):
    path = tmp_path / kind
    if kind in ("sweep", "bench", "empty"):
        path.mkdir()
    if kind == "sweep":
        (path / "sweep.json").write_text("{}")
    elif kind == "bench":
        (path / "benchmark.json").write_text("{}")
    elif kind == "file":
        path.write_text("x")
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give a run folder written by fnn train" in err
    expected = {"sweep": "is a sweep folder (fnn sweep)", "bench": "is a benchmark folder (fnn bench)",
                "empty": "holds no config.json", "file": "is not a folder but a file",
                "missing": "does not exist; give a run folder"}[kind]
    assert expected in err and expected in not_a_run(path)


def test_config_names_what_it_takes(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "typo.json"), *QUIET]) == 2
    err = capsys.readouterr().err
    assert "typo.json does not exist; give a run folder" in err and "or the config.json in one" in err


# --- item 9: each command records the data file it read -------------------------------------------

def test_a_resume_on_a_changed_data_file_keeps_the_earlier_hash(tmp_path, capsys):
    data, run = tmp_path / "d.csv", tmp_path / "r"
    rows = "\n".join(f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(60))
    data.write_text("a,b,y\n" + rows + "\n")
    assert main(["train", "--dataset", str(data), "--hidden", "4", "--epochs", "1", "--out", str(run), *QUIET]) == 0
    data.write_text("a,b,y\n" + rows.replace("1,", "2,", 3) + "\n")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--allow-changed-data", *QUIET]) == 0
    doc = json.loads((run / "config.json").read_text())
    first, second = (c["data"]["sha256"] for c in doc["commands"])
    assert first != second and doc["data"]["sha256"] == second


# --- item 8: the compile cache and dp-accounting ------------------------------------------------

def test_a_damaged_compile_cache_entry_is_replaced_and_reported_once(tmp_path):
    env = {**os.environ, "FNN_CACHE_DIR": str(tmp_path / "cache"), "FNN_NO_COMPILE_CACHE": "0"}
    run = [sys.executable, "-m", "fnn", "train", "--dataset", "xor", "--hidden", "4", "--epochs", "1",
           "--no-progress", "--no-plot", "--no-gradcheck"]
    notes = []
    for i in range(3):
        done = subprocess.run([*run, "--out", str(tmp_path / f"r{i}")], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        notes.append(done.stderr.count("note: the compile cache"))
        if i == 0:
            entries = list((tmp_path / "cache").glob("*-cache"))
            assert entries
            for entry in entries:
                entry.write_bytes(b"damaged")
    # Before: the note came on every run after the damage, since JAX never rewrites an entry.
    assert notes == [0, 1, 0]


def test_dp_accounting_warnings_fold_into_one(caplog):
    pytest.importorskip("dp_accounting")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        eps = fnn.privacy.epsilon(1.0, batch_size=32, examples=307, steps=100)
    assert np.isfinite(eps) and eps > 0
    assert not [r for r in caplog.records if "failed to converge" in r.getMessage()]
    folded = [w for w in caught if "Rényi order" in str(w.message)]
    assert len(folded) == 1 and "upper bound" in str(folded[0].message)
    assert folded[0].filename == __file__  # it points at the caller


# --- item 10: two-class datasets and binary_cross_entropy -----------------------------------------

def test_binary_cross_entropy_on_two_output_labels_names_as_binary():
    data = fnn.data.load("moons")
    net = fnn.MLP((data.in_dim, 4, data.out_dim), ("tanh", "identity"))
    params = fnn.init(jax.random.key(0), net)
    with pytest.raises(ValueError, match=r"fnn\.data\.as_binary\(data\)"):
        fnn.value_and_grad(net, "binary_cross_entropy", params, data.x_train[:4], data.y_train[:4])
    binary = fnn.data.as_binary(data)
    assert binary.out_dim == 1 and binary.y_train.shape == (len(data.y_train), 1)
    net = fnn.MLP((binary.in_dim, 4, 1), ("tanh", "identity"))
    value, _ = fnn.value_and_grad(net, "binary_cross_entropy", fnn.init(jax.random.key(0), net),
                                  binary.x_train[:4], binary.y_train[:4])
    assert np.isfinite(float(value))
    assert "as_binary" in fnn.data.breast_cancer.__doc__ and "out_dim == 2" in fnn.data.breast_cancer.__doc__


def test_a_flag_prefix_is_a_typo_not_an_abbreviation(capsys):
    # argparse would take --epoch as --epochs silently; a prefix gets the one-line "did you mean".
    with pytest.raises(SystemExit) as caught:
        main(["train", "--epoch", "2", *QUIET])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--epoch" in err and "did you mean --epochs?" in err


@pytest.mark.parametrize("build,bad,close,value", [
    (fnn.kfac, "dampening", "damping", 0.1), (fnn.gauss_newton, "cg_iteration", "cg_iterations", 5),
    (fnn.ggn_diag_precond, "decays", "decay", 0.9), (fnn.newton, "learningrate", "learning_rate", 0.5)])
def test_a_mistyped_optimizer_setting_names_the_closest(build, bad, close, value):
    with pytest.raises(TypeError, match=rf"^{build.__name__}\(\) got an unexpected keyword argument '{bad}'; "
                                        rf"did you mean '{close}'\?$"):
        build(**{bad: value})
    assert build(**{close: value}) is not None  # the right name still builds it
