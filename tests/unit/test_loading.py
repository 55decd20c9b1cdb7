"""Tests for pgml_fdw.loading.parse_binary_copy, on binary COPY streams built by hand.

The layout is PostgreSQL's: an 11-byte signature, flags and header-extension length, then per row a
16-bit field count and per field a 32-bit length (-1 for NULL) and the value; then -1 as the count.
"""
from __future__ import annotations

import struct
from typing import Optional, Sequence, Union

import numpy as np
import pytest

from pgml_fdw.loading import FLOAT, INTEGER, TEXT, parse_binary_copy

Value = Union[float, int, str, None]


def stream(rows: Sequence[Sequence[Value]], wires: Sequence[str], extension: bytes = b"") -> bytes:
    """A binary COPY stream of these rows, each field sent as its wire type says."""
    out = bytearray(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, len(extension)) + extension)
    for row in rows:
        out += struct.pack(">h", len(row))
        for value, wire in zip(row, wires):
            if value is None:
                out += struct.pack(">i", -1)
            elif wire == TEXT:
                data = str(value).encode()
                out += struct.pack(">i", len(data)) + data
            else:
                out += struct.pack(">i", 8) + struct.pack(">d" if wire == FLOAT else ">q", value)
    out += struct.pack(">h", -1)
    return bytes(out)


def test_floats_become_float64_columns() -> None:
    rows = [(1.5, -2.0, float("nan")), (0.0, 1e300, 3.25), (-0.5, 7.0, float("inf"))]
    columns = parse_binary_copy(stream(rows, [FLOAT] * 3), [FLOAT] * 3)
    assert [c.dtype for c in columns] == [np.float64] * 3
    np.testing.assert_array_equal(columns[0], [1.5, 0.0, -0.5])
    np.testing.assert_array_equal(columns[1], [-2.0, 1e300, 7.0])
    np.testing.assert_array_equal(columns[2], [np.nan, 3.25, np.inf])


def test_integer_keys_keep_every_digit() -> None:
    big = 2**62 + 1  # not representable as a float64
    columns = parse_binary_copy(stream([(1.0, big), (2.0, -3)], [FLOAT, INTEGER]), [FLOAT, INTEGER])
    assert columns[1].dtype == np.int64
    assert columns[1].tolist() == [big, -3]


def test_a_null_integer_takes_the_row_by_row_path() -> None:
    columns = parse_binary_copy(stream([(1.0, 5), (2.0, None)], [FLOAT, INTEGER]), [FLOAT, INTEGER])
    np.testing.assert_array_equal(columns[0], [1.0, 2.0])
    assert columns[1].dtype == object and columns[1].tolist() == [5, None]


def test_text_fields_mixed_with_numbers() -> None:
    wires = [TEXT, FLOAT, TEXT, INTEGER]
    rows = [("a", 1.0, None, 10), ("é€", 2.5, "", 11), (None, -1.0, "long " * 50, 12)]
    columns = parse_binary_copy(stream(rows, wires), wires)
    assert columns[0].tolist() == ["a", "é€", None]
    np.testing.assert_array_equal(columns[1], [1.0, 2.5, -1.0])
    assert columns[2].tolist() == [None, "", "long " * 50]
    assert columns[3].dtype == np.int64 and columns[3].tolist() == [10, 11, 12]


@pytest.mark.parametrize("wires", [[FLOAT], [FLOAT, INTEGER], [TEXT, FLOAT]])
def test_no_rows(wires: Sequence[str]) -> None:
    columns = parse_binary_copy(stream([], wires), wires)
    assert [len(c) for c in columns] == [0] * len(wires)


def test_a_header_extension_is_skipped() -> None:
    columns = parse_binary_copy(stream([(4.0,)], [FLOAT], extension=b"\x01\x02\x03"), [FLOAT])
    np.testing.assert_array_equal(columns[0], [4.0])


def test_the_fast_path_agrees_with_the_row_by_row_path_on_many_rows() -> None:
    rng = np.random.default_rng(0)
    n_rows, n_fields = 40_000, 21  # more rows than one conversion block
    values = rng.normal(size=(n_rows, n_fields))
    fast = parse_binary_copy(stream(values.tolist(), [FLOAT] * n_fields), [FLOAT] * n_fields)
    assert fast[0].base is not None  # views into the converted buffer: the vectorized path ran
    # A trailing text field sends the same numbers down the row-by-row path.
    rows = [list(row) + ["k"] for row in values.tolist()]
    slow = parse_binary_copy(stream(rows, [FLOAT] * n_fields + [TEXT]), [FLOAT] * n_fields + [TEXT])
    for i in range(n_fields):
        np.testing.assert_array_equal(fast[i], values[:, i])
        np.testing.assert_array_equal(slow[i], values[:, i])


def test_many_fields_have_a_two_byte_count() -> None:
    n_fields = 300  # a field count above 255 uses both bytes of the count
    row: Sequence[Optional[float]] = [float(i) for i in range(n_fields)]
    columns = parse_binary_copy(stream([row, row], [FLOAT] * n_fields), [FLOAT] * n_fields)
    assert [c[1] for c in columns] == list(row)


def test_a_bytearray_is_converted_in_place() -> None:
    buffer = bytearray(stream([(1.0, 2.0), (3.0, 4.0)], [FLOAT, FLOAT]))
    columns = parse_binary_copy(buffer, [FLOAT, FLOAT])
    np.testing.assert_array_equal(columns[1], [2.0, 4.0])
    assert np.shares_memory(columns[0], np.frombuffer(buffer, dtype=np.uint8))
    assert len(buffer) == 2 * 2 * 8  # cut to the matrix: the rest of the stream is freed


def test_not_a_copy_stream() -> None:
    with pytest.raises(ValueError, match="not a binary COPY stream"):
        parse_binary_copy(b"id,name\n1,a\n", [FLOAT])
