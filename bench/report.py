"""What a run prints and writes: one line per measurement, bench/results.json and bench/RESULTS.md."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
from typing import Any, Dict, List

import numpy as np
import psycopg2
import psycopg2.extensions
import sklearn

from fixtures import SERVED_KINDS, SMALL_ROWS
from harness import Measurement, Sizes

HERE = os.path.dirname(os.path.abspath(__file__))
TITLES = {
    "a": "One prediction's latency",
    "b": "Batch scoring",
    "c": "Training data load",
    "d": "End-to-end training",
    "e": "Throughput with concurrent clients",
    "f": "Cold start and backend memory",
    "g": "Per-row SQL forms",
}


def _amount(value: float, unit: str) -> str:
    if unit in ("rows/s", "tps"):
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:.2f} {unit}"


def _ratio(m: Measurement) -> str:
    return f"{m.ratio:.3g}x"


def line(m: Measurement) -> str:
    """One console line: ours, the baseline, the ratio, and the target with its verdict."""
    verdict = f"   target {m.target}: {m.status}" if m.target else ""
    return (f"  {m.name:<60} {_amount(m.value, m.unit):>18}   vs {m.baseline_name} "
            f"{_amount(m.baseline, m.unit)}   = {_ratio(m)}{verdict}")


def machine(conn: "psycopg2.extensions.connection") -> Dict[str, Any]:
    """nproc, memory, CPU model, and the versions that matter."""
    with open("/proc/meminfo") as f:
        mem_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    with conn.cursor() as cur:
        cur.execute("SELECT version()")
        postgres = cur.fetchone()[0]
    return {"nproc": len(os.sched_getaffinity(0)), "memory_gib": round(mem_kb / 2**20, 1), "cpu": cpu,
            "postgresql": postgres, "python": platform.python_version(), "numpy": np.__version__,
            "scikit_learn": sklearn.__version__, "psycopg2": psycopg2.__version__.split()[0]}


def setup(sizes: Sizes, scenarios: List[str]) -> List[str]:
    """How each of these scenarios measures, at the sizes of the run (for RESULTS.md)."""
    lines = [
        f"- a: models trained by pgml.train on {sizes.train_rows:,} rows x 10 float features: linear regression "
        "and a random forest of 100 trees (scikit-learn defaults). One psycopg2 connection over TCP loopback, "
        f"warmed up, then {sizes.latency_rounds:,} rounds, each running every form once for the same row "
        "(200 rows cycled) in rotating order: the predictions query, SELECT pgml.score(), prepared EXECUTEs of both, "
        "SELECT 1, and the floor of any Multicorn scan: the predictions query on a foreign table "
        "with pgml.predictions' columns whose wrapper (bench/floor_fdw.py) returns a constant. scikit-learn "
        "predict and Model.predict_row run in the benchmark's process on the model loaded from "
        "pgml.model_estimators.",
        f"- b: {sizes.score_rows:,} rows scored in one query and fetched by the client; scikit-learn predicts the "
        f"encoded matrix in-process; LATERAL over {sizes.lateral_rows:,} rows (features by jsonb_build_object). "
        f"Median of {sizes.repeats} interleaved repetitions.",
        f"- c: {sizes.load_rows:,} rows x (20 float features + y) from a view, each read in a new process through "
        "the wrapper's own dsn (Unix socket): by read_training_data as the extension owner (the dsn's user: a "
        "direct COPY) and as another role (through a SECURITY DEFINER function it owns); COPY baselines discard "
        "the data as it arrives. Peak memory: VmHWM after the read minus before it. Median of "
        f"{sizes.repeats} interleaved repetitions.",
        f"- d: pgml.train(view, 'y') on a new connection against bench/standalone_train.py in a new process, "
        f"same view, same split, same estimator, same metrics (r2 checked equal). Median of {sizes.repeats} "
        "interleaved repetitions.",
        "- e: pgbench -n -c N -j N, simple protocol, TCP loopback; tps counted from the per-transaction log once "
        f"every client has finished its first transaction, over about {sizes.pgbench_seconds} s; the predictions "
        "query, SELECT pgml.score(), SELECT 1 and the query on the constant Multicorn table of a, in rotating "
        f"order; median over {sizes.pgbench_rounds} round(s).",
        f"- f: ten models trained by pgml.train on the same {SMALL_ROWS:,} rows at every size (10 float features): "
        f"{', '.join(SERVED_KINDS)}. Cold start: the first query of a new connection, timed from the client once "
        "connected: SELECT 1, and the predictions query of the linear model and of the forest (100 trees), "
        f"{sizes.cold_rounds} rounds in rotating order, median. Memory: VmRSS (/proc/PID/status) of a new "
        "connection's backend after one prediction from each of the ten models against one after SELECT 1, "
        f"median of {sizes.repeats} interleaved repetitions. Whether a backend loaded scikit-learn or SciPy "
        "(their shared objects in /proc/PID/maps) is in results.json, per kind alone on a fresh backend.",
        f"- g: the linear model of a scores the first {sizes.per_row_rows:,} rows of the table of b one row at a "
        "time, features by jsonb_build_object, fetched by the client, jit as configured: SELECT id, pgml.score(...) "
        "and SELECT ... CROSS JOIN LATERAL pgml.prediction(...); the same forms calling plpgsql functions that "
        "select from the constant Multicorn table of a; SELECT id, the model's formula as a SQL expression. Median "
        f"of {sizes.repeats} interleaved repetitions; every row checked against scikit-learn; whether each form "
        "JIT-compiled (EXPLAIN (ANALYZE, FORMAT JSON)) and the backend's VmRSS before and after each run are in "
        "results.json. The targets are fixed figures not measured in the run: 3x the 6,100 rows/s before this "
        "work, and 1.5x PostgresML 0.5's per-row pgml.predict (9,400 rows/s, measured earlier on this machine).",
    ]
    return [text for text in lines if text[2] in scenarios]


def write(command: str, sizes: Sizes, scenarios: List[str], info: Dict[str, Any],
          measurements: List[Measurement], errors: Dict[str, str]) -> None:
    """bench/results.json (everything, with each measurement's details) and bench/RESULTS.md."""
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump({"date": date, "command": command, "sizes": dataclasses.asdict(sizes), "machine": info,
                   "measurements": [m.to_json() for m in measurements], "errors": errors}, f, indent=2)
        f.write("\n")

    md = [
        "# pgml_fdw benchmark results",
        "",
        f"- Date: {date}",
        f"- Command: `{command}`, inside the local server's root (`make bench`), "
        + ("quick sizes" if sizes.quick else "full sizes"),
        f"- Machine: {info['nproc']} CPUs (nproc), {info['memory_gib']} GiB memory, {info['cpu']}",
        f"- {info['postgresql']}",
        f"- Python {info['python']}, numpy {info['numpy']}, scikit-learn {info['scikit_learn']}, "
        f"psycopg2 {info['psycopg2']}",
        "",
        "The machine is shared and noisy, so every figure is a ratio against a baseline measured side by "
        "side in the same run (interleaved where possible). Ratio = ours / baseline. "
        "Details of every measurement (all percentiles, every repetition) are in results.json.",
        "",
        "## Setup",
        "",
        *setup(sizes, scenarios),
        "",
        "## Results",
        "",
        "| | Measurement | Ours | Baseline | Ratio | Target |",
        "|---|---|---:|---|---:|---|",
    ]
    for m in measurements:
        target = f"{m.target} **{m.status}**" if m.target else ""
        md.append(f"| {m.scenario} | {m.name} | {_amount(m.value, m.unit)} | {m.baseline_name}: "
                  f"{_amount(m.baseline, m.unit)} | {_ratio(m)} | {target} |")
    if errors:
        md += ["", "## Scenarios that failed", ""]
        md += [f"- {s} ({TITLES[s]}): `{e.splitlines()[0] if e else ''}`" for s, e in sorted(errors.items())]
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("\n".join(md) + "\n")
