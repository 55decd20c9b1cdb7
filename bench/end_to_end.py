"""Scenario d: end-to-end training of a linear regression on the 20-feature view.

``SELECT pgml.train(...)`` on a new connection (so it pays for importing scikit-learn in the
backend, as a psql session would) against bench/standalone_train.py in a new process (which pays
for starting Python and its imports), repeated and interleaved; both read through the wrapper's
dsn. Both must reach the same r2, or they did not do the same work.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List

from fixtures import END_TO_END_MODEL, Fixtures
from harness import Measurement, Sizes, Target, connect, median, rotated, server_dsn

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standalone_train.py")


def _train_in_database(relation: str) -> Dict[str, Any]:
    started = time.perf_counter()
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("SELECT pgml.train(%s, 'y', name => %s)", (relation, END_TO_END_MODEL))
        model_id = cur.fetchone()[0]
    conn.close()
    return {"seconds": time.perf_counter() - started, "model_id": model_id}


def _train_standalone(dsn: str, relation: str) -> Dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, SCRIPT, dsn, relation, "y"], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"standalone_train.py failed:\n{done.stderr.strip()}")
    return dict(json.loads(done.stdout), seconds=seconds)


def run(fixtures: Fixtures, sizes: Sizes) -> List[Measurement]:
    """pgml.train against the standalone script, on the 20-feature view."""
    relation = fixtures.wide_view()
    conn = connect()
    dsn = server_dsn(conn)
    runs: Dict[str, List[Dict[str, Any]]] = {"pgml": [], "standalone": []}
    for r in range(sizes.repeats):
        for form in rotated(list(runs), r):
            runs[form].append(_train_in_database(relation) if form == "pgml" else _train_standalone(dsn, relation))

    with conn.cursor() as cur:
        cur.execute("SELECT id, (metrics ->> 'r2')::float8, extract(epoch FROM duration)::float8, "
                    "train_rows + test_rows, peak_memory FROM pgml.model_versions WHERE name = %s", (END_TO_END_MODEL,))
        stored = {row[0]: row[1:] for row in cur.fetchall()}
    conn.close()
    for run_ in runs["pgml"]:
        run_["r2"], run_["fit_seconds_reported"], run_["rows"], run_["peak_memory"] = stored[run_["model_id"]]
    ours, theirs = runs["pgml"][0]["r2"], runs["standalone"][0]["metrics"]["r2"]
    if not math.isclose(ours, theirs, rel_tol=1e-9):
        raise AssertionError(f"pgml.train reached r2 {ours}, the standalone script {theirs}: not the same work")

    rows = runs["standalone"][0]["rows"]
    details = {"relation": relation, "rows": rows, "dsn": dsn, "runs": runs}
    matrix_mb = rows * 21 * 8 / 2**20  # the 20 features and y, as float64
    return [Measurement("d", f"pgml.train linear, {rows} rows x 20 features", "s",
                        median([r["seconds"] for r in runs["pgml"]]), "standalone script (COPY csv + numpy + fit)",
                        median([r["seconds"] for r in runs["standalone"]]), Target("<=", 1.2), details),
            Measurement("d", f"pgml.train linear, {rows} rows x 20 features, peak memory of its worker", "MB",
                        median([r["peak_memory"] / 2**20 for r in runs["pgml"]]), "the float64 feature matrix",
                        matrix_mb, Target("<=", 2.5), details)]
