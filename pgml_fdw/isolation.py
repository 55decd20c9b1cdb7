"""Heavy work in a forked child process that the PostgreSQL backend supervises.

A scikit-learn fit inside the backend can neither be cancelled (PostgreSQL's interrupts only set
flags, and acting on them would longjmp through Python frames) nor be bounded in memory (the
kernel's out-of-memory killer then kills a backend, and the postmaster restarts the whole server).
:func:`run` therefore forks, runs the target in the child under an address-space limit, and waits
for its answer while watching the backend's interrupt flags (:mod:`pgml_fdw.interrupts`). A cancel
or a termination kills the child at once; a child that runs out of memory dies alone.

The child is a copy of the backend, so it must behave like a guest in it: it never touches the
connections or sockets it inherited (psycopg2 connections, the client's socket: writing to them, or
even closing them, would corrupt the backend's sessions), never runs PostgreSQL's or Python's exit
handlers (it leaves with ``os._exit``), and opens any connection it needs itself. It stays in the
backend's process group: PostgreSQL sends statement_timeout's SIGINT, ``pg_cancel_backend``,
``pg_terminate_backend`` and the postmaster's shutdown signals to the whole group, and with the
default handlers they stop the child too.

Child-to-parent messages travel on a pipe, each an 8-byte big-endian length then a pickle of a
``(kind, payload)`` tuple:

* ``("pid", int)``: the backend pid of a loopback connection the child opened
  (:func:`report_backend_pid`); there may be any number;
* then exactly one final message: ``("result", value)``, ``("pgml_error", (pickled PgmlError or
  None, fields))``, ``("memory", None)`` or ``("error", (type name, message, traceback text))``.
"""
from __future__ import annotations

import gc
import io
import os
import pickle
import resource
import select
import signal
import struct
import threading
import traceback
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple, TypeVar

from . import interrupts
from .errors import PgmlError

T = TypeVar("T")

OUT_OF_MEMORY = "53200"
INTERNAL_ERROR = "XX000"

# PostgreSQL's handlers for these are inherited by the child; they would act on the backend's state.
_SIGNALS = tuple(getattr(signal, name) for name in (
    "SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGHUP",
    "SIGFPE",  # FloatExceptionHandler raises an ERROR: a longjmp into the backend's error recovery
    "SIGURG",  # the latch's wake-up signal from PostgreSQL 14
) if hasattr(signal, name))
_HEADER = struct.Struct(">Q")
_READ_BUDGET = 64 << 20  # bytes read between two looks at the interrupt flags
_PIPE_SIZE = 1 << 20     # a larger pipe: fewer wake-ups for a large result
_F_SETPIPE_SZ = 1031     # Linux's fcntl; Python 3.9's fcntl module does not name it
_PR_SET_PDEATHSIG = 1    # Linux's prctl option

# Exit codes of the child; they matter only when it could not send its final message.
_EXIT_OK = 0
_EXIT_FAILED = 1
_EXIT_NO_MEMORY = 3

# Set in a child started by run(): where report_backend_pid() writes, and which process may.
_report_fd: Optional[int] = None
_report_owner: Optional[int] = None
_report_lock = threading.Lock()


class Interrupted(Exception):
    """PostgreSQL asked the backend to cancel the query or to terminate; the child was killed.

    The caller returns without raising anything of its own, so that PostgreSQL's next
    ``CHECK_FOR_INTERRUPTS`` raises its usual cancel or termination error.
    """

    def __init__(self, backend_pids: List[int]) -> None:
        super().__init__("interrupted by PostgreSQL; the worker process was killed")
        self.backend_pids = backend_pids


class ChildFailed(Exception):
    """The target raised an unexpected exception in the child (a bug, not a user's error).

    Carries what survives the process boundary: the exception's type name, its message, and the
    child's formatted traceback, for the server log.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


def in_worker() -> bool:
    """Whether this process is a child started by :func:`run` (and not a child of its own)."""
    return _report_fd is not None and os.getpid() == _report_owner


def report_backend_pid(pid: int) -> None:
    """Tell the supervising backend the pid of a loopback connection's backend this child opened.

    If the work is abandoned, the parent hands these pids to ``on_abandon`` (to cancel their
    queries: killing the child does not stop a query its connection's backend is running). A no-op
    outside a child started by :func:`run`.
    """
    if _report_fd is None or os.getpid() != _report_owner:  # not in our child (nor its own children)
        return
    _send(_report_fd, ("pid", int(pid)))


def run(target: Callable[..., T], *args: Any, memory_limit: Optional[int],
        interrupted: Callable[[], bool] = interrupts.pending,
        on_abandon: Optional[Callable[[List[int]], None]] = None, poll_seconds: float = 0.05,
        task: str = "training") -> T:
    """``target(*args)``, computed in a forked child process and returned (by pickle).

    ``memory_limit``: the bytes the child may map beyond what the backend had mapped when it forked
    (shared_buffers and the like do not count), or None for no limit. ``interrupted`` is called
    every ``poll_seconds`` while waiting; when it returns True the child is killed, ``on_abandon``
    gets the backend pids the child reported with :func:`report_backend_pid`, and
    :class:`Interrupted` is raised. ``task`` names the work in error messages.

    Raises the target's :class:`PgmlError` as it was; a :class:`PgmlError` (SQLSTATE 53200) when
    the child ran out of memory; a :class:`PgmlError` when the child was killed by a signal or
    exited without an answer; :class:`ChildFailed` for any other exception of the target;
    :class:`Interrupted`. The child has always been reaped when this returns or raises.
    """
    if memory_limit is not None and memory_limit <= 0:
        raise ValueError(f"memory_limit must be positive or None, not {memory_limit}")
    read_fd, write_fd = os.pipe()  # both close-on-exec: programs the target execs do not get them
    _enlarge_pipe(write_fd)
    parent = os.getpid()
    # Until the child has reset PostgreSQL's handlers, none of them may run in the child.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:
        _child(read_fd, write_fd, parent, old_mask, target, args, memory_limit)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(write_fd)  # else the pipe never reaches EOF
    child = _Child(pid)
    try:
        return _supervise(child, read_fd, memory_limit, interrupted, on_abandon, poll_seconds, task)
    finally:
        os.close(read_fd)
        child.kill_and_reap()


# --- the parent's side --------------------------------------------------------------------------

class _Child:
    """The child's pid and, once reaped, its wait status (None if someone else reaped it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: Optional[int] = None
        self.reaped = False

    def exited(self) -> bool:
        """Whether the child has ended (reaping it if so), without waiting."""
        if not self.reaped:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.reaped = True
                return True
            if done:
                self.status, self.reaped = status, True
        return self.reaped

    def wait(self) -> None:
        if not self.reaped:
            try:
                _, self.status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.reaped = True

    def kill_and_reap(self) -> None:
        if not self.reaped:  # never signal a reaped pid: it may belong to another process by now
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()


class _FrameReader:
    """Reads length-prefixed frames from a non-blocking pipe, as much as is there, into one buffer
    per frame allocated at its final size (a result of hundreds of MB is never copied)."""

    def __init__(self, fd: int) -> None:
        self._file = io.FileIO(fd, "rb", closefd=False)
        self._header = bytearray(_HEADER.size)
        self._body: Optional[bytearray] = None
        self._filled = 0
        self.eof = False

    def read(self, budget: Optional[int]) -> List[bytearray]:
        """The frames completed by reading what is available, up to about ``budget`` bytes."""
        frames: List[bytearray] = []
        done = 0
        while not self.eof and (budget is None or done < budget):
            buffer = self._header if self._body is None else self._body
            if self._filled < len(buffer):
                n = self._file.readinto(memoryview(buffer)[self._filled:])
                if n is None:  # nothing more for now
                    break
                if n == 0:
                    self.eof = True
                    break
                self._filled += n
                done += n
            if self._filled == len(buffer):
                if self._body is None:
                    self._body = bytearray(_HEADER.unpack(self._header)[0])
                else:
                    frames.append(self._body)
                    self._body = None
                self._filled = 0
        return frames


def _supervise(child: _Child, fd: int, memory_limit: Optional[int], interrupted: Callable[[], bool],
               on_abandon: Optional[Callable[[List[int]], None]], poll_seconds: float, task: str) -> Any:
    """Reads the child's messages until its answer, watching ``interrupted`` in between."""
    os.set_blocking(fd, False)
    reader = _FrameReader(fd)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    timeout_ms = max(1, round(poll_seconds * 1000))
    pids: List[int] = []
    final: Optional[Tuple[str, Any]] = None
    while final is None and not reader.eof:
        gone = False
        if poller.poll(timeout_ms):
            frames = reader.read(_READ_BUDGET)
        else:
            # A process the target forked may hold the pipe open after the child died: no EOF then.
            gone = child.exited()
            frames = reader.read(None) if gone else []
        for frame in frames:
            kind, payload = pickle.loads(frame)
            if kind == "pid":
                pids.append(payload)
            else:
                final = (kind, payload)
        del frames
        if final is None and interrupted():
            _abandon(child, pids, on_abandon)
        if gone:
            break
    child.wait()  # it has sent its answer or closed the pipe: it is exiting
    if final is not None:
        kind, payload = final
        if kind == "result":
            return payload
        if kind == "pgml_error":
            raise _rebuild(payload)
        if kind == "memory":
            raise _out_of_memory(memory_limit, task)
        raise ChildFailed(*payload)
    if interrupted():  # a cancel's SIGINT goes to the backend's process group: it killed the child too
        _abandon(child, pids, on_abandon)
    raise _died(child, memory_limit, task)


def _abandon(child: _Child, pids: List[int], on_abandon: Optional[Callable[[List[int]], None]]) -> NoReturn:
    child.kill_and_reap()
    if on_abandon is not None:
        try:
            on_abandon(list(pids))
        except Exception as exc:
            raise Interrupted(list(pids)) from exc
    raise Interrupted(list(pids))


def _rebuild(payload: Tuple[Optional[bytes], Dict[str, Any]]) -> PgmlError:
    """The child's PgmlError: itself if it unpickles, else one made from its fields."""
    blob, fields = payload
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
        if isinstance(exc, PgmlError):
            return exc
    rebuilt = PgmlError(fields.get("message", "pgml_fdw failed"), fields.get("hint"))
    for name, value in fields.items():
        setattr(rebuilt, name, value)
    return rebuilt


def _out_of_memory(limit: Optional[int], task: str) -> PgmlError:
    if limit is None:
        return PgmlError(f"the {task} ran out of memory",
                         hint="Train on fewer rows or a smaller model.", sqlstate=OUT_OF_MEMORY)
    return PgmlError(
        f"the {task} needed more memory than the {_size(limit)} that pgml.training_memory allows",
        hint=f"Raise it with SET pgml.training_memory = '{_setting(2 * limit)}', "
        "or train on fewer rows or a smaller model.",
        sqlstate=OUT_OF_MEMORY)


def _died(child: _Child, limit: Optional[int], task: str) -> PgmlError:
    """The error for a child that ended without an answer."""
    status = child.status
    which = f"pgml_fdw's worker process {child.pid} (the {task})"
    if status is not None and os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum == signal.SIGKILL:
            spare = ("Lower pgml.training_memory" if limit is not None else "Set pgml.training_memory")
            return PgmlError(
                f"{which} was killed by signal {signum} (SIGKILL), most likely by the kernel's "
                "out-of-memory killer",
                hint=f"{spare} to the memory the server can spare, so that a {task} that needs more "
                "fails with a clear error, or train on fewer rows or a smaller model.",
                sqlstate=OUT_OF_MEMORY)
        return PgmlError(f"{which} was killed by signal {signum} ({_signal_name(signum)})",
                         hint="The server log may say more. If memory is short, "
                         "SET pgml.training_memory bounds what a training may use.",
                         sqlstate=INTERNAL_ERROR)
    if status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == _EXIT_NO_MEMORY:
        return _out_of_memory(limit, task)
    if status is not None and os.WIFEXITED(status):
        ended = f"exited with status {os.WEXITSTATUS(status)}"
    else:
        ended = "ended"  # reaped by someone else: its status is unknown
    return PgmlError(f"{which} {ended} without an answer", hint="The server log may say more.",
                     sqlstate=INTERNAL_ERROR)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _size(n: int) -> str:
    """Bytes as PostgreSQL shows a memory setting: 200 MB, 1.5 GB."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{round(n / scale, 1):g} {unit}"
    return f"{n} bytes"


def _setting(n: int) -> str:
    """Bytes as a value for SET (whole units: '4GB', '400MB')."""
    if n % (1 << 30) == 0:
        return f"{n >> 30}GB"
    return f"{-(-n // (1 << 20))}MB"


def _enlarge_pipe(fd: int) -> None:
    try:
        import fcntl
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except (ImportError, OSError):
        pass  # the default size works, with more wake-ups


# --- the child's side ---------------------------------------------------------------------------

def _child(read_fd: int, write_fd: int, parent: int, old_mask: Any, target: Callable[..., Any],
           args: Tuple[Any, ...], memory_limit: Optional[int]) -> NoReturn:
    """Runs in the child: set up, run the target, send the answer, and always leave by os._exit
    (PostgreSQL's and Python's exit handlers, and flushing buffers inherited from the backend,
    belong to the backend)."""
    code = _EXIT_FAILED
    try:
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)  # a signal sent meanwhile now ends us
        global _report_fd, _report_owner
        _report_fd, _report_owner = write_fd, os.getpid()
        os.close(read_fd)
        code = _serve(write_fd, lambda: _set_up(parent, memory_limit), target, args)
    finally:
        os._exit(code)


def _set_up(parent: int, memory_limit: Optional[int]) -> None:
    _die_with(parent)
    _first_to_go()
    # A collection could finalize objects the backend still uses (a psycopg2 connection that is
    # garbage in the child would send its Terminate message on the backend's socket).
    gc.freeze()
    # No core dumps: SIGQUIT's default action (a server shutdown) would write one the size of the backend.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _one_thread()
    if memory_limit is not None:
        _limit_address_space(memory_limit)


def _serve(fd: int, set_up: Callable[[], None], target: Callable[..., Any], args: Tuple[Any, ...]) -> int:
    """Runs the target and sends its answer; the exit code says what happened if sending failed."""
    message: Optional[Tuple[str, Any]]
    try:
        set_up()
        message = ("result", target(*args))
    except PgmlError as exc:
        message = ("pgml_error", _portable(exc))
    except MemoryError:
        message = ("memory", None)  # the frames holding the big allocations are gone after this block
    except BaseException as exc:  # SystemExit too: the child must answer, not exit on its own
        message = ("error", _describe(exc))
    code = _EXIT_NO_MEMORY if message[0] == "memory" else _EXIT_OK
    try:
        _send(fd, message)
        return code
    except MemoryError:  # pickling a large result under the limit
        message = None
        _try_send(fd, ("memory", None))
        return _EXIT_NO_MEMORY
    except BaseException as exc:  # an unpicklable result; nothing was written (pickling comes first)
        message = None
        # Said as such: Python 3.13 reports a local object that cannot be pickled as an AttributeError.
        failure = pickle.PicklingError(f"the worker's result cannot be pickled: {type(exc).__name__}: {exc}")
        failure.__cause__ = exc
        _try_send(fd, ("error", _describe(failure)))
        return _EXIT_FAILED


def _try_send(fd: int, message: Tuple[str, Any]) -> None:
    try:
        _send(fd, message)
    except BaseException:
        pass  # the exit code says it


def _send(fd: int, message: Tuple[str, Any]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    with _report_lock:  # frames from two threads must not interleave
        _write_all(fd, _HEADER.pack(len(data)))
        _write_all(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _portable(exc: PgmlError) -> Tuple[Optional[bytes], Dict[str, Any]]:
    """The error pickled whole, and its plain fields to rebuild it if that does not unpickle."""
    try:
        blob: Optional[bytes] = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        blob = None
    fields = {name: value for name, value in vars(exc).items()
              if value is None or isinstance(value, (str, int, float, bool))}
    fields.update(message=exc.message, hint=exc.hint, sqlstate=getattr(exc, "sqlstate", None))
    return blob, fields


def _describe(exc: BaseException) -> Tuple[str, str, str]:
    """An exception as ChildFailed's arguments: qualified type name, message, traceback text."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        text = str(exc)
    except Exception:
        text = "(its message could not be formatted)"
    return name, text, "".join(traceback.format_exception(kind, exc, exc.__traceback__))


def _die_with(parent: int) -> None:
    """Have the kernel kill the child if the backend dies (else a crash leaves it training alone)."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux
    if os.getppid() != parent:  # the backend died before prctl took effect
        os._exit(_EXIT_FAILED)


def _first_to_go() -> None:
    """Make the child the out-of-memory killer's first choice, before any PostgreSQL process (a
    killed backend restarts the whole server; a killed child is one failed training)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass  # not Linux, or /proc not mounted: the address-space limit still applies


def _one_thread() -> None:
    """One thread in native pools: after a fork, OpenMP and OpenBLAS are only safe single-threaded."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=1)  # applies at once, for the child's life


def _limit_address_space(memory_limit: int) -> None:
    """RLIMIT_AS at what the child has mapped now (inherited: shared_buffers...) plus the budget."""
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    cap = mapped + memory_limit
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)  # may be lowered, never raised
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
