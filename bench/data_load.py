"""Scenario c: reading training data, in rows per second and peak memory.

The wrapper's loader (pgml_fdw.loading.read_training_data, the code pgml.train runs) reads the
20-feature view into arrays in a process of its own; next to it, repeated and interleaved, a client
reads the same view with plain COPY, text and binary, discarding what arrives. All three go through
the dsn the wrapper itself uses. The faster COPY is the baseline of the target.
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
MODES = ("pgml", "copy_text", "copy_binary")


def _read(mode: str, dsn: str, relation: str) -> Dict[str, float]:
    done = subprocess.run([sys.executable, CHILD, mode, dsn, relation, "y"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load_child.py {mode} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def run(fixtures: Fixtures, sizes: Sizes) -> List[Measurement]:
    """Reads of the 20-feature view: the wrapper's loader against plain COPY."""
    relation = fixtures.wide_view()
    conn = connect()
    dsn = server_dsn(conn)
    conn.close()
    reads: Dict[str, List[Dict[str, float]]] = {mode: [] for mode in MODES}
    for r in range(sizes.repeats):
        for mode in rotated(list(MODES), r):
            reads[mode].append(_read(mode, dsn, relation))

    pgml = reads["pgml"]
    rows, columns = int(pgml[0]["rows"]), int(pgml[0]["columns"])
    rate = {mode: rows / median([read["seconds"] for read in runs]) for mode, runs in reads.items()}
    fastest = max(("copy_text", "copy_binary"), key=lambda mode: rate[mode])
    other = "copy_binary" if fastest == "copy_text" else "copy_text"
    names = {"copy_text": "COPY text to a discarding client", "copy_binary": "COPY binary to a discarding client"}
    matrix_mb = rows * columns * 8 / 2**20
    peak_mb = median([read["peak_added_bytes"] for read in pgml]) / 2**20
    details = {"relation": relation, "rows": rows, "columns": columns, "dsn": dsn, "reads": reads,
               "rows_per_second": rate, "float64_matrix_mb": matrix_mb, "peak_added_mb": peak_mb}
    what = f"read_training_data, {rows} rows x {columns} floats"
    return [
        Measurement("c", what, "rows/s", rate["pgml"], names[fastest], rate[fastest], Target(">=", 0.5), details),
        Measurement("c", what, "rows/s", rate["pgml"], names[other], rate[other], None, details),
        Measurement("c", "read_training_data peak memory added", "MB", peak_mb,
                    "the float64 matrix (rows x cols x 8)", matrix_mb, Target("<=", 3.0), details),
    ]
