"""fnn.tables: one line with file, line and column for values float32 cannot hold, and for
content that is not a text table (compressed, workbooks, binary); encodings with a BOM work."""

import bz2
import gzip
import io
import warnings
import zipfile

import numpy as np
import pytest

from fnn.data.tables import load_table

GOOD = "a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))


@pytest.mark.parametrize("cell", ["1e308", "-1e39", "3.5e38", "1e39"])
@pytest.mark.parametrize("column", [0, 2])
def test_a_value_float32_cannot_hold_is_one_line_with_its_place(tmp_path, cell, column):
    rows = GOOD.splitlines()
    cells = rows[6].split(",")
    cells[column] = cell
    rows[6] = ",".join(cells)
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warnings on the way
        with pytest.raises(ValueError) as err:
            load_table(path)
    message = str(err.value)
    assert f"{path}, line 7, column {'ay'[column // 2]!r}: {cell} is too large for float32" in message
    assert "rescale" in message and "\n" not in message


def test_a_large_but_finite_float32_column_standardises_without_overflow(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,y\n" + "".join(f"{(-1) ** i * 3e38},{i % 2}\n" for i in range(20)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = load_table(path)
    assert np.all(np.isfinite(d.x_train)) and np.all(np.abs(d.x_train) < 2)


def test_an_npz_value_float32_cannot_hold_names_the_row(tmp_path):
    x = np.ones((10, 2))
    x[4, 1] = 1e300
    np.savez(tmp_path / "t.npz", x=x, y=np.arange(10) % 2)
    with pytest.raises(ValueError, match=r"x row 4 holds 1e\+300, too large for float32"):
        load_table(tmp_path / "t.npz")


def _xlsx():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
    return buffer.getvalue()


def _zip_of_csv():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("t.csv", GOOD)
    return buffer.getvalue()


@pytest.mark.parametrize("content, said", [
    (gzip.compress(GOOD.encode(), mtime=0), "is gzip-compressed, not a text table: decompress it first"),
    (bz2.compress(GOOD.encode()), "is bzip2-compressed"),
    (_xlsx(), "is an Excel workbook (.xlsx), not a text table: export the sheet as CSV"),
    (_zip_of_csv(), "is a zip archive, not a text table: unzip it"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), "old Excel (.xls)"),
    (b"%PDF-1.7\n...", "is a PDF document"),
    (GOOD.encode("utf-16-le"), "is a binary file (or UTF-16 text without a byte-order mark)"),
    (bytes(range(256)) * 8, "is a binary file, not a text table"),
], ids=["gzip", "bzip2", "xlsx", "zip", "xls", "pdf", "utf-16-without-bom", "binary"])  # ids, not bytes: a
# zip or gzip made at collection time holds the clock, and xdist workers must collect the same names
def test_content_that_is_not_a_text_table_is_named(tmp_path, content, said):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_table(path)
    assert said in str(err.value) and str(path) in str(err.value) and "single column" not in str(err.value)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32", "cp1252"])
def test_text_with_a_byte_order_mark_or_windows_encoding_loads(tmp_path, encoding):
    path = tmp_path / "t.csv"
    path.write_bytes(GOOD.replace("a,b", "größe,b").encode(encoding))
    reference = tmp_path / "r.csv"
    reference.write_text(GOOD)
    d, r = load_table(path), load_table(reference)
    np.testing.assert_array_equal(d.x_train, r.x_train)
    np.testing.assert_array_equal(d.y_test, r.y_test)
