"""Your own data: a ``.csv`` table or an ``.npz`` archive as a :class:`fnn.data.Dataset`.

``load_table(path, target=None)`` reads numeric tables only, and every bad file
gets one ``ValueError`` that names the file, the row or column, and the fix:
an empty file, ragged rows, missing values, non-numeric cells, a value float32 cannot
hold (beyond ±3.4e38), a missing target column, a target with a single class, and content
that is not a text table (gzip/bzip2/xz/zstd-compressed, an Excel or OpenDocument workbook,
a zip, PDF, Parquet or other binary file). Text is read as UTF-8 (a byte-order mark is
skipped), UTF-16 or UTF-32 with a byte-order mark, or else cp1252. Split and standardisation work as for the
built-in sets (20% test, statistics from the training part; regression targets
standardised too).

- **CSV** (``.csv``, ``.tsv`` or ``.txt``; comma, semicolon or tab separated): a header
  row is detected when the first row is not all numbers. The target is the column
  ``target`` (a header name or a 0-based index), by default the last one.
- **NPZ**: arrays ``x`` ``(N, d)`` and ``y`` ``(N,)`` or ``(N, k)``, and optionally
  ``x_test`` and ``y_test``, which are then the test split.

The task comes from the target: integer values with at most
:data:`MAX_CLASSES` distinct values make a classification (labels mapped to
``0..K-1`` in sorted order; ``K = 2`` is a binary task); anything else is a
regression. ``task=`` overrides it (the CLI passes the kind of an explicit loss).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from fnn.data.datasets import DATASETS, Dataset, split_standardise, standardise
from fnn.data.splits import as_binary_targets

MAX_CLASSES = 20
MISSING = {"", "na", "n/a", "nan", "null", "none", "?", "-"}


def load_table(path, target: str | int | None = None, *, seed: int = 0, test_fraction: float = 0.2,
               task: str | None = None) -> Dataset:
    """The dataset in ``path`` (``.csv``/``.tsv``/``.txt`` or ``.npz``); see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file (give a .csv or .npz file).")
    if task not in (None, "classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}.")
    name = path.stem
    if path.suffix.lower() == ".npz":
        if target is not None:
            raise ValueError(f"{path}: a target column is for tables; an .npz file holds its targets as y.")
        x, y, test = _read_npz(path)
    elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
        x, y, test = (*_read_csv(path, target), None)
    else:
        raise ValueError(f"{path}: unknown data file type {path.suffix!r}: give a .csv or .npz file.")
    ys = [y] if test is None else [y, test[1]]
    kind, ys, classes = _task(ys, task, path)
    if test is None:
        return split_standardise(name, x, ys[0], task=kind, test_fraction=test_fraction, seed=seed,
                                 num_classes=classes, standardise_targets=kind == "regression")
    return standardise(name, (x, ys[0]), (test[0], ys[1]), task=kind, num_classes=classes,
                       standardise_targets=kind == "regression")


def _task(ys: list[np.ndarray], task: str | None, path: Path):
    """``(task, targets, num_classes)``: labels remapped to ``0..K-1`` for a classification."""
    joined = np.concatenate([a.reshape(len(a), -1) for a in ys])
    integral = joined.shape[1] == 1 and np.all(joined == np.round(joined))
    values = np.unique(joined) if integral else None
    if task is None:
        task = "classification" if integral and len(values) <= MAX_CLASSES else "regression"
    if task == "regression":
        return task, [a.astype(np.float32).reshape(len(a), -1) for a in ys], None
    if not integral:
        raise ValueError(f"{path}: classification needs one integer label per example, but the targets are "
                         "not integers: use a regression loss, or round the labels.")
    if len(values) < 2:
        raise ValueError(f"{path}: the target has a single class ({values[0]:g}): there is nothing to classify.")
    return task, [np.searchsorted(values, a.ravel()).astype(np.int32) for a in ys], len(values)


def is_data_file(name: str) -> bool:
    """Whether a dataset name is a path to a data file rather than a built-in set."""
    return name not in DATASETS and (Path(name).suffix.lower() in (".csv", ".tsv", ".txt", ".npz")
                                     or os.sep in name or "/" in name)


def as_binary(data: Dataset) -> Dataset:
    """A two-class dataset with float 0/1 targets of shape ``(N, 1)``, for a single sigmoid
    output and ``binary_cross_entropy`` (also ``fnn.data.as_binary``); raises ``ValueError``
    for other datasets."""
    if data.task == "binary":
        return data
    if data.task != "classification" or data.num_classes != 2:
        what = f"{data.num_classes} classes" if data.task == "classification" else "a regression"
        raise ValueError(f"binary_cross_entropy needs two classes, but {data.name} has {what}: "
                         "use softmax_cross_entropy (or --loss auto).")
    return dataclasses.replace(data, task="binary", **{k: as_binary_targets(getattr(data, k))
                                                       for k in ("y_train", "y_test", "y_val")})


# --- CSV -----------------------------------------------------------------------------------------

def _read_csv(path: Path, target) -> tuple[np.ndarray, np.ndarray]:
    text = _read_text(path)
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=_delimiter(path, text))]
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]  # (line, cells)
    if not numbered:
        raise ValueError(f"{path} is empty: it needs a header (optional) and rows of numbers.")
    header = None
    if not all(_is_number(c) for c in numbered[0][1]):
        header = [c.strip() for c in numbered[0][1]]
        numbered = numbered[1:]
        if not numbered:
            raise ValueError(f"{path} has a header but no data rows.")
    width = len(header) if header is not None else len(numbered[0][1])
    if width < 2:
        raise ValueError(f"{path} has a single column: it needs input columns and a target column.")
    names = header or [str(i) for i in range(width)]
    table = np.empty((len(numbered), width), np.float64)
    for r, (line, cells) in enumerate(numbered):
        if len(cells) != width:
            raise ValueError(f"{path}, line {line}: {len(cells)} cells where the {'header' if header else 'first row'} "
                             f"has {width}: every row needs the same columns.")
        for c, cell in enumerate(cells):
            table[r, c] = _number(cell, path, line, names[c])
    column = _target_column(target, names, header is not None, path)
    x = np.delete(table, column, axis=1).astype(np.float32)
    return x, table[:, column]


# Content that is not a text table, by its first bytes: (magic, what it is, the fix).
MAGIC = [
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip -k FILE)"),
    (b"BZh", "bzip2-compressed", "decompress it first (bunzip2 -k FILE)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz -k FILE)"),
    (b"(\xb5/\xfd", "zstd-compressed", "decompress it first (unzstd FILE)"),
    (b"\xd0\xcf\x11\xe0", "an old Excel (.xls) or other Office file", "export the sheet as CSV from the spreadsheet"),
    (b"%PDF", "a PDF document", "export the table as CSV"),
    (b"\x89PNG", "a PNG image", "give a table of numbers"),
    (b"\x93NUMPY", "a numpy .npy array", "save x and y with numpy.savez as an .npz file"),
    (b"PAR1", "a Parquet file", "convert it to CSV (e.g. pandas.read_parquet(FILE).to_csv(...))"),
]
F32_MAX = float(np.finfo(np.float32).max)


def _read_text(path: Path) -> str:
    """The file's text: UTF-8 (with or without a byte-order mark), UTF-16/32 with one, or (as
    spreadsheets on Windows write it) cp1252; one ``ValueError`` for binary or compressed content."""
    raw = path.read_bytes()
    for magic, what, fix in MAGIC:
        if raw.startswith(magic):
            raise ValueError(f"{path} is {what}, not a text table: {fix}.")
    if raw.startswith(b"PK\x03\x04"):
        what, fix = _zip_kind(path)
        raise ValueError(f"{path} is {what}, not a text table: {fix}.")
    for bom, encoding in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                          (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise ValueError(f"{path} starts with a {encoding.upper()} byte-order mark but is not valid "
                                 f"{encoding.upper()} (byte {err.start}): save it again as UTF-8 CSV.") from None
    head = raw[:1 << 16]
    if b"\x00" in head or sum(b < 9 or 13 < b < 32 for b in head) > len(head) // 100:
        utf16 = " (or UTF-16 text without a byte-order mark)" if b"\x00" in head[1:8:2] else ""
        raise ValueError(f"{path} is a binary file{utf16}, not a text table: give a CSV file of numbers "
                         "saved as UTF-8 text.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")  # only header names can hold such characters


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "a damaged zip archive", "unzip or export it again"
    if any(n.startswith("xl/") for n in names):
        return "an Excel workbook (.xlsx)", "export the sheet as CSV from the spreadsheet"
    if "content.xml" in names:
        return "an OpenDocument file (.ods)", "export the sheet as CSV from the spreadsheet"
    if names and all(n.endswith(".npy") for n in names):
        return "a numpy .npz archive", "give it a .npz name"
    return "a zip archive", "unzip it and give the CSV file inside"


def _delimiter(path: Path, text: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    first = text.lstrip().split("\n", 1)[0]
    return max(",;\t", key=first.count) if any(d in first for d in ",;\t") else ","


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _number(cell: str, path: Path, line: int, column: str) -> float:
    stripped = cell.strip()
    if stripped.lower() in MISSING:
        raise ValueError(f"{path}, line {line}, column {column!r}: missing value ({cell!r}): "
                         "fill it in or drop the row.")
    try:
        value = float(stripped)
    except ValueError:
        raise ValueError(f"{path}, line {line}, column {column!r}: {cell!r} is not a number: only numeric "
                         "columns are supported (encode categories as numbers, drop text columns).") from None
    if not np.isfinite(value):
        raise ValueError(f"{path}, line {line}, column {column!r}: {cell!r} is not finite: clean the data.")
    # (A value below float32's smallest, 1.4e-45, becomes 0: an absolute error too small to matter.)
    if abs(value) > F32_MAX:
        raise ValueError(f"{path}, line {line}, column {column!r}: {stripped} is too large for float32 (at most "
                         f"±{F32_MAX:.1e}): rescale the column (e.g. change its unit) or drop the row.")
    return value


def _target_column(target, names: list[str], has_header: bool, path: Path) -> int:
    if target is None:
        return len(names) - 1
    if str(target) in names and has_header:
        return names.index(str(target))
    try:
        index = int(target)
    except (TypeError, ValueError):
        index = None
    if index is not None and -len(names) <= index < len(names):
        return index % len(names)
    shown = ", ".join(repr(n) for n in names[:12]) + (" ..." if len(names) > 12 else "")
    raise ValueError(f"{path} has no column {target!r}: give a column name or a 0-based index "
                     f"(columns: {shown}).")


# --- NPZ -----------------------------------------------------------------------------------------

def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz archive ({err}): save it with numpy.savez.") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise ValueError(f"{path} has no array {key!r} (it has: {', '.join(sorted(arrays)) or 'none'}): "
                             "save the inputs as x and the targets as y.")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path} has only one of x_test and y_test: give both, or neither (a split is made).")
    x, y = _npz_pair(arrays, "x", "y", path)
    if "x_test" not in arrays:
        return x, y, None
    x_test, y_test = _npz_pair(arrays, "x_test", "y_test", path)
    if x_test.shape[1] != x.shape[1]:
        raise ValueError(f"{path}: x_test has {x_test.shape[1]} features but x has {x.shape[1]}.")
    return x, y, (x_test, y_test)


def _npz_pair(arrays: dict, xk: str, yk: str, path: Path):
    x, y = arrays[xk], arrays[yk]
    for key, a in ((xk, x), (yk, y)):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{path}: {key} has dtype {a.dtype}, not numbers: store numeric arrays only.")
    if x.ndim != 2:
        raise ValueError(f"{path}: {xk} has shape {x.shape}; it must be (examples, features) (reshape it).")
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise ValueError(f"{path}: {yk} has shape {y.shape}, but {xk} has {len(x)} rows: give one target "
                         "(or one row of targets) per example.")
    if len(x) == 0:
        raise ValueError(f"{path}: {xk} is empty: there is nothing to train on.")
    for key, a in ((xk, x), (yk, y)):
        flat = a.astype(np.float64).reshape(len(a), -1)
        bad = np.flatnonzero(~np.isfinite(flat).all(1))
        if bad.size:
            raise ValueError(f"{path}: {key} row {bad[0]} holds NaN or Inf ({bad.size} rows in all): clean or "
                             "drop those rows.")
        big = np.flatnonzero((np.abs(flat) > F32_MAX).any(1))
        if big.size:
            raise ValueError(f"{path}: {key} row {big[0]} holds {flat[big[0]][np.abs(flat[big[0]]) > F32_MAX][0]:g}, "
                             f"too large for float32 (at most {F32_MAX:.1e}; {big.size} rows in all): rescale it.")
    return x.astype(np.float32), y.astype(np.float64)
