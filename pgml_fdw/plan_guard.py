"""Where a scan of pgml.predictions is being planned: inside a subquery, inside an EXPLAIN.

Multicorn mishandles conditions whose value comes from an outer query: a plain EXPLAIN initializes
the scan without running it, and Multicorn evaluates such a condition anyway with the outer values
unset (a text, jsonb or whole-row value is then a null pointer, and the backend crashes); and for
a value computed from them (a cast, a function) it reads the value's type from the wrong field.
Multicorn 1.4 and multicorn2 alike. pgml.predictions offers no parameterized paths, so outer values
reach its scan only from a subquery (``SELECT (SELECT prediction FROM pgml.predictions WHERE ...
features = to_jsonb(t)) FROM t``), which PostgreSQL plans as a query of its own inside the outer
one. While planning, the wrapper sees only the constant conditions, but it can see how it is being
called: this module reads the backend's own call stack (glibc's ``backtrace`` and ``dladdr1``,
read-only) and tells whether the planner is nested and whether an EXPLAIN is running, so that the
wrapper can refuse those plans with an error instead of letting Multicorn crash the server.
"""
from __future__ import annotations

import ctypes
from typing import List, Optional, Tuple

_MAX_FRAMES = 512
_RTLD_DL_SYMENT = 1


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


class _ElfSym(ctypes.Structure):  # Elf64_Sym
    _fields_ = [("st_name", ctypes.c_uint32), ("st_info", ctypes.c_ubyte), ("st_other", ctypes.c_ubyte),
                ("st_shndx", ctypes.c_uint16), ("st_value", ctypes.c_uint64), ("st_size", ctypes.c_uint64)]


class _Stack:
    """The C functions on the backend's stack, innermost first, by their exported names."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None)
        self._backtrace = libc.backtrace
        self._backtrace.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        try:
            self._dladdr1 = libc.dladdr1
        except AttributeError:  # glibc before 2.34 keeps it in libdl
            self._dladdr1 = ctypes.CDLL("libdl.so.2").dladdr1
        self._dladdr1.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo),
                                  ctypes.POINTER(ctypes.POINTER(_ElfSym)), ctypes.c_int]

    def functions(self) -> List[Optional[str]]:
        frames = (ctypes.c_void_p * _MAX_FRAMES)()
        count = self._backtrace(frames, _MAX_FRAMES)
        return [self._name(frames[i]) for i in range(count)]

    def _name(self, address: Optional[int]) -> Optional[str]:
        """The exported function containing a return address; None for a static function (which
        dladdr would misname as the exported one before it) or an unknown address."""
        if not address:
            return None
        info, symbol = _DlInfo(), ctypes.POINTER(_ElfSym)()
        # A return address may be one past its function's end (a call that never returns).
        if not self._dladdr1(address - 1, ctypes.byref(info), ctypes.byref(symbol), _RTLD_DL_SYMENT):
            return None
        if not info.dli_sname or not info.dli_saddr or not symbol:
            return None
        if not info.dli_saddr <= address - 1 < info.dli_saddr + symbol.contents.st_size:
            return None
        return info.dli_sname.decode("ascii", "replace")


_stack: Optional[_Stack] = None
_unavailable = False


def planning_subquery() -> Tuple[bool, bool]:
    """(nested, explaining): whether the planner is planning a subquery of its statement (two
    ``subquery_planner`` calls before the innermost ``standard_planner``), and whether that
    statement is being explained. (False, False) outside a PostgreSQL backend, or where the stack
    cannot be read."""
    global _stack, _unavailable
    if _unavailable:
        return False, False
    try:
        if _stack is None:
            _stack = _Stack()
        names = _stack.functions()
    except (OSError, AttributeError):
        _unavailable = True
        return False, False
    depth = 0
    for name in names:
        if name == "standard_planner":
            break
        if name == "subquery_planner":
            depth += 1
    return depth >= 2, "ExplainQuery" in names
