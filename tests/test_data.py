import gzip
import hashlib
import struct

import numpy as np
import pytest

from fnn.data import datasets


@pytest.mark.parametrize("name", ["digits", "diabetes", "sine", "xor", "moons", "spirals", "mnist1d"])
def test_datasets_are_split_and_standardised_on_train(name):
    d = datasets.load(name, seed=0)
    assert d.x_train.dtype == np.float32 and len(d.x_train) > len(d.x_test) > 0
    np.testing.assert_allclose(d.x_train.mean(0), 0, atol=1e-4)
    std = d.x_train.std(0)
    assert np.all((np.abs(std - 1) < 1e-3) | (std == 0))  # constant features stay at zero
    assert not np.allclose(d.x_test.mean(0), 0, atol=1e-6)  # test statistics were not used
    if d.task == "classification":
        assert d.y_train.dtype == np.int32 and d.y_train.max() == d.num_classes - 1
    else:
        assert d.y_train.ndim == 2


def test_digits_matches_scikit_learn():
    from sklearn.datasets import load_digits

    d = datasets.digits()
    assert len(d.x_train) + len(d.x_test) == 1797 and d.in_dim == 64
    assert sorted(np.concatenate([d.y_train, d.y_test])) == sorted(load_digits().target)
    # The kept statistics undo the standardisation: back to the 0..16 pixel intensities.
    raw = np.concatenate([d.x_train, d.x_test]) * d.x_std + d.x_mean
    np.testing.assert_allclose(raw, np.round(raw), atol=1e-4)
    assert sorted(map(tuple, np.round(raw).astype(int))) == sorted(map(tuple, load_digits().data.astype(int)))


def test_mnist1d_is_generated_offline_without_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    d = datasets.mnist1d()
    assert np.random.random() == before  # numpy's global RNG is left as it was
    assert list(tmp_path.iterdir()) == []  # no pickle written
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)


def test_validation_split_never_touches_test():
    d = datasets.digits()
    v = datasets.validation_split(d)
    assert len(v.x_train) + len(v.x_val) == len(d.x_train) and len(v.x_test) == len(d.x_test)
    raw = lambda a, s: (np.round(a * s.x_std + s.x_mean) + 0.0).tobytes()  # integer pixels (+0.0: no -0.0)
    rows = {raw(r, d) for r in d.x_test}
    assert [raw(r, v) for r in v.x_test] == [raw(r, d) for r in d.x_test]  # the same test rows, in order
    assert sum(raw(r, v) in rows for r in v.x_val) <= 2  # (digits holds a few duplicate images)


def _write_idx(path, array, compress):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)
    return payload


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_round_trips(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / ("x.gz" if compress else "x")
    _write_idx(path, images, compress)
    np.testing.assert_array_equal(datasets.read_idx(path), images)
    ints = rng.integers(-5, 5, (3, 4)).astype(np.int32)
    _write_idx(tmp_path / "ints", ints, False)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "ints"), ints)


def test_idx_reader_rejects_corrupt_files(tmp_path):
    payload = _write_idx(tmp_path / "good", np.zeros((4, 3), np.uint8), False)
    (tmp_path / "short").write_bytes(payload[:-2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        datasets.read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="bad magic number"):
        datasets.read_idx(tmp_path / "junk")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="Cannot read IDX file"):
        datasets.read_idx(tmp_path / "bad.gz")


def _fake_mnist(folder, n_train=20, n_test=10):
    rng = np.random.default_rng(1)
    sums = {}
    for name, n in [("train", n_train), ("t10k", n_test)]:
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for kind, a in (("images-idx3", x), ("labels-idx1", y)):
            fname = f"{name}-{kind}-ubyte"
            _write_idx(folder / f"{fname}.gz", a, True)
            sums[fname] = hashlib.md5((folder / f"{fname}.gz").read_bytes()).hexdigest()
    return sums


def test_mnist_reads_a_folder(tmp_path):
    _fake_mnist(tmp_path)
    d = datasets.mnist(tmp_path, download_missing=False)
    assert d.x_train.shape == (20, 784) and d.x_test.shape == (10, 784) and d.num_classes == 10


def test_mnist_download_verifies_checksums(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    source.mkdir()
    sums = _fake_mnist(source)
    monkeypatch.setattr(datasets, "MNIST_FILES", sums)
    dest = tmp_path / "data"
    d = datasets.mnist(dest, base_url=source.as_uri() + "/")
    assert d.x_train.shape == (20, 784)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in sums)
    # A file whose checksum does not match is refused and not kept.
    bad = tmp_path / "bad"
    monkeypatch.setattr(datasets, "MNIST_FILES", {**sums, "train-images-idx3-ubyte": "0" * 32})
    with pytest.raises(ValueError, match="Checksum mismatch"):
        datasets.mnist(bad, base_url=source.as_uri() + "/")
    assert not any(p.name.startswith("train-images") for p in bad.iterdir())


def test_mnist_without_files_or_network_says_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Put the four files .*train-images-idx3-ubyte.gz"):
        datasets.mnist(tmp_path, base_url=(tmp_path / "nowhere").as_uri() + "/")


def test_bad_data_and_names():
    with pytest.raises(ValueError, match="Unknown dataset 'cifar'.*digits.*mnist1d"):
        datasets.load("cifar")
    with pytest.raises(ValueError, match="empty"):
        datasets.check_data(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="NaN or Inf"):
        datasets.check_data(np.array([[np.inf]]), np.zeros(1))
