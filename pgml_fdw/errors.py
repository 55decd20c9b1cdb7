"""The one exception type users see.

Every problem a user can cause (a bad option, an unknown model, features of the
wrong shape) is raised as :class:`PgmlError` with a message that names the
problem, where there is one a hint that names the fix, and a SQLSTATE of the
right class.  The wrapper never raises it into PostgreSQL itself: it hands it
back as data (:meth:`PgmlError.as_json`) and the extension's SQL raises it, so
no error ever jumps over Python frames inside the backend.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

# SQLSTATEs the wrapper uses, by what went wrong.
INVALID_PARAMETER = "22023"    # a bad option or feature value
INVALID_TEXT = "22P02"         # text that does not parse (JSON)
NUMERIC_OUT_OF_RANGE = "22003"  # a value a model cannot take
DATA_EXCEPTION = "22000"       # the data cannot train a model (NaN in y, one class...)
NULL_VALUE_NOT_ALLOWED = "22004"  # a NULL where preprocess says "impute": "error"
UNDEFINED_TABLE = "42P01"
INVALID_NAME = "42602"
UNDEFINED_COLUMN = "42703"
UNDEFINED_OBJECT = "42704"     # no such model
DATATYPE_MISMATCH = "42804"    # a column whose type cannot be a feature or a target
INSUFFICIENT_PRIVILEGE = "42501"
OUT_OF_MEMORY = "53200"
QUERY_CANCELED = "57014"
FEATURE_NOT_SUPPORTED = "0A000"  # a package version pgml_fdw does not support
LOCK_NOT_AVAILABLE = "55P03"
CONNECTION_FAILURE = "08006"
INTERNAL_ERROR = "XX000"


class PgmlError(Exception):
    """A user-facing error: what went wrong, how to fix it, and its SQLSTATE."""

    def __init__(self, message: str, hint: Optional[str] = None, sqlstate: str = INVALID_PARAMETER,
                 detail: Optional[str] = None) -> None:
        super().__init__(message, hint, sqlstate, detail)
        self.message = message
        self.hint = hint
        self.sqlstate = sqlstate
        self.detail = detail

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"

    def as_json(self) -> str:
        """The error as the jsonb that ``pgml._raise`` turns into a PostgreSQL ERROR."""
        fields: Dict[str, Any] = {"sqlstate": self.sqlstate, "message": self.message}
        if self.hint:
            fields["hint"] = self.hint
        if self.detail:
            fields["detail"] = self.detail
        return json.dumps(fields)
