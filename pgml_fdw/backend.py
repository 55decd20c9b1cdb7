"""Facts about the PostgreSQL backend this code runs in, read from the server's own C functions.

Multicorn offers no SPI, and a scan cannot run SQL in the caller's session, yet the wrapper must
know which database it serves (to connect back to it, wherever it is: renamed, copied from a
template, a hot standby) and which role it is working for (to read a relation with that role's
privileges, after ``SET ROLE`` too). The postgres executable exports these for extensions; the
functions called here report a missing entry by returning NULL (``noerr``/``missing_ok``). Those
that read a catalog could still fail on a cache miss, and an error there would jump over Python's
frames: the database's name is read once per backend (a connected database cannot be renamed),
and the current role's name while the statement that needs it has just checked that role's
privileges through the same cache.
"""
from __future__ import annotations

import ctypes
from typing import Optional

from . import errors
from .errors import PgmlError


class _Server:
    """The postgres executable's functions, typed; resolved on first use."""

    def __init__(self) -> None:
        exe = ctypes.CDLL(None)
        self.database_id = ctypes.c_uint.in_dll(exe, "MyDatabaseId")
        self.get_database_name = exe.get_database_name
        self.get_database_name.argtypes, self.get_database_name.restype = [ctypes.c_uint], ctypes.c_char_p
        self.get_user_id = exe.GetUserId
        self.get_user_id.argtypes, self.get_user_id.restype = [], ctypes.c_uint
        self.user_name = exe.GetUserNameFromId
        self.user_name.argtypes, self.user_name.restype = [ctypes.c_uint, ctypes.c_bool], ctypes.c_char_p
        self.config_option = exe.GetConfigOption
        self.config_option.argtypes = [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]
        self.config_option.restype = ctypes.c_char_p


_server: Optional[_Server] = None
_database: Optional[str] = None


def _the_server() -> _Server:
    global _server
    if _server is None:
        try:
            _server = _Server()
        except (OSError, AttributeError, ValueError) as exc:
            raise PgmlError("pgml_fdw runs only inside a PostgreSQL backend", sqlstate=errors.INTERNAL_ERROR) from exc
    return _server


def _text(value: Optional[bytes], what: str) -> str:
    if value is None:
        raise PgmlError(f"pgml_fdw cannot tell {what}", sqlstate=errors.INTERNAL_ERROR,
                        hint="This is a bug in pgml_fdw: please report it with the server log.")
    return value.decode("utf-8", "surrogateescape")


def database_name() -> str:
    """The name of the database this backend is connected to."""
    global _database
    if _database is None:
        server = _the_server()
        _database = _text(server.get_database_name(server.database_id.value), "the name of this database")
    return _database


def current_user() -> str:
    """The role whose privileges the current statement runs with: current_user, after SET ROLE
    and inside SECURITY DEFINER functions alike."""
    server = _the_server()
    return _text(server.user_name(server.get_user_id(), True), "which role this statement runs as")


def setting(name: str) -> Optional[str]:
    """A configuration parameter's value as text (GetConfigOption), or None if there is none."""
    value = _the_server().config_option(name.encode(), True, False)
    return None if value is None else value.decode("utf-8", "surrogateescape")
