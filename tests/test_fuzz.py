"""The fuzzer (tests/fuzz.py) in the suite: a few thousand seeded random and mutated cases, and not
one of them may be a bug (XX000, "This is a bug", "failed unexpectedly", an unexpected "Error in
python") or crash a backend. ``make fuzz`` runs a longer campaign."""
from __future__ import annotations

from typing import Iterator

import psycopg2
import pytest

import fuzz
from conftest import ADMIN, DATABASE, MAINTENANCE, Session, dsn, login_clause

# The suite's server (the local one, or PGML_TEST_DSN's), not the fuzzer's own default.
fuzz.use_target(dsn, login_clause(), ADMIN, MAINTENANCE)

CASES = 3000
SEED = 20240601
SECONDS = 80  # the campaign stops starting cases after this long, so a slow machine still finishes


@pytest.fixture
def limited_role_dropped(database: None) -> Iterator[None]:
    """The fuzzer's login role is cluster-wide: dropped afterwards, with its grants in this database."""
    yield
    session = Session()
    role = fuzz.limited_role_name(DATABASE)
    try:
        session.run(f'DROP OWNED BY "{role}"')
        session.run(f'DROP ROLE "{role}"')
    except psycopg2.Error:
        pass  # still in use or already gone: the next run's setup reuses it
    session.close()


def test_fuzz_finds_no_bug_and_no_crash(limited_role_dropped: None) -> None:
    report = fuzz.campaign(DATABASE, CASES, SEED, seconds=SECONDS)
    print(report.summary())
    assert report.cases >= 500, f"only {report.cases} cases ran in {SECONDS} s"
    assert report.counts["ok"] > 0 and report.counts["clear error"] > 0
    failures = report.failures  # not the report itself: its repr would swamp the message
    assert failures == 0, (
        f"{report.counts['bug']} bug(s) and {report.counts['crash']} crash(es) in {report.cases} cases "
        f"(seed {SEED}):\n\n{report.inputs()}")
