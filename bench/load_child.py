"""One read of a relation, in a process of its own, for scenario c: prints a JSON line with the
seconds it took, the rows read and the peak resident memory it added.

    python3 bench/load_child.py pgml DSN RELATION Y_COLUMN [ROLE]   the wrapper's loader
        (read_training_data), reading as ROLE (default: the dsn's own user)
    python3 bench/load_child.py copy_text DSN RELATION Y_COLUMN    COPY (SELECT * ...) TO STDOUT,
    python3 bench/load_child.py copy_binary DSN RELATION Y_COLUMN  discarded as it arrives

Peak memory is the process's peak resident size after the read minus its peak just before it,
everything imported and connected: what the read itself added at its highest. The peak is VmHWM
from /proc/self/status rather than getrusage's ru_maxrss, which Linux carries over from the parent
through fork and exec: a child of the benchmark (hundreds of MB once a forest is loaded) would start
with the parent's size as its "peak" and report nothing added.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict

import psycopg2

from pgml_fdw.connection import ServerConnection
from pgml_fdw.loading import feature_columns, read_training_data


def _max_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024


class _Discard:
    """A file for copy_expert that keeps nothing but the count of bytes and of newlines."""

    def __init__(self) -> None:
        self.size = 0
        self.newlines = 0

    def write(self, chunk: bytes) -> int:
        """Counts a chunk and drops it."""
        self.size += len(chunk)
        self.newlines += chunk.count(b"\n")
        return len(chunk)


def read_with_pgml(dsn: str, relation: str, y_column: str, role: str) -> Dict[str, Any]:
    """Reads the relation as pgml.train does: read_training_data into float64 arrays."""
    server = ServerConnection(dsn)
    role = role or server.fetch("SELECT current_user")[0][0]
    y, features = feature_columns(server, relation, y_column)
    before = _max_rss_bytes()
    started = time.perf_counter()
    data, y_values = read_training_data(dsn, role, relation, y, False, features)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": int(len(y_values)), "columns": len(data) + 1,
            "peak_added_bytes": _max_rss_bytes() - before}


def read_with_copy(dsn: str, relation: str, binary: bool) -> Dict[str, Any]:
    """Reads the relation with a plain COPY, discarding the data as it arrives."""
    conn = psycopg2.connect(dsn)
    sink = _Discard()
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {relation}")
        rows = cur.fetchone()[0]
        before = _max_rss_bytes()
        started = time.perf_counter()
        cur.copy_expert(f"COPY (SELECT * FROM {relation}) TO STDOUT{' (FORMAT binary)' if binary else ''}", sink)
        seconds = time.perf_counter() - started
    conn.close()
    if not binary and sink.newlines != rows:
        raise AssertionError(f"COPY gave {sink.newlines} rows, the relation has {rows}")
    return {"seconds": seconds, "rows": rows, "bytes": sink.size, "peak_added_bytes": _max_rss_bytes() - before}


def main() -> None:
    """Runs one read as the command line asks and prints its JSON line."""
    mode, dsn, relation, y_column = sys.argv[1:5]
    if mode == "pgml":
        result = read_with_pgml(dsn, relation, y_column, sys.argv[5] if len(sys.argv) > 5 else "")
    else:
        result = read_with_copy(dsn, relation, binary=mode == "copy_binary")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
