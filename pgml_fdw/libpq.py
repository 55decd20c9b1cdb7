"""A minimal libpq client through ctypes: the backend's own connection back to its database.

A backend that serves predictions reads models and resolves names over one loopback connection.
psycopg2 would do, but importing it costs a new connection about 25 ms (it loads Python's ssl,
decimal and datetime modules besides libpq), a third of a first prediction's budget; this module
loads libpq alone. It runs simple queries with ``%s`` parameters sent as text, and gives back rows
of Python values (bool, int, float, str for anything else; bytea, as bytes, in a binary fetch). Training and batch
scoring, which stream data with COPY in worker processes, keep psycopg2.
"""
from __future__ import annotations

import ctypes
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import errors
from .errors import PgmlError

_CONNECTION_OK = 0
_TUPLES_OK, _COMMAND_OK = 2, 1
_DIAG = {"sqlstate": ord("C"), "message_primary": ord("M"), "message_hint": ord("H")}
_BOOL, _BYTEA, _INTEGERS, _FLOATS = 16, 17, frozenset((20, 21, 23, 26)), frozenset((700, 701))


class _ConninfoOption(ctypes.Structure):
    _fields_ = [("keyword", ctypes.c_char_p), ("envvar", ctypes.c_char_p), ("compiled", ctypes.c_char_p),
                ("val", ctypes.c_char_p), ("label", ctypes.c_char_p), ("dispchar", ctypes.c_char_p),
                ("dispsize", ctypes.c_int)]


class _Lib:
    """libpq's functions, typed."""

    def __init__(self) -> None:
        lib = _load()
        p, s, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, restype, argtypes in (
            ("PQconnectdb", p, [s]), ("PQstatus", i, [p]), ("PQerrorMessage", s, [p]), ("PQfinish", None, [p]),
            ("PQexecParams", p, [p, s, i, p, ctypes.POINTER(s), p, p, i]), ("PQresultStatus", i, [p]),
            ("PQresultErrorField", s, [p, i]), ("PQresultErrorMessage", s, [p]), ("PQclear", None, [p]),
            ("PQntuples", i, [p]), ("PQnfields", i, [p]), ("PQftype", ctypes.c_uint, [p, i]),
            ("PQgetvalue", p, [p, i, i]), ("PQgetlength", i, [p, i, i]), ("PQgetisnull", i, [p, i, i]),
            ("PQconninfoParse", ctypes.POINTER(_ConninfoOption), [s, ctypes.POINTER(p)]),
            ("PQconninfoFree", None, [ctypes.POINTER(_ConninfoOption)]), ("PQfreemem", None, [p]),
        ):
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
            setattr(self, name, function)


def _load() -> ctypes.CDLL:
    """libpq: the system's (PostgreSQL's own packages install it), else the copy psycopg2-binary's
    wheel carries."""
    try:
        return ctypes.CDLL("libpq.so.5")
    except OSError:
        pass
    from ctypes.util import find_library  # the linker's cache (slower: it runs ldconfig)
    import glob
    import importlib.util
    import os

    candidates = [find_library("pq")]
    spec = importlib.util.find_spec("psycopg2")
    if spec is not None and spec.origin:
        site = os.path.dirname(os.path.dirname(spec.origin))
        candidates += sorted(glob.glob(os.path.join(site, "psycopg2_binary.libs", "libpq*.so*")))
    for candidate in candidates:
        if candidate:
            try:
                return ctypes.CDLL(candidate)
            except OSError:
                continue
    raise PgmlError("pgml_fdw cannot find libpq (libpq.so.5), which it connects back to this database with",
                    hint="Install it on the database server (Debian and Ubuntu: libpq5; PGDG RPMs: "
                    "postgresql<N>-libs), or psycopg2-binary into the server's Python.",
                    sqlstate=errors.FEATURE_NOT_SUPPORTED)


_lib: Optional[_Lib] = None


def _pq() -> Any:
    global _lib
    if _lib is None:
        _lib = _Lib()
    return _lib


class Error(Exception):
    """A failed connection or query: the server's SQLSTATE (None: the connection failed), its
    primary message and its hint."""

    def __init__(self, message: str, sqlstate: Optional[str] = None, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message_primary = message
        self.message_hint = hint


def _text(value: Optional[bytes]) -> str:
    return (value or b"").decode("utf-8", "replace").strip()


def parse_conninfo(text: str) -> Dict[str, str]:
    """The settings of a libpq connection string (``key=value ...`` or a URI), as libpq reads it."""
    error = ctypes.c_void_p()
    options = _pq().PQconninfoParse(text.encode(), ctypes.byref(error))
    if not options:
        message = _text(ctypes.cast(error, ctypes.c_char_p).value) if error else "out of memory"
        if error:
            _pq().PQfreemem(error)
        raise Error(message)
    try:
        found: Dict[str, str] = {}
        for option in options:
            if option.keyword is None:
                break
            if option.val is not None:
                found[option.keyword.decode()] = option.val.decode("utf-8", "surrogateescape")
        return found
    finally:
        _pq().PQconninfoFree(options)


def make_conninfo(settings: Dict[str, Any]) -> str:
    """A libpq connection string of the settings (None values left out), each value quoted as
    libpq wants it: any database or role name works."""
    def quoted(value: Any) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quoted(value)}" for key, value in settings.items() if value is not None)


def _literal(value: Any) -> Optional[bytes]:
    """A parameter as the text PostgreSQL reads it (None: NULL)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, (list, tuple)):
        items = ('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' if v is not None else "NULL"
                 for v in value)
        return ("{" + ",".join(items) + "}").encode()
    return str(value).encode()


class Connection:
    """One libpq connection; :meth:`fetch` runs a query and returns its rows."""

    def __init__(self, conninfo: str) -> None:
        pq = _pq()
        handle = pq.PQconnectdb(conninfo.encode())
        if not handle:
            raise Error("out of memory")
        if pq.PQstatus(handle) != _CONNECTION_OK:
            message = _text(pq.PQerrorMessage(handle))
            pq.PQfinish(handle)
            raise Error(message)
        self._handle: Optional[int] = handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    def fetch(self, query: str, params: Sequence[Any] = (), binary: bool = False) -> List[Tuple[Any, ...]]:
        """The rows of ``query``, whose ``%s`` are replaced by ``params`` in order (sent apart from
        the query's text, never spliced into it). ``binary``: a query of bytea columns only, read
        without the text form's hex (half the bytes, no decoding)."""
        if self._handle is None:
            raise Error("the connection is closed")
        pieces = query.split("%s")
        if len(pieces) != len(params) + 1:
            raise ValueError(f"the query has {len(pieces) - 1} parameters, not {len(params)}")
        text = "".join(piece + (f"${n}" if n <= len(params) else "") for n, piece in enumerate(pieces, 1))
        values = (ctypes.c_char_p * max(1, len(params)))(*[_literal(p) for p in params])
        pq = _pq()
        result = pq.PQexecParams(self._handle, text.encode(), len(params), None, values, None, None, int(binary))
        if not result:
            message = _text(pq.PQerrorMessage(self._handle))
            self.close()
            raise Error(message)
        try:
            status = pq.PQresultStatus(result)
            if status not in (_TUPLES_OK, _COMMAND_OK):
                fields = {key: pq.PQresultErrorField(result, code) for key, code in _DIAG.items()}
                if fields["sqlstate"] is None:  # no answer from the server: the connection broke
                    message = _text(pq.PQresultErrorMessage(result)) or _text(pq.PQerrorMessage(self._handle))
                    self.close()
                    raise Error(message)
                raise Error(_text(fields["message_primary"]), _text(fields["sqlstate"]),
                            _text(fields["message_hint"]) or None)
            return self._rows(result, binary)
        finally:
            pq.PQclear(result)

    @staticmethod
    def _rows(result: int, binary: bool) -> List[Tuple[Any, ...]]:
        pq = _pq()
        types = [pq.PQftype(result, c) for c in range(pq.PQnfields(result))]
        if any((oid == _BYTEA) != binary for oid in types):
            raise ValueError("bytea columns are read by a binary fetch, and a binary fetch reads only them")
        rows = []
        for r in range(pq.PQntuples(result)):
            row: List[Any] = []
            for c, oid in enumerate(types):
                if pq.PQgetisnull(result, r, c):
                    row.append(None)
                    continue
                raw = ctypes.string_at(pq.PQgetvalue(result, r, c), pq.PQgetlength(result, r, c))
                if binary:
                    row.append(raw)
                elif oid in _INTEGERS:
                    row.append(int(raw))
                elif oid in _FLOATS:
                    row.append(float(raw))
                elif oid == _BOOL:
                    row.append(raw == b"t")
                else:
                    row.append(raw.decode("utf-8", "surrogateescape"))
            rows.append(tuple(row))
        return rows

    def close(self) -> None:
        """Ends the connection, if open."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            _pq().PQfinish(handle)
