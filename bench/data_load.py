"""Scenario c: reading training data, in rows per second and peak memory.

The wrapper's loader (pgml_fdw.loading.read_training_data, the code pgml.train runs) reads the
20-feature view into arrays in a process of its own, twice: as the extension owner (the dsn's own
user: the query streams as it is) and as another role (through a SECURITY DEFINER function owned by
that role, which gathers the rows before they stream). Next to them, repeated and interleaved, a
client reads the same view with plain COPY, text and binary, discarding what arrives. All go
through the dsn the wrapper itself uses. The faster COPY is the baseline of the targets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List

from fixtures import Fixtures
from harness import Measurement, Sizes, Target, connect, median, rotated, server_dsn

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "load_child.py")
MODES = ("pgml", "pgml_role", "copy_text", "copy_binary")


def _read(mode: str, dsn: str, relation: str, role: str) -> Dict[str, float]:
    args = ["pgml", dsn, relation, "y", role] if mode == "pgml_role" else [mode, dsn, relation, "y"]
    done = subprocess.run([sys.executable, CHILD] + args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load_child.py {mode} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def run(fixtures: Fixtures, sizes: Sizes) -> List[Measurement]:
    """Reads of the 20-feature view: the wrapper's loader against plain COPY."""
    relation = fixtures.wide_view()
    role = fixtures.reader_role()
    conn = connect()
    dsn = server_dsn(conn)
    conn.close()
    reads: Dict[str, List[Dict[str, float]]] = {mode: [] for mode in MODES}
    for r in range(sizes.repeats):
        for mode in rotated(list(MODES), r):
            reads[mode].append(_read(mode, dsn, relation, role))

    pgml = reads["pgml"]
    rows, columns = int(pgml[0]["rows"]), int(pgml[0]["columns"])
    rate = {mode: rows / median([read["seconds"] for read in runs]) for mode, runs in reads.items()}
    fastest = max(("copy_text", "copy_binary"), key=lambda mode: rate[mode])
    other = "copy_binary" if fastest == "copy_text" else "copy_text"
    names = {"copy_text": "COPY text to a discarding client", "copy_binary": "COPY binary to a discarding client"}
    matrix_mb = rows * columns * 8 / 2**20
    peak_mb = {mode: median([read["peak_added_bytes"] for read in reads[mode]]) / 2**20
               for mode in ("pgml", "pgml_role")}
    details = {"relation": relation, "rows": rows, "columns": columns, "dsn": dsn, "reader_role": role,
               "reads": reads, "rows_per_second": rate, "float64_matrix_mb": matrix_mb, "peak_added_mb": peak_mb}
    owner = f"read_training_data as the extension owner, {rows} rows x {columns} floats"
    other_role = f"read_training_data as another role, {rows} rows x {columns} floats"
    memory = "the float64 matrix (rows x cols x 8)"
    return [
        Measurement("c", owner, "rows/s", rate["pgml"], names[fastest], rate[fastest], Target(">=", 0.5), details),
        Measurement("c", owner, "rows/s", rate["pgml"], names[other], rate[other], None, details),
        Measurement("c", other_role, "rows/s", rate["pgml_role"], names[fastest], rate[fastest], Target(">=", 0.5),
                    details),
        Measurement("c", "read_training_data as the extension owner, peak memory added", "MB", peak_mb["pgml"],
                    memory, matrix_mb, Target("<=", 3.0), details),
        Measurement("c", "read_training_data as another role, peak memory added", "MB", peak_mb["pgml_role"],
                    memory, matrix_mb, Target("<=", 3.0), details),
    ]
