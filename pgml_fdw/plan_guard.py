"""Where a scan of pgml.predictions is being planned: inside a subquery, inside an EXPLAIN.

Multicorn mishandles conditions whose value is only known when the query runs (a parameter, an
expression, a value from an outer query): EXPLAIN, with or without ANALYZE, hands such a condition
to the wrapper with its value unset (a jsonb or whole-row value is then a null pointer, and the
backend crashes: multicorn2 on PostgreSQL 15 does so even for ``features = jsonb_build_object(...)``
at the top level); and for a value computed from an outer row (a cast, a function) it reads the
value's type from the wrong field. Multicorn 1.4 and multicorn2 alike. pgml.predictions offers no
parameterized paths, so outer values reach its scan only from a subquery (``SELECT (SELECT
prediction FROM pgml.predictions WHERE ... features = to_jsonb(t)) FROM t``), which PostgreSQL
plans as a query of its own inside the outer one. While planning, the wrapper sees only the
constant conditions, but it can see how it is being called: this module reads the backend's own
call stack (glibc's ``backtrace`` and ``dladdr1``, read-only) and tells whether the planner is
nested and whether an EXPLAIN is running, so that the wrapper can refuse those plans with an error
instead of letting Multicorn crash the server.
"""
from __future__ import annotations

import ctypes
from typing import List, Optional, Tuple

_MAX_FRAMES = 512
_NEAR_FRAMES = 64  # enough to reach standard_planner from a top-level scan's planning
_RTLD_DL_SYMENT = 1


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


class _ElfSym(ctypes.Structure):  # Elf64_Sym
    _fields_ = [("st_name", ctypes.c_uint32), ("st_info", ctypes.c_ubyte), ("st_other", ctypes.c_ubyte),
                ("st_shndx", ctypes.c_uint16), ("st_value", ctypes.c_uint64), ("st_size", ctypes.c_uint64)]


# The functions looked for on the stack; their address ranges are found once.
_WATCHED = ("subquery_planner", "standard_planner", "ExplainQuery", "standard_ExecutorRun", "GetCachedPlan")


class _Stack:
    """Which of the watched functions are on the backend's stack, innermost first."""

    def __init__(self) -> None:
        executable = ctypes.CDLL(None)  # the postgres executable exports its functions for extensions
        self._backtrace = executable.backtrace
        self._backtrace.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        self._frames = (ctypes.c_void_p * _MAX_FRAMES)()
        self._ranges = [(name, *_extent(executable, name)) for name in _WATCHED]
        # Most frames are the interpreter's and Multicorn's, outside every watched function: one
        # comparison with the span of all of them rules such a frame out.
        self._low = min(start for _, start, _ in self._ranges)
        self._high = max(end for _, _, end in self._ranges)

    def functions(self, depth: int = _MAX_FRAMES) -> List[str]:
        """The watched functions among the ``depth`` innermost frames, innermost first (a function
        once per call)."""
        count = self._backtrace(self._frames, min(depth, _MAX_FRAMES))
        low, high = self._low, self._high
        found = []
        for address in self._frames[:count]:
            # address - 1: a return address may be one past its function's end
            if address and low < address <= high:
                for name, start, end in self._ranges:
                    if start < address <= end:
                        found.append(name)
        return found


def _extent(executable: ctypes.CDLL, name: str) -> Tuple[int, int]:
    """Where a function of the executable starts and ends (its ELF symbol's address and size)."""
    try:
        dladdr1 = executable.dladdr1
    except AttributeError:  # glibc before 2.34 keeps it in libdl
        dladdr1 = ctypes.CDLL("libdl.so.2").dladdr1
    dladdr1.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo), ctypes.POINTER(ctypes.POINTER(_ElfSym)), ctypes.c_int]
    start = ctypes.cast(getattr(executable, name), ctypes.c_void_p).value
    info, symbol = _DlInfo(), ctypes.POINTER(_ElfSym)()
    if not start or not dladdr1(start, ctypes.byref(info), ctypes.byref(symbol), _RTLD_DL_SYMENT) or not symbol:
        raise OSError(f"no extent for {name}")
    return start, start + symbol.contents.st_size


_stack: Optional[_Stack] = None
_unavailable = False


def _functions(depth: int = _MAX_FRAMES) -> Optional[List[str]]:
    """The watched functions on the stack (see _Stack.functions), or None outside a PostgreSQL
    backend or where the stack cannot be read."""
    global _stack, _unavailable
    if _unavailable:
        return None
    try:
        if _stack is None:
            _stack = _Stack()
        return _stack.functions(depth)
    except (OSError, AttributeError):
        _unavailable = True
        return None


def planning_subquery() -> Tuple[bool, bool]:
    """(nested, explaining): whether the planner is planning a subquery of its statement (two
    ``subquery_planner`` calls before the innermost ``standard_planner``), and, for a subquery,
    whether that statement is being explained. (False, False) at the top level, outside a
    PostgreSQL backend, or where the stack cannot be read."""
    # Unwinding costs per frame: the frames up to the planner's entry first, which is all a plan
    # at the top level (the common case) needs; the whole stack only for a subquery.
    names = _functions(_NEAR_FRAMES)
    if names is not None and "standard_planner" not in names:
        names = _functions()
    if names is None:
        return False, False
    depth = 0
    for name in names:
        if name == "standard_planner":
            break
        if name == "subquery_planner":
            depth += 1
    if depth < 2:
        return False, False
    return True, explaining()


def explaining() -> bool:
    """Whether the statement being planned is the one an EXPLAIN shows: an ``ExplainQuery`` outside
    the innermost ``standard_planner`` with no other planner or executor between them (a query that
    a function runs under EXPLAIN ANALYZE is planned inside the executor, and really runs). The
    whole stack is read: for the plans that need to know. False outside a PostgreSQL backend or
    where the stack cannot be read."""
    names = _functions() or []
    if "standard_planner" not in names:
        return False
    for name in names[names.index("standard_planner") + 1:]:
        if name in ("standard_planner", "standard_ExecutorRun"):
            return False
        if name == "ExplainQuery":
            return True
    return False


def preparing_a_statement() -> bool:
    """Whether the plan being made is a prepared statement's (PREPARE, or the extended protocol's),
    which PostgreSQL may keep and EXPLAIN EXECUTE show later without planning again: a cached plan
    made outside any running query. Functions prepare their queries inside one (the executor runs
    the query that calls them), and those plans are never explained."""
    names = _functions() or []
    if "GetCachedPlan" not in names:
        return False
    return "standard_ExecutorRun" not in names[names.index("GetCachedPlan") + 1:]
