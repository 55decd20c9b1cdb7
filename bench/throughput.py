"""Scenario e: throughput with 1, 2, 4 and 8 clients predicting at once, through pgbench.

For each client count, pgbench runs a script calling the predictions query for the linear model, one
calling SELECT pgml.score() for it, one calling SELECT 1, and one sending the predictions query to a
Multicorn table that answers with a constant (bench/floor_fdw.py: what any Multicorn scan costs), in
rotating order. A new connection's first prediction loads the model (and today imports
scikit-learn), so tps is counted from the per-transaction log, from the moment every client has
finished its first transaction to the last transaction of the run.
"""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import tempfile
from typing import Dict, List, Tuple

from fixtures import Fixtures
from harness import DATABASE, PORT, Measurement, Sizes, Target, median, rotated

CLIENTS = (1, 2, 4, 8)
PREDICTING = ("predictions", "score")  # the forms whose clients' first transaction loads a model
# pgml.score's tps at least 0.8x the constant Multicorn table's, at these client counts.
SCORE_TARGET_CLIENTS = (2, 4, 8)


def _run_seconds(form: str, clients: int, measured: int) -> int:
    """How long a pgbench run lasts: the seconds to measure plus a warm-up allowance. SELECT 1 needs
    none, so it gets a second; the prediction forms a second more per 8 clients, as each
    connection's first prediction costs it about 60 ms of CPU (starting Python, loading the model)
    and there may be 8 clients on 2 cores."""
    return measured + 1 + (math.ceil(clients / 8) if form in PREDICTING else 0)


def _pgbench(script: str, clients: int, seconds: int, min_window: float) -> Dict[str, float]:
    """tps and mean latency (ms) of one pgbench run, counted once every client is warm, over at
    least min_window seconds."""
    binary = shutil.which("pgbench")
    if binary is None:
        raise RuntimeError("pgbench not found (it comes with the postgresql-client-13 package)")
    with tempfile.TemporaryDirectory() as work:
        with open(os.path.join(work, "script.sql"), "w") as f:
            f.write(script + "\n")
        done = subprocess.run(
            [binary, "-n", "-f", "script.sql", "-c", str(clients), "-j", str(clients), "-T", str(seconds),
             "-l", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", DATABASE],
            cwd=work, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({script!r}, {clients} clients):\n{done.stderr.strip()}")
        log = _read_log(work)
    first: Dict[int, float] = {}
    for client, finished, _ in log:
        first[client] = min(first.get(client, finished), finished)
    if len(first) != clients:
        raise RuntimeError(f"only {len(first)} of {clients} pgbench clients completed a transaction")
    start = min(finished - latency / 1e6 for _, finished, latency in log)
    warm, end = max(first.values()), max(finished for _, finished, _ in log)
    counted = [latency for _, finished, latency in log if finished > warm]
    if not counted or end - warm < min_window:
        raise RuntimeError(f"pgbench clients took {warm - start:.1f} s of the {seconds} s run to warm up, "
                           f"leaving too little to measure")
    return {"tps": len(counted) / (end - warm), "latency_ms": sum(counted) / len(counted) / 1000.0,
            "warmup_seconds": warm - start, "measured_seconds": end - warm, "transactions": len(counted)}


def _read_log(directory: str) -> List[Tuple[int, float, int]]:
    """(client, completion time in seconds, latency in microseconds) of every transaction, from
    pgbench's per-transaction logs: client_id transaction_no time script_no time_epoch time_us."""
    entries = []
    for path in glob.glob(os.path.join(directory, "pgbench_log.*")):
        with open(path) as f:
            for line in f:
                fields = line.split()
                entries.append((int(fields[0]), int(fields[4]) + int(fields[5]) / 1e6, int(fields[2])))
    return entries


def run(fixtures: Fixtures, sizes: Sizes) -> List[Measurement]:
    """tps of the predictions query and of pgml.score() against SELECT 1 and the constant Multicorn table
    at each client count."""
    name = fixtures.model("linear")
    features = json.dumps(fixtures.feature_rows(1)[0]).replace("'", "''")
    query = f"SELECT prediction FROM pgml.predictions WHERE model = '{name}' AND features = '{features}';"
    scripts = {
        "predictions": query,
        "score": f"SELECT pgml.score('{name}', '{features}'::jsonb);",
        "select1": "SELECT 1;",
        "floor": query.replace("pgml.predictions", fixtures.floor_table()),
    }
    out: List[Measurement] = []
    for clients in CLIENTS:
        runs: Dict[str, List[Dict[str, float]]] = {form: [] for form in scripts}
        for r in range(sizes.pgbench_rounds):
            for form in rotated(list(scripts), r):
                seconds = _run_seconds(form, clients, sizes.pgbench_seconds)
                runs[form].append(_pgbench(scripts[form], clients, seconds, sizes.pgbench_seconds / 2))
        tps = {form: median([run_["tps"] for run_ in results]) for form, results in runs.items()}
        details = {"clients": clients, "runs": runs}
        label = f"{clients} client{'s' if clients > 1 else ''}"
        out.append(Measurement("e", f"predictions query, {label}", "tps", tps["predictions"],
                               f"SELECT 1, {label}", tps["select1"], None, details))
        out.append(Measurement("e", f"predictions query, {label}", "tps", tps["predictions"],
                               f"the same query on a constant Multicorn table, {label}", tps["floor"], None, details))
        out.append(Measurement("e", f"SELECT pgml.score(), {label}", "tps", tps["score"],
                               f"SELECT 1, {label}", tps["select1"], None, details))
        out.append(Measurement("e", f"SELECT pgml.score(), {label}", "tps", tps["score"],
                               f"the predictions query on a constant Multicorn table, {label}", tps["floor"],
                               Target(">=", 0.8) if clients in SCORE_TARGET_CLIENTS else None, details))
    return out
