"""Tests for pgml_fdw.isolation: work in a supervised child process (no server needed)."""
from __future__ import annotations

import mmap
import os
import signal
import time
from typing import List, NoReturn

import numpy as np
import pytest

from pgml_fdw import interrupts, isolation
from pgml_fdw.errors import PgmlError
from pgml_fdw.isolation import ChildFailed, Interrupted

MB = 1 << 20


def assert_gone(pid: int) -> None:
    """The child was reaped: it is no longer this process's child, nor a zombie."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_result_comes_back() -> None:
    assert isolation.run(pow, 2, 10, memory_limit=None) == 1024
    assert isolation.run(lambda: {"a": (1, 2.5, "x")}, memory_limit=100 * MB) == {"a": (1, 2.5, "x")}


def test_a_large_array_comes_back_whole() -> None:
    n = 50 * MB // 8
    result = isolation.run(lambda: np.arange(n, dtype=np.float64), memory_limit=None)
    assert result.dtype == np.float64 and result.shape == (n,)
    assert result[0] == 0 and result[-1] == n - 1 and result.sum() == n * (n - 1) / 2


def test_the_work_runs_in_another_process() -> None:
    assert isolation.run(os.getpid, memory_limit=None) != os.getpid()


def test_a_pgml_error_passes_through() -> None:
    def fail() -> NoReturn:
        raise PgmlError("the label column has one class", hint="Use more rows.", sqlstate="22000")

    with pytest.raises(PgmlError) as caught:
        isolation.run(fail, memory_limit=None)
    assert type(caught.value) is PgmlError
    assert caught.value.message == "the label column has one class"
    assert caught.value.hint == "Use more rows."
    assert caught.value.sqlstate == "22000"


def test_running_out_of_the_memory_limit_is_a_clear_error() -> None:
    with pytest.raises(PgmlError) as caught:
        isolation.run(lambda: np.ones((4 << 30) // 8).sum(), memory_limit=200 * MB)
    assert caught.value.sqlstate == "53200"
    assert "more memory than the 200 MB" in caught.value.message
    assert "pgml.training_memory" in caught.value.hint


def test_the_limit_does_not_count_what_the_parent_had_mapped() -> None:
    reserved = mmap.mmap(-1, 1 << 30)  # 1 GB of address space in the parent, never touched
    try:
        total = isolation.run(lambda: float(np.ones(100 * MB // 8).sum()), memory_limit=200 * MB)
    finally:
        reserved.close()
    assert total == 100 * MB // 8


def test_a_child_killed_by_sigkill_is_blamed_on_the_oom_killer() -> None:
    with pytest.raises(PgmlError) as caught:
        isolation.run(lambda: os.kill(os.getpid(), signal.SIGKILL), memory_limit=None)
    assert "signal 9 (SIGKILL)" in caught.value.message
    assert "out-of-memory killer" in caught.value.message
    assert caught.value.sqlstate == "53200"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_postgres_signal_handlers_are_reset_in_the_child(signum: int) -> None:
    # Python's SIGINT handler (here in pytest, PostgreSQL's in a backend) must not run in the child:
    # with the default action the signal ends it.
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        with pytest.raises(PgmlError) as caught:
            isolation.run(lambda: os.kill(os.getpid(), signum), memory_limit=None)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert f"signal {int(signum)} ({signal.Signals(signum).name})" in caught.value.message
    assert caught.value.sqlstate == "XX000"


def test_a_child_exiting_without_an_answer_is_an_error() -> None:
    with pytest.raises(PgmlError) as caught:
        isolation.run(lambda: os._exit(7), memory_limit=None)
    assert "exited with status 7 without an answer" in caught.value.message
    assert caught.value.sqlstate == "XX000"


def test_an_interrupt_kills_the_child_and_hands_over_the_reported_pids() -> None:
    def reporting_sleeper() -> None:
        isolation.report_backend_pid(os.getpid())
        isolation.report_backend_pid(4242)
        time.sleep(60)

    abandoned: List[List[int]] = []
    start = time.monotonic()
    with pytest.raises(Interrupted) as caught:
        isolation.run(reporting_sleeper, memory_limit=None,
                      interrupted=lambda: time.monotonic() - start > 0.2, on_abandon=abandoned.append)
    assert time.monotonic() - start < 2
    assert len(abandoned) == 1
    child, other = abandoned[0]
    assert other == 4242 and child != os.getpid()
    assert caught.value.backend_pids == [child, 4242]
    assert_gone(child)


def test_a_child_killed_by_a_cancel_sent_to_the_process_group_is_an_interrupt(tmp_path) -> None:
    # PostgreSQL sends a cancel's SIGINT to the backend's process group, the child included.
    flag = tmp_path / "cancel"

    def cancelled() -> None:
        flag.touch()  # the backend's QueryCancelPending, set by the same signal
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        isolation.run(cancelled, memory_limit=None, interrupted=flag.exists)


def test_the_child_is_reaped_when_the_parent_fails() -> None:
    def broken_check() -> bool:
        raise RuntimeError("the check failed")

    def sleeper() -> None:
        isolation.report_backend_pid(os.getpid())
        time.sleep(60)

    pids: List[int] = []
    with pytest.raises(RuntimeError, match="the check failed"):
        isolation.run(sleeper, memory_limit=None, interrupted=broken_check, on_abandon=pids.extend)
    assert pids == []  # not an interrupt: nothing abandoned on purpose
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child of any kind is left


def test_an_unexpected_exception_comes_back_with_its_traceback() -> None:
    def inner_step() -> NoReturn:
        raise ValueError("boom")

    with pytest.raises(ChildFailed) as caught:
        isolation.run(inner_step, memory_limit=None)
    assert caught.value.type_name == "ValueError"
    assert caught.value.message == "boom"
    assert str(caught.value) == "ValueError: boom"
    assert "inner_step" in caught.value.traceback_text
    assert caught.value.traceback_text.rstrip().endswith("ValueError: boom")


def test_an_unpicklable_result_is_a_child_failure() -> None:
    with pytest.raises(ChildFailed) as caught:
        isolation.run(lambda: (lambda: None), memory_limit=None)
    assert "pickle" in str(caught.value).lower()


def test_native_thread_pools_run_one_thread_in_the_child() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    np.ones((50, 50)) @ np.ones((50, 50))  # loads the BLAS
    counts = isolation.run(lambda: [pool["num_threads"] for pool in threadpoolctl.threadpool_info()],
                           memory_limit=None)
    assert counts and set(counts) == {1}


def test_the_child_is_the_out_of_memory_killers_first_choice() -> None:
    assert isolation.run(lambda: open("/proc/self/oom_score_adj").read().strip(), memory_limit=None) == "1000"


def test_report_backend_pid_outside_a_child_does_nothing() -> None:
    assert isolation.report_backend_pid(1234) is None
    isolation.run(isolation.report_backend_pid, 1, memory_limit=None)
    assert isolation._report_fd is None  # the child's setting stayed in the child


def test_no_interrupt_is_pending_outside_postgres() -> None:
    assert interrupts.pending() is False


def test_memory_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        isolation.run(pow, 2, 2, memory_limit=0)
