"""Whether PostgreSQL wants this backend to stop: a query cancel or a termination is pending.

The wrapper runs inside a PostgreSQL backend, where statement_timeout, ``pg_cancel_backend`` and
``pg_terminate_backend`` only set flags that the backend's own ``CHECK_FOR_INTERRUPTS`` acts on, by
raising an ERROR (or FATAL) with a longjmp. A longjmp across Python frames corrupts the
interpreter, so the wrapper never calls ``CHECK_FOR_INTERRUPTS`` (nor Multicorn's
``check_interrupts()``, which does exactly that). It only *reads* the flags, stops its work, and
returns normally; PostgreSQL's next ``CHECK_FOR_INTERRUPTS`` then raises the usual
``57014 canceling statement ...`` or ``57P01 terminating connection ...`` error itself, with
PostgreSQL's own cleanup.

Only ``QueryCancelPending`` and ``ProcDiePending`` are read: ``InterruptPending`` is also set for
harmless reasons (catching up with shared invalidation messages, notifications...), which must
not stop a training.
"""
from __future__ import annotations

import ctypes
from typing import Optional, Tuple

_flags: Optional[Tuple[ctypes.c_int, ctypes.c_int]] = None
_resolved = False


def _resolve() -> Optional[Tuple[ctypes.c_int, ctypes.c_int]]:
    """The backend's two flags (``volatile sig_atomic_t``: a C int), or None outside PostgreSQL."""
    try:
        executable = ctypes.CDLL(None)  # the postgres executable exports its globals for extensions
        return (ctypes.c_int.in_dll(executable, "QueryCancelPending"),
                ctypes.c_int.in_dll(executable, "ProcDiePending"))
    except (OSError, ValueError):  # not inside a PostgreSQL backend (unit tests, scripts)
        return None


def pending() -> bool:
    """True when PostgreSQL has a query cancel or a backend termination pending for this backend.

    Read-only and cheap (two memory reads once the symbols are resolved, on first call). Always
    False outside a PostgreSQL backend.
    """
    global _flags, _resolved
    if not _resolved:
        _flags = _resolve()
        _resolved = True
    flags = _flags
    return flags is not None and bool(flags[0].value or flags[1].value)
