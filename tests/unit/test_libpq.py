"""The ctypes libpq client's server-free parts: connection strings and parameters."""
from __future__ import annotations

import pytest

from pgml_fdw import libpq

NAMES = ["Mixed Case \"db\"", "o'brien", "back\\slash", "spaces  and\ttabs", "ünïcode", ""]


@pytest.mark.parametrize("name", NAMES)
def test_any_value_survives_a_connection_string(name: str) -> None:
    text = libpq.make_conninfo({"host": "/var/run/postgresql", "dbname": name, "user": name, "port": None})
    assert libpq.parse_conninfo(text) == {"host": "/var/run/postgresql", "dbname": name, "user": name}


def test_a_bad_connection_string_is_an_error_naming_it() -> None:
    with pytest.raises(libpq.Error, match="missing"):
        libpq.parse_conninfo("host")
    assert libpq.parse_conninfo("postgresql://u@h:5/d") == {"user": "u", "host": "h", "port": "5", "dbname": "d"}


def test_parameters_as_postgresql_reads_them() -> None:
    assert [libpq._literal(v) for v in (None, True, False, 3, 2.5, "x'y")] == [
        None, b"t", b"f", b"3", b"2.5", b"x'y"]
    assert libpq._literal([1, None, 'a"b\\c']) == b'{"1",NULL,"a\\"b\\\\c"}'


def test_a_connection_that_cannot_be_made_says_why() -> None:
    with pytest.raises(libpq.Error) as caught:
        libpq.Connection("host=/nonexistent/socket/dir port=1 dbname=x connect_timeout=1")
    assert caught.value.sqlstate is None and "/nonexistent/socket/dir" in str(caught.value)


def test_without_any_libpq_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import ctypes.util

    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(libpq.PgmlError) as caught:
        libpq._load()
    assert caught.value.sqlstate == "0A000" and "libpq5" in caught.value.hint
