"""Shared pieces of the benchmark: sizes, connections, statistics and the measurement record.

Every figure the suite reports is a :class:`Measurement`: our figure, a baseline measured side by
side in the same run, and their ratio, checked against a :class:`Target` where the project set one.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import numpy as np
import psycopg2
import psycopg2.extensions

PORT = int(os.environ.get("PGML_PORT", "5433"))
DATABASE = "pgml"
# What the benchmark's clients use: TCP on loopback, as an application would.
CLIENT_DSN = f"host=127.0.0.1 port={PORT} dbname={DATABASE} user=postgres application_name=pgml_bench"


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is: full size, or about a tenth of it with PGML_BENCH_QUICK=1."""

    quick: bool
    train_rows: int       # rows the linear and forest models of a, b and e are trained on
    score_rows: int       # rows the batch form of b scores
    lateral_rows: int     # rows the LATERAL form of b scores
    latency_rounds: int   # samples per query form in a
    load_rows: int        # rows of the 20-feature view of c and d
    repeats: int          # interleaved repetitions in b, c and d
    pgbench_seconds: int  # measured seconds per pgbench run in e (after every client is warm)
    pgbench_rounds: int   # rotations of the forms (subject and baselines) per client count in e
    cold_rounds: int      # interleaved new connections per form in f
    per_row_rows: int     # rows the per-row forms of g score

    @classmethod
    def from_env(cls) -> "Sizes":
        """Quick sizes when PGML_BENCH_QUICK is set (and not 0), else full sizes."""
        if os.environ.get("PGML_BENCH_QUICK", "") not in ("", "0"):
            return cls(True, 2_000, 10_000, 200, 300, 100_000, 2, 1, 1, 3, 3_000)
        return cls(False, 20_000, 100_000, 2_000, 3_000, 1_000_000, 3, 8, 2, 7, 100_000)


@dataclass(frozen=True)
class Target:
    """A bound the project set on the ratio ours / baseline, e.g. ``<= 2``."""

    op: str
    bound: float

    def holds(self, ratio: float) -> bool:
        """Whether a ratio meets the bound."""
        return ratio <= self.bound if self.op == "<=" else ratio >= self.bound

    def __str__(self) -> str:
        return f"{'≤' if self.op == '<=' else '≥'} {self.bound:g}x"


@dataclass
class Measurement:
    """One reported figure: ours against a baseline from the same run."""

    scenario: str
    name: str
    unit: str
    value: float
    baseline_name: str
    baseline: float
    target: Optional[Target] = None
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Ours / baseline."""
        return self.value / self.baseline if self.baseline else math.inf

    @property
    def status(self) -> Optional[str]:
        """'holds' or 'missed' against the target, None when there is none."""
        if self.target is None:
            return None
        return "holds" if self.target.holds(self.ratio) else "missed"

    def to_json(self) -> Dict[str, Any]:
        """The measurement as results.json holds it."""
        return {
            "scenario": self.scenario, "name": self.name, "unit": self.unit,
            "value": self.value, "baseline_name": self.baseline_name, "baseline": self.baseline,
            "ratio": self.ratio, "target": None if self.target is None else str(self.target),
            "status": self.status, "details": self.details,
        }


def connect(dsn: str = CLIENT_DSN) -> "psycopg2.extensions.connection":
    """An autocommit connection (each statement is its own transaction, as in psql)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def server_dsn(conn: "psycopg2.extensions.connection") -> str:
    """The dsn the wrapper itself reads data through (pgml_fdw.connection.loopback_dsn with the
    foreign server pgml's read_user), so that in-process loading and its baselines go over the same
    socket as the product does: the server's first socket directory, its port and this database,
    then the server's dsn option's settings, then the read_user role."""
    with conn.cursor() as cur:
        cur.execute("SELECT split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'), "
                    "current_database(), o.dsn, o.read_user FROM (SELECT "
                    "max(option_value) FILTER (WHERE option_name = 'dsn') AS dsn, "
                    "max(option_value) FILTER (WHERE option_name = 'read_user') AS read_user "
                    "FROM pg_options_to_table((SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'pgml'))) o")
        socket_dir, port, dbname, dsn, read_user = cur.fetchone()
    params: Dict[str, Any] = {"host": socket_dir.strip() or "localhost", "port": port, "dbname": dbname,
                              "application_name": "pgml_bench"}
    params.update(psycopg2.extensions.parse_dsn(dsn or ""))
    if read_user:
        params["user"] = read_user
    return psycopg2.extensions.make_dsn(**params)


def backend_pid(conn: "psycopg2.extensions.connection") -> int:
    """The process id of the connection's backend (the benchmark runs on the server's machine, as root,
    so /proc has it)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


def memory_kib(pid: int) -> Dict[str, int]:
    """VmRSS, VmHWM and what VmRSS is made of (RssAnon, RssFile, RssShmem) of a process, in KiB."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {name: int(fields[name].split()[0]) for name in wanted if name in fields}


# Python packages whose compiled modules (or bundled libraries) show among a process's mapped files
# once imported: the directories that give each away.
MAPPED_PACKAGES = {"numpy": ("/numpy/", "/numpy.libs/"), "scipy": ("/scipy/", "/scipy.libs/"),
                   "sklearn": ("/sklearn/", "/scikit_learn.libs/")}


def mapped_packages(pid: int) -> Dict[str, int]:
    """How many shared objects of each of MAPPED_PACKAGES a process has mapped (0: not imported)."""
    found: Dict[str, Set[str]] = {package: set() for package in MAPPED_PACKAGES}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(None, 5)  # address perms offset dev inode [path]
            path = fields[5].strip() if len(fields) == 6 else ""
            if ".so" in path:
                for package, markers in MAPPED_PACKAGES.items():
                    if any(marker in path for marker in markers):
                        found[package].add(path)
    return {package: len(paths) for package, paths in found.items()}


def timed(call: Callable[[], Any]) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def summary(seconds: Sequence[float]) -> Dict[str, float]:
    """Milliseconds: p50, p90, p99, mean, min and max of latency samples given in seconds."""
    ms = np.asarray(seconds) * 1000.0
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
            "min": float(ms.min()), "max": float(ms.max()), "samples": int(ms.size)}


def median(values: Sequence[float]) -> float:
    """The median, as a float."""
    return float(np.median(np.asarray(values, dtype=float)))


def rotated(items: List[Any], shift: int) -> List[Any]:
    """The items starting at position shift, wrapping around: interleaving without a fixed order."""
    shift %= len(items)
    return items[shift:] + items[:shift]
