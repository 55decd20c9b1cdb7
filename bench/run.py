"""The pgml_fdw benchmark suite.

    python3 bench/run.py            every scenario
    python3 bench/run.py a c        scenarios a and c
    PGML_BENCH_QUICK=1 python3 bench/run.py    about a tenth of the sizes (about a minute in all)

Run it inside the local server's root: ``make bench BENCH_ARGS="a c"``, or
``local/server.sh run python3 bench/run.py a c``. Scenarios:

  a  one prediction's latency (p50, p99) against SELECT 1 and in-process scikit-learn
  b  batch scoring in rows per second against in-process scikit-learn
  c  training data load in rows per second and peak memory against plain COPY
  d  end-to-end training against a standalone script
  e  throughput with 1, 2, 4 and 8 clients against SELECT 1 (pgbench)
  f  a new connection's first prediction against its first SELECT 1, and a backend's memory after
     predicting from ten models against one that ran SELECT 1
  g  per-row SQL forms (pgml.score() in a select list, LATERAL pgml.prediction()) in rows per second
     against the same forms over a constant Multicorn table and the model's formula in plain SQL

Every figure is ours against a baseline measured side by side in the same run, with the ratio and,
where the project set one, the target. Results go to bench/results.json and bench/RESULTS.md. The
benchmark's tables live in the schema bench and its models are named bench_*; both are dropped at
the start and at the end of a run.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Dict, List

import batch_scoring
import cold_start
import data_load
import end_to_end
import latency
import per_row
import report
import throughput
from fixtures import Fixtures
from harness import Measurement, Sizes, connect

SCENARIOS: Dict[str, Callable[[Fixtures, Sizes], List[Measurement]]] = {
    "a": latency.run,
    "b": batch_scoring.run,
    "c": data_load.run,
    "d": end_to_end.run,
    "e": throughput.run,
    "f": cold_start.run,
    "g": per_row.run,
}


def main(argv: List[str]) -> int:
    """Runs the chosen scenarios and writes the results; exit status 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"letters {', '.join(SCENARIOS)} (default: all)")
    chosen = sorted(set(parser.parse_args(argv).scenarios or SCENARIOS))
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose among {', '.join(SCENARIOS)}")
    sizes = Sizes.from_env()
    quick = "PGML_BENCH_QUICK=1 " if sizes.quick else ""
    command = f"{quick}python3 bench/run.py {' '.join(argv)}".rstrip()

    conn = connect()
    info = report.machine(conn)
    fixtures = Fixtures(conn, sizes)
    measurements: List[Measurement] = []
    errors: Dict[str, str] = {}
    fixtures.reset()
    try:
        for letter in chosen:
            print(f"{letter}. {report.TITLES[letter]}", flush=True)
            try:
                found = SCENARIOS[letter](fixtures, sizes)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
                errors[letter] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                print(f"  FAILED: {type(exc).__name__}: {exc}", flush=True)
                continue
            for m in found:
                print(report.line(m), flush=True)
            measurements += found
    finally:
        fixtures.cleanup()
        conn.close()
    report.write(command, sizes, chosen, info, measurements, errors)
    print(f"wrote {os.path.join('bench', 'results.json')} and {os.path.join('bench', 'RESULTS.md')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
