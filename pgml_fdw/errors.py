"""The one exception type users see.

Every problem a user can cause (a bad option, an unknown model, features of the
wrong shape) is raised as :class:`PgmlError` with a message that names the
problem and, where there is one, a hint that names the fix.  The foreign data
wrapper turns it into a PostgreSQL ERROR with that message and HINT.
"""
from typing import Optional


class PgmlError(Exception):
    """A user-facing error: what went wrong, and how to fix it."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"
