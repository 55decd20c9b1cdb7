"""Version numbers that are never given twice, even by a run that rolled back.

A model's id is ``name_version``. If a version's number were taken in the training's own transaction,
a run that rolled back would give its number back, and the next run would reuse the id the rolled-back
one had already returned to its caller (and logged, or sent elsewhere). So the number is taken like a
sequence's value: on the wrapper's own connection, committed at once, whatever becomes of the caller's
transaction. Runs of one name are serialized by the caller (``pgml._train`` holds a lock on the name),
so numbers follow each other; a run that fails or rolls back leaves a gap, as a serial column does.
"""
from __future__ import annotations

from .connection import ServerConnection

# The extension's numbering rule; one statement, so one transaction of its own on the autocommit
# connection.
_TAKE = "SELECT pgml._next_version_number(%s, %s::integer)"


def take(server: ServerConnection, name: str, at_least: int) -> int:
    """The next version number of the model ``name``: ``at_least`` or more, and more than any number
    the name was ever given; recorded and committed before this returns."""
    (version,), = server.fetch(_TAKE, (name, at_least))
    return int(version)
