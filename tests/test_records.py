"""Run records that replay anywhere (absolute data path, sha256, unknown config keys) and
validation metrics named val_* on every path (fnn train, fnn evaluate, fnn sweep)."""

import csv
import json

import jax
import numpy as np
import pytest

import fnn
import fnn.cli.records
from fnn.cli.main import main
from fnn.cli.runs import RunFolder, build

FAST = ["--hidden", "4", "--no-gradcheck", "--no-progress", "--no-plot", "--batch-size", "8"]


def _table(path, rows=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).round(3)
    path.write_text("a,b,c,y\n" + "".join(f"{r[0]},{r[1]},{r[2]},{int(r.sum() > 0)}\n" for r in x))


@pytest.fixture
def csv_run(tmp_path, monkeypatch):
    """A 1-epoch run on ../data/t.csv, given relative to the folder it ran in."""
    (tmp_path / "data").mkdir()
    (tmp_path / "work").mkdir()
    _table(tmp_path / "data" / "t.csv")
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", "--dataset", "../data/t.csv", "--epochs", "1", "--out", "run", *FAST]) == 0
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_run_records_the_absolute_path_and_hash_and_replays_from_elsewhere(csv_run, capsys):
    doc = json.loads((csv_run / "work/run/config.json").read_text())
    data = csv_run / "data" / "t.csv"
    assert doc["config"]["dataset"] == str(data.resolve())
    assert doc["data"] == {"path": str(data.resolve()), "sha256": fnn.cli.records.file_sha256(data),
                           "bytes": data.stat().st_size}
    assert main(["evaluate", "work/run"]) == 0  # from another folder
    assert main(["train", "--resume", "work/run", "--epochs", "2", *FAST[2:]]) == 0
    assert main(["train", "--config", "work/run", "--out", "again", *FAST]) == 0


def test_a_changed_data_file_is_refused_on_evaluate_and_resume_unless_allowed(csv_run, capsys):
    _table(csv_run / "data" / "t.csv", seed=1)
    capsys.readouterr()
    for args in (["evaluate", "work/run"], ["train", "--resume", "work/run", "--epochs", "2", *FAST[2:]]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "t.csv changed since the run" in err
        assert "--allow-changed-data" in err
    assert main(["evaluate", "work/run", "--allow-changed-data"]) == 0
    assert "warning" in capsys.readouterr().err
    assert main(["train", "--config", "work/run", "--out", "new", *FAST]) == 0  # a new run: warns, records anew
    assert "changed since the run" in capsys.readouterr().err
    record = json.loads((csv_run / "new/config.json").read_text())["data"]
    assert record["sha256"] == fnn.cli.records.file_sha256(csv_run / "data" / "t.csv")


def test_a_moved_data_file_is_one_clear_line(csv_run, capsys):
    (csv_run / "data" / "t.csv").rename(csv_run / "moved.csv")
    capsys.readouterr()
    for args in (["evaluate", "work/run"], ["train", "--resume", "work/run", "--epochs", "2"],
                 ["train", "--config", "work/run", "--out", "x"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "t.csv, which no longer exists" in err
    assert main(["train", "--config", "work/run", "--dataset", "moved.csv", "--out", "x", *FAST]) == 0


@pytest.mark.parametrize("key, closest", [("learning_rate", "lr"), ("epoch", "epochs"), ("hiden", "hidden")])
def test_a_config_with_an_unknown_key_names_it_and_the_closest(key, closest, csv_run, capsys):
    path = csv_run / "work/run/config.json"
    doc = json.loads(path.read_text())
    doc["config"][key] = 1
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--out", "y"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{key!r} is not a configuration key" in err and f"{closest!r}" in err
    assert not (csv_run / "y").exists()


def test_validation_runs_name_their_metrics_val_and_evaluate_the_best_on_test(tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["train", "--dataset", "xor", "--validation", "--early-stopping", "2", "--epochs", "3",
                 "--out", str(out), *FAST]) == 0
    said = capsys.readouterr().out
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert {"val_loss", "val_accuracy"} <= set(history) and not any(k.startswith("test_") for k in history)
    assert next(csv.reader(open(out / "metrics.csv"))) == list(history)
    epochs = [line for line in said.splitlines() if line.startswith(("epoch", "final"))]
    assert all("val_loss" in line and "test_" not in line for line in epochs if line.startswith("epoch"))
    assert epochs[-1].startswith("final validation:")
    assert main(["evaluate", str(out), "--best", "--split", "test"]) == 0
    shown = capsys.readouterr().out
    config = RunFolder(out).read_config()
    data, net, loss = build(config)
    best = fnn.checkpoint.load(out / "best.npz", net=net).params
    expected = fnn.evaluate(net, loss, best, data.x_test, data.y_test)
    assert f"test accuracy {expected['accuracy']:.4f}  loss {expected['loss']:.4f}" in shown
    assert main(["evaluate", str(out)]) == 0 and "validation" in capsys.readouterr().out


def test_a_validation_sweep_names_val_everywhere_and_checks_select_first(tmp_path, capsys):
    base = ["sweep", "--dataset", "xor", "--validation", "--seeds", "2", "--epochs", "1", "--hidden", "4",
            "--no-progress", "--no-plot", "--lr", "0.01", "0.02"]
    assert main([*base, "--select", "test_accuracy", "--out", str(tmp_path / "bad")]) == 2
    assert "val_accuracy" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*base, "--out", str(tmp_path / "s")]) == 0
    said = capsys.readouterr().out
    header = (tmp_path / "s/summary.csv").read_text().splitlines()[0]
    md = (tmp_path / "s/summary.md").read_text()
    assert "val_accuracy_mean" in header and "test_" not in header
    assert "val_accuracy" in md and "test_" not in md and "best by validation accuracy" in said
    doc = json.loads((tmp_path / "s/sweep.json").read_text())
    assert "val_loss" in doc["runs"][0]["history"] and doc["data"] is None  # a built-in set: no file record
