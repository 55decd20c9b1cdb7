#!/usr/bin/env python3
"""A seeded fuzzer for pgml_fdw's SQL surface: bad input must give a clear error, never a bug or a crash.

It sets up a few small tables, a limited login role and a few models, then runs random and mutated
cases (features, model references, training requests, query shapes, EXPLAIN, COPY), each in
autocommit on one long-lived connection per role, and classifies every outcome:

``ok``           the statement(s) ran;
``clear error``  a PostgreSQL error with a proper SQLSTATE (not XX000) that is not a wrapper bug;
``bug``          XX000, "This is a bug", "pgml_fdw failed unexpectedly", "Error in python" (other than
                 the designed EXPLAIN refusal, PgmlCannotPlanThisQuery), or a step that must fail
                 by design and did not;
``crash``        the connection died (a backend crash restarts every session).

    python3 tests/fuzz.py --cases 20000 --seed 1 [--seconds 600]   # makes and drops database pgml_fuzz
    python3 tests/fuzz.py --seed 1 --replay 1234                     # one case, printed in full

Run it inside the local server's root (``local/server.sh run ...`` or ``make fuzz``). The same code
runs a shorter campaign in the pytest suite (tests/test_fuzz.py). A case's input depends only on
the seed and its index, so ``--replay`` reproduces it (on a fresh setup).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import psycopg2
import psycopg2.extensions
import psycopg2.extras

HOST = "127.0.0.1"
PORT = int(os.environ.get("PGML_PORT", "5433"))
SCRIPT_DATABASE = "pgml_fuzz"
STATEMENT_TIMEOUT = "20s"
OUTCOMES = ("ok", "clear error", "bug", "crash")
EXPLAIN_REFUSAL = "PgmlCannotPlanThisQuery"
BUG_MARKERS = ("This is a bug", "failed unexpectedly", "Error in python")
SHOWN = 20  # distinct bugs and crashes printed

# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One statement of a case. ``copy_in`` feeds COPY ... FROM STDIN; ``copy_out`` drains COPY ...
    TO STDOUT; ``must_fail`` marks a step that is wrong by design if it succeeds, ``must_succeed`` one
    that is wrong if it fails; after a ``tolerate`` step's clear error the case goes on."""

    sql: str
    params: Optional[Tuple[Any, ...]] = None
    copy_in: Optional[Union[str, bytes]] = None
    copy_out: bool = False
    must_fail: Optional[str] = None
    must_succeed: Optional[str] = None
    tolerate: bool = False


@dataclass
class Case:
    """A fuzz case: its steps run in order on the role's connection; cleanup always runs after."""

    index: int
    family: str
    role: str  # "postgres" or "limited"
    steps: List[Step]
    cleanup: List[str] = field(default_factory=list)

    def describe(self, limit: Optional[int] = 300) -> str:
        """The input, readable: each step's SQL and parameters, long values shortened."""
        lines = [f"case {self.index} [{self.family}] as {self.role}:"]
        for step in self.steps:
            lines.append("  " + _short(step.sql, limit))
            if step.params is not None:
                lines.append("    params: (" + ", ".join(_short(repr(p), limit) for p in step.params) + ")")
            if step.copy_in is not None:
                lines.append("    copy data: " + _short(repr(step.copy_in), limit))
        return "\n".join(lines)


def _short(text: str, limit: Optional[int]) -> str:
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} chars)"


@dataclass
class Outcome:
    kind: str
    message: str = ""
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------
# Setup: tables, a limited role, models
# --------------------------------------------------------------------------------------------------

# Categories of the text features, so that valid features can use seen and unseen values.
CATEGORIES: Dict[str, List[str]] = {
    "t": ["red", "green", "blue", "ünï", ""],
    "color": ["red", "green", "blue"],
    "mood": ["sad", "ok", "happy"],
    "code": ["c1", "c2", "c300"],
    "ключ": ["а", "б"],
}

SETUP_SQL = r"""
DROP SCHEMA IF EXISTS fz_schema CASCADE;
DROP TABLE IF EXISTS fz_num, fz_mixed, fz_class, fz_boolcls, fz_nan, fz_empty, fz_card, fz_json,
    "Fz Quoted", fz_secret, fz_score, fz_unicode, fz_nulls CASCADE;
DROP TYPE IF EXISTS fz_mood CASCADE;
CREATE TYPE fz_mood AS ENUM ('sad', 'ok', 'happy');
CREATE SCHEMA fz_schema;

CREATE TABLE fz_num AS
SELECT CASE WHEN g % 11 = 0 THEN NULL ELSE round((sin(g) * 10)::numeric, 3)::float8 END AS x1,
       (g % 7)::int AS x2, (g * 0.25)::numeric AS x3,
       round((3 * coalesce(sin(g) * 10, 0) + (g % 7) - g * 0.1)::numeric, 4)::float8 AS y
FROM generate_series(1, 60) g;

CREATE TABLE fz_mixed AS
SELECT CASE WHEN g % 9 = 0 THEN NULL ELSE cos(g) * 5 END AS n,
       CASE WHEN g % 13 = 0 THEN NULL ELSE (ARRAY['red', 'green', 'blue', 'ünï', ''])[1 + g % 5] END AS t,
       CASE WHEN g % 8 = 0 THEN NULL ELSE g % 2 = 0 END AS b,
       make_interval(days => g % 30, hours => g % 5) AS iv,
       timestamp '2020-01-01' + g * interval '1 day 3 hours' AS ts,
       timestamptz '2021-06-01 00:00+00' + g * interval '5 hours' AS tz,
       date '2019-01-01' + g AS d,
       time '00:00' + g * interval '17 minutes' AS tm,
       (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::fz_mood AS mood,
       (g * 1.5)::numeric::money AS cash,
       (g % 4) * 2.5 + cos(g) * 5 + CASE WHEN g % 2 = 0 THEN 1 ELSE 0 END AS y
FROM generate_series(1, 60) g;

CREATE TABLE fz_class AS
SELECT sin(g) * 3 + (g % 3) * 4 AS x1, cos(g) * 2 AS x2,
       (ARRAY['red', 'green', 'blue'])[1 + g % 3] AS color,
       (ARRAY['alpha', 'beta', 'gamma'])[1 + (g + (g / 7)) % 3] AS label
FROM generate_series(1, 60) g;

CREATE TABLE fz_boolcls AS
SELECT g * 0.5 + sin(g) AS x, (g % 2 = 0) <> (g % 9 = 0) AS flag FROM generate_series(1, 40) g;

CREATE TABLE fz_nan AS
SELECT g::float8 AS x,
       CASE g % 10 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN 'Infinity'::float8 WHEN 2 THEN '-Infinity'::float8
                   ELSE g * 2.0 END AS y
FROM generate_series(1, 40) g;

CREATE TABLE fz_empty (x float8, y float8);

CREATE TABLE fz_nulls AS SELECT NULL::float8 AS x, g::float8 AS y FROM generate_series(1, 20) g;

CREATE TABLE fz_card AS
SELECT 'c' || g AS code, sin(g) AS x, g % 17 + cos(g) AS y FROM generate_series(1, 300) g;

CREATE TABLE fz_json AS
SELECT g AS id, jsonb_build_object('a', g, 'b', ARRAY[g, g + 1]) AS j, g::float8 AS x, g * 2.0 AS y
FROM generate_series(1, 30) g;

CREATE TABLE "Fz Quoted" AS SELECT g::float8 AS "X Col", g * 3.0 + sin(g) AS "Y Col" FROM generate_series(1, 40) g;

CREATE TABLE fz_secret AS SELECT g::float8 AS x, g * 2.0 AS y FROM generate_series(1, 40) g;

CREATE TABLE fz_unicode AS
SELECT g * 0.1 AS "größe", (ARRAY['а', 'б'])[1 + g % 2] AS "ключ", g * 0.3 + sin(g) AS "ü"
FROM generate_series(1, 40) g;

CREATE TABLE fz_schema.t AS SELECT * FROM fz_num;

CREATE VIEW fz_view AS SELECT n, t, b, iv, y, n * 2 AS n2 FROM fz_mixed;

-- Every feature of every model above, for scoring whole relations and LATERAL joins; k holds model
-- names (and a few that are not) for per-row model references.
CREATE TABLE fz_score AS
SELECT g AS id,
       (ARRAY['fz_lin', 'fz_forest', 'fz_cls', 'nope', NULL, 'fz_lin_1'])[1 + g % 6] AS k,
       CASE WHEN g % 5 = 0 THEN NULL ELSE sin(g) * 10 END AS x1, (g % 7)::int AS x2, (g * 0.25)::numeric AS x3,
       cos(g) * 5 AS n, (ARRAY['red', 'green', 'blue', 'mauve', NULL])[1 + g % 5] AS t,
       CASE WHEN g % 4 = 0 THEN NULL ELSE g % 2 = 0 END AS b,
       make_interval(days => g % 30) AS iv, timestamp '2020-01-01' + g * interval '1 day' AS ts,
       timestamptz '2021-06-01 00:00+00' + g * interval '5 hours' AS tz, date '2019-01-01' + g AS d,
       time '00:00' + g * interval '17 minutes' AS tm, (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::fz_mood AS mood,
       (g * 1.5)::numeric::money AS cash, (ARRAY['red', 'green', 'blue'])[1 + g % 3] AS color,
       g * 0.5 AS x, 'c' || g AS code, jsonb_build_object('x1', g, 'x2', g % 7, 'x3', g) AS j
FROM generate_series(1, 50) g;
"""

# (name, pgml.train arguments): small data and small models, so that setup takes a few seconds.
SETUP_MODELS: List[Tuple[str, str]] = [
    ("fz_lin", "'fz_num', 'y', 'linear'"),
    ("fz_lin", "'fz_num', 'y', 'ridge'"),
    ("fz_forest", "'fz_num', 'y', 'random_forest', hyperparams => '{\"n_estimators\": 5, \"max_depth\": 4}'"),
    ("fz_mixed", "'fz_mixed', 'y', 'ridge'"),
    ("fz_gbt", "'fz_mixed', 'y', 'gradient_boosting_trees', hyperparams => '{\"n_estimators\": 5}'"),
    ("fz_cls", "'fz_class', 'label', 'linear'"),
    ("fz_cls_tree", "'fz_class', 'label', 'decision_tree'"),
    ("fz_cls_svm", "'fz_class', 'label', 'svm'"),
    ("fz_ridgec", "'fz_class', 'label', 'ridge'"),
    ("fz_hgb", "'fz_class', 'label', 'hist_gradient_boosting', hyperparams => '{\"max_iter\": 5}'"),
    ("fz_bool", "'fz_boolcls', 'flag', 'knn'"),
    ("fz_card", "'fz_card', 'y', 'linear', preprocess => '{\"code\": {\"encode\": \"ordinal\"}}'"),
    ("fz_card_hot", "'fz_card', 'y', 'decision_tree'"),
    ("fz_mlp", "'fz_num', 'y', 'mlp', hyperparams => '{\"hidden_layer_sizes\": [4], \"max_iter\": 30}'"),
    ("fz_quoted", "'\"Fz Quoted\"', 'Y Col', 'linear'"),
    ("fz_uni", "'fz_unicode', 'ü', 'linear'"),
    ("fz_view", "'fz_view', 'y', 'bayesian_ridge'"),
]

# Relations a training request may name, with their columns (the first is the usual y_column).
TRAIN_RELATIONS: Dict[str, List[str]] = {
    "fz_num": ["y", "x1", "x2", "x3"],
    "fz_mixed": ["y", "n", "t", "b", "iv", "ts", "tz", "d", "tm", "mood", "cash"],
    "fz_class": ["label", "x1", "x2", "color"],
    "fz_boolcls": ["flag", "x"],
    "fz_nan": ["y", "x"],
    "fz_empty": ["y", "x"],
    "fz_nulls": ["y", "x"],
    "fz_card": ["y", "code", "x"],
    "fz_json": ["y", "j", "x", "id"],
    '"Fz Quoted"': ["Y Col", "X Col"],
    "fz_secret": ["y", "x"],
    "fz_unicode": ["ü", "größe", "ключ"],
    "fz_view": ["y", "n", "t", "b", "iv", "n2"],
    "fz_schema.t": ["y", "x1", "x2", "x3"],
    "fz_temp": ["y", "x1", "x2", "x3"],
}
# Relations a valid request trains on: small, with a y_column of their own.
VALID_TRAINING = ["fz_num", "fz_mixed", "fz_class", "fz_boolcls", "fz_card", '"Fz Quoted"', "fz_unicode", "fz_view",
                  "fz_schema.t", "fz_num", "fz_class"]
TRAINING_OPTIONS = ["relation", "y_column", "algorithm", "task", "name", "hyperparams", "hyperparams", "search",
                    "search", "preprocess", "preprocess", "test_size", "test_sampling", "deploy"]
LIMITED_TABLES = ("fz_num", "fz_class", "fz_mixed", "fz_score", "fz_card", '"Fz Quoted"', "fz_view", "fz_json",
                  "fz_boolcls", "fz_empty")


def _local_dsn(database: str, user: Optional[str]) -> str:
    return psycopg2.extensions.make_dsn(host=HOST, port=PORT, dbname=database, user=user or "postgres")


# Where the fuzzer connects: the local server, unless use_target() says otherwise (tests/test_fuzz.py
# hands it the test suite's server, which may be a PGML_TEST_DSN one). "postgres" below names the
# superuser and the maintenance database, whatever they are called there.
_target: Dict[str, Any] = {"dsn": _local_dsn, "login": "LOGIN", "admin": "postgres", "maintenance": "postgres"}


def use_target(dsn: Callable[[str, Optional[str]], str], login: str, admin: str, maintenance: str) -> None:
    """Connect with ``dsn(database, user)``, superuser ``admin``, maintenance database
    ``maintenance``; ``login`` is what CREATE ROLE needs for the limited role to log in."""
    _target.update(dsn=dsn, login=login, admin=admin, maintenance=maintenance)


def connect(database: str, user: str = "postgres") -> psycopg2.extensions.connection:
    if database == "postgres":
        database = _target["maintenance"]
    conn = psycopg2.connect(_target["dsn"](database, _target["admin"] if user == "postgres" else user),
                            options=f"-c statement_timeout={STATEMENT_TIMEOUT}")
    conn.autocommit = True
    # Results stay text: features echoed back may be nested deeper than Python's json can parse.
    psycopg2.extras.register_default_json(conn, loads=lambda text: text)
    psycopg2.extras.register_default_jsonb(conn, loads=lambda text: text)
    return conn


def limited_role_name(database: str) -> str:
    # Roles are cluster-wide: one per database, so that two campaigns do not share one.
    return f"{database}_limited"[:63]


def setup(database: str) -> Dict[str, Any]:
    """Tables, the limited role and the models the cases use; returns what the generators need
    to know about them."""
    role = limited_role_name(database)
    conn = connect(database)
    with conn.cursor() as cur:
        cur.execute(SETUP_SQL)
        cur.execute("DELETE FROM pgml.model_versions WHERE name LIKE 'fz%'")
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        if cur.fetchone():
            cur.execute(f'DROP OWNED BY "{role}"')
        else:
            cur.execute(f'CREATE ROLE "{role}" {_target["login"]}')
        cur.execute(f'GRANT SELECT ON pgml.predictions TO "{role}"')
        cur.execute(f'GRANT INSERT, SELECT (id) ON pgml.training_runs TO "{role}"')
        cur.execute(f'GRANT USAGE ON SCHEMA fz_schema TO "{role}"')
        for table in LIMITED_TABLES:
            cur.execute(f'GRANT SELECT ON {table} TO "{role}"')
        for name, args in SETUP_MODELS:
            cur.execute(f"SELECT pgml.train({args}, name => %s)", (name,))
        cur.execute("SELECT id, name, task, features, classes FROM pgml.model_versions "
                    "WHERE name LIKE 'fz%' ORDER BY name, version")
        models: Dict[str, Dict[str, Any]] = {}
        ids: List[str] = []
        for model_id, name, task, features, classes in cur.fetchall():
            ids.append(model_id)
            models[name] = {"task": task, "features": json.loads(features), "classes": classes, "id": model_id}
        cur.execute("SELECT name, task, hyperparams FROM pgml.algorithms")
        algorithms = {(name, task): json.loads(params) for name, task, params in cur.fetchall()}
    conn.close()
    # One model trained by the limited role, so that a non-owner's versions are scored too.
    limited = connect(database, role)
    with limited.cursor() as cur:
        cur.execute("SELECT pgml.train('fz_num', 'y', 'decision_tree', name => 'fz_by_limited')")
        ids.append(cur.fetchone()[0])
    limited.close()
    models["fz_by_limited"] = dict(models["fz_lin"], id=ids[-1])
    return {"models": models, "ids": ids, "algorithms": algorithms, "role": role}


# --------------------------------------------------------------------------------------------------
# JSON generation: values that json.dumps cannot write (1e400, duplicate keys, deep nesting) are Raw.
# --------------------------------------------------------------------------------------------------


class Raw(str):
    """JSON text written as it is."""


class Obj(list):
    """A JSON object as (key, value) pairs: duplicate keys allowed."""


def to_json(value: Any, ascii_only: bool = False) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Obj):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=ascii_only)}: {to_json(v, ascii_only)}"
                               for k, v in value) + "}"
    if isinstance(value, dict):
        return to_json(Obj(value.items()), ascii_only)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


UNICODE = ["é", "e\u0301", "😀", "ß", "İ", "\u200b", "中文", "ключ", "\u202e", "\ufeff", "ü",
           "\t", "\n", "\\", "\"", "'"]

WEIRD_VALUES: List[Any] = [
    None, True, False, "", " ", "Infinity", "-Infinity", "NaN", "nan", "inf", "1e400", "-1e400", "1e-400",
    "0x10", "1,5", "١٢٣", "½", "3", "3.5", " 3 ", Raw("1e400"), Raw("-1e400"), Raw("1e-400"), Raw("1" + "0" * 400),
    Raw("-0"), Raw("0.00000000000000000000000000000001"), Raw("123456789012345678901234567890.5"),
    10**30, -(10**30), 2**63, 2**64, -(2**63) - 1, 1.7976931348623157e308, 5e-324, -0.0, [], {}, [1], [1, 2],
    {"a": 1}, {"x1": 1}, [[1]], "2 years", "infinity", "-infinity", "epoch", "allballs", "now", "today",
    "24:00:00", "25:00", "P", "PT", "P1Y2M3DT4H5M6S", "9999999-01-01", "294277-01-01", "5874898-01-01",
    "4714-11-24 BC", "1 century", "178000000 years", "-178000000 years", "2147483647 days", "1e30 seconds",
    "2020-02-30", "2020-01-01 25:00", "2020-01-01T00:00:00+99", "1 day ago", "@ 1 minute", "😀", "ünï",
    "t", "f", "yes", "on", "true", "false", "null", Raw('"\\u0000"'), Raw('"\\ud800"'), Raw('"\\udfff\\ud800"'),
    Raw('"\\u0041"'), "\u0001", "a" * 300, "-", ".", "+1", "1_000", "0b1", "1e", "e1",
]


def random_string(rng: random.Random) -> str:
    pieces = [rng.choice(UNICODE + ["a", "x1", "y", "1", " ", "%s", "%", "$1", "'", ";", "--"])
              for _ in range(rng.randint(0, 6))]
    return "".join(pieces)


def random_json(rng: random.Random, depth: int) -> Any:
    """Random JSON nested to at most ``depth``."""
    r = rng.random()
    if depth <= 0 or r < 0.45:
        return rng.choice([rng.uniform(-1e6, 1e6), rng.randint(-100, 100), random_string(rng),
                           rng.choice(WEIRD_VALUES), None, True])
    if r < 0.7:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return Obj((rng.choice(["x1", "x2", "t", "n", "", "a", random_string(rng)]), random_json(rng, depth - 1))
               for _ in range(rng.randint(0, 4)))


def deep_json(rng: random.Random, depth: int, leaf: str = "1") -> Raw:
    if rng.random() < 0.5:
        return Raw("[" * depth + leaf + "]" * depth)
    return Raw('{"x1": ' * depth + leaf + "}" * depth)


INVALID_JSON = [
    "{", "}", "[1,", "[1 2]", "{'x1': 1}", "", " ", "NaN", "Infinity", "-Infinity", "{\"x1\": 1,}", "nul", "tru",
    "\"unterminated", "{\"x1\": 01}", "{\"x1\": .5}", "{\"x1\": +1}", "{\"x1\": 1}{\"x2\": 2}", "[1]]",
    "{\"x1\": \"\\u0000\"}", "\"\\ud800\"", "{\"x1\": \"\\x41\"}", "{x1: 1}", "[1, 2, 3", "\\", "1e", "--1",
    "{\"a\":" * 20, "{\"x1\": 1e400e}", "[\"\\uD83D\"]", "\u00a0[1]", "[1]\u00a0",
]


def value_for(rng: random.Random, feature: Dict[str, Any]) -> Any:
    """A plausible JSON value for a feature of this kind."""
    kind = feature.get("kind")
    if kind == "number":
        return rng.choice([round(rng.uniform(-20, 20), 3), rng.randint(-5, 100), 0, 1.5])
    if kind == "boolean":
        return rng.choice([True, False])
    if kind == "interval":
        return rng.choice(["2 years", "1 day", "00:30:00", "-3 hours", "P1Y2M", 3600, "1 mon 2 days",
                           "3 days 04:05:06"])
    if kind == "date":
        return rng.choice(["2020-01-01", "1999-12-31", "2024-02-29", "2019-03-04"])
    if kind == "timestamp":
        return rng.choice(["2020-01-01 12:00:00", "2021-06-30T23:59:59Z", "2020-01-01 00:00:00+02", "2020-03-04"])
    if kind == "time":
        return rng.choice(["12:34:56", "00:00", "23:59:59.999", "07:00"])
    return rng.choice(CATEGORIES.get(feature.get("name", ""), []) + ["unseen", "", "ÄÖÜ", "a" * 50])


def mutate_value(rng: random.Random, value: Any, features: Sequence[Dict[str, Any]]) -> Any:
    r = rng.random()
    if r < 0.55:
        return rng.choice(WEIRD_VALUES)
    if r < 0.75:
        return value_for(rng, rng.choice(list(features)) if features else {"kind": "number"})
    if r < 0.85:
        return random_json(rng, rng.randint(1, 4))
    if r < 0.95:
        return deep_json(rng, rng.choice([50, 500, 5000]))
    return "x" * rng.choice([1000, 100_000])


def features_value(rng: random.Random, model: Optional[Dict[str, Any]]) -> Tuple[str, Optional[str]]:
    """(shape, JSON text or None for SQL NULL) of a features value for a model (or none)."""
    features: List[Dict[str, Any]] = list(model["features"]) if model else [{"name": "x1", "kind": "number"}]
    names = [f["name"] for f in features]
    ascii_only = rng.random() < 0.3
    r = rng.random()
    if r < 0.22:
        return "object", to_json(Obj((n, value_for(rng, f)) for n, f in zip(names, features)), ascii_only)
    if r < 0.32:
        return "array", to_json([value_for(rng, f) for f in features], ascii_only)
    if r < 0.55:
        pairs = [(n, value_for(rng, f)) for n, f in zip(names, features)]
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(7)
            if op == 0 and pairs:
                pairs.pop(rng.randrange(len(pairs)))
            elif op == 1:
                pairs.append((rng.choice(["extra", "", "X1", names[0].upper(), " " + names[0], random_string(rng),
                                          names[0]]), value_for(rng, rng.choice(features))))
            elif pairs:
                i = rng.randrange(len(pairs))
                pairs[i] = (pairs[i][0], mutate_value(rng, pairs[i][1], features))
        if rng.random() < 0.3:
            return "mutated array", to_json([v for _, v in pairs], ascii_only)
        return "mutated object", to_json(Obj(pairs), ascii_only)
    if r < 0.6:
        n = len(features) + rng.choice([-2, -1, 1, 5, 1000])
        return "array of wrong length", to_json([value_for(rng, rng.choice(features)) for _ in range(max(n, 0))])
    if r < 0.68:
        return "random json", to_json(random_json(rng, rng.randint(0, 6)), ascii_only)
    if r < 0.72:
        depth = rng.choice([100, 1000, 5000, 5000])
        return f"deep {depth}", str(deep_json(rng, depth))
    if r < 0.78:
        return "scalar", to_json(rng.choice(WEIRD_VALUES + [value_for(rng, features[0])]))
    if r < 0.85:
        return "invalid json", rng.choice(INVALID_JSON)
    if r < 0.93:
        text = to_json(Obj((n, value_for(rng, f)) for n, f in zip(names, features)))
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(chars) + 1)
            op = rng.randrange(3)
            if op == 0 and pos < len(chars):
                del chars[pos]
            elif op == 1 and pos < len(chars):
                chars.insert(pos, chars[pos])
            else:
                chars.insert(pos, rng.choice('{}[]",:-+.eE0123456789 nultrfa\\é'))
        return "mutated text", "".join(chars)
    if r < 0.96:
        return "null", rng.choice([None, "null"])
    big = rng.randrange(3)
    if big == 0:
        return "big array", to_json([rng.random() for _ in range(10_000)])
    if big == 1:
        pairs = [(n, value_for(rng, f)) for n, f in zip(names, features)] + [(f"k{i}", i) for i in range(5000)]
        return "many keys", to_json(Obj(pairs))
    return "long string", to_json(Obj((n, "z" * 200_000 if f.get("kind") == "text" else value_for(rng, f))
                                      for n, f in zip(names, features)))


# --------------------------------------------------------------------------------------------------
# Generators, one per case family
# --------------------------------------------------------------------------------------------------

WEIRD_MODEL_REFS: List[Optional[str]] = [
    "", None, "x" * 10_000, "fz_lin' OR '1'='1", "'; DROP TABLE fz_num; --", "模型", "😀", "fz_lin\t", "\\", "%s",
    "_1", "1", "fz_lin_99999999999999999999999", "pgml.models", "NULL", "fz_lin_-1", "fz_lin_1e3", "fz_lin_0",
    "FZ_LIN", " fz_lin", "fz_lin ", "fz_lin_1_1", "fz_lin_01", "fz%", "fz_lin;", "fz_lin\n", "fz_lin_١",
]


class Generator:
    """Builds case ``index`` of a campaign from the seed alone."""

    FAMILIES: List[Tuple[str, int]] = [
        ("features", 22), ("prepared", 9), ("functions", 14), ("lateral", 9), ("batch", 10), ("explain", 9),
        ("copy", 5), ("train", 8), ("train_insert", 3), ("transaction", 2), ("writes", 3), ("deploy", 1),
        ("internal", 3), ("cancel", 1),
    ]

    def __init__(self, seed: int, state: Dict[str, Any]) -> None:
        self.seed = seed
        self.models: Dict[str, Dict[str, Any]] = state["models"]
        self.ids: List[str] = state["ids"]
        self.algorithms: Dict[Tuple[str, str], Dict[str, Any]] = state["algorithms"]
        self.names = sorted(self.models)
        self.by_ref = dict(self.models)
        for model in self.models.values():
            self.by_ref[model["id"]] = model
        families, weights = zip(*self.FAMILIES)
        self.families = list(families)
        self.weights = list(weights)

    def case(self, index: int) -> Case:
        rng = random.Random(self.seed * 1_000_003 + index)
        family = rng.choices(self.families, self.weights)[0]
        role = "limited" if rng.random() < 0.2 else "postgres"
        build: Callable[[random.Random, int, str], Tuple[List[Step], List[str]]] = getattr(self, "_" + family)
        steps, cleanup = build(rng, index, role)
        return Case(index, family, role, steps, cleanup)

    # -- pieces ----------------------------------------------------------------------------------------

    def model_ref(self, rng: random.Random) -> Optional[str]:
        r = rng.random()
        if r < 0.55:
            return rng.choice(self.names)
        if r < 0.75:
            return rng.choice(self.ids)
        if r < 0.85:
            name = rng.choice(self.names)
            return rng.choice([name + "_999", name.upper(), name + "_0", name + "_1_1", name[:-1], name + "x"])
        return rng.choice(WEIRD_MODEL_REFS)

    def model_and_features(self, rng: random.Random) -> Tuple[Optional[str], str, Optional[str]]:
        """A model reference and features (mostly meant for that model)."""
        ref = self.model_ref(rng)
        model = self.by_ref.get(ref or "")
        if model is None or rng.random() < 0.15:
            model = self.models[rng.choice(self.names)]
        shape, text = features_value(rng, model)
        return ref, shape, text

    def select_list(self, rng: random.Random) -> str:
        return rng.choice(["*", "prediction", "label", "probabilities", "version",
                           "prediction, label, probabilities, version", "count(*)", "model, features", "key",
                           "relation, key_column", "prediction + 1", "probabilities -> 'alpha'", "label || 'x'"])

    def extra_conditions(self, rng: random.Random) -> str:
        return rng.choice(["", "", "", " AND prediction IS NOT NULL", " AND version > 0", " AND label = 'alpha'",
                           " AND probabilities ? 'beta'", " AND prediction > 1e300", " AND key IS NULL",
                           " AND relation IS NULL", " AND model <> ''"])

    def tail(self, rng: random.Random) -> str:
        return rng.choice(["", "", "", " LIMIT 1", " LIMIT 0", " ORDER BY 1", " OFFSET 1", " FOR UPDATE"])

    def source(self, rng: random.Random) -> str:
        """A few rows of fz_score (or fz_json, for a jsonb column), as a FROM item named s."""
        limit = rng.choice([1, 3, 10, 50])
        if rng.random() < 0.05:
            return f"(SELECT * FROM fz_json ORDER BY x LIMIT {limit}) s"
        return f"(SELECT * FROM fz_score ORDER BY id LIMIT {limit}) s"

    def row_expression(self, rng: random.Random, model: Dict[str, Any]) -> Tuple[str, List[Any]]:
        """Features built from the row s: (SQL expression, its parameters)."""
        names = [f["name"] for f in model["features"]]
        columns = ["x1", "x2", "x3", "n", "t", "b", "iv", "ts", "tz", "d", "tm", "mood", "cash", "color", "x", "code",
                   "id", "k", "j"]
        r = rng.random()
        if r < 0.4:
            pairs = []
            for name in names:
                if rng.random() < 0.1:
                    continue
                column = name if name in columns and rng.random() < 0.85 else rng.choice(columns)
                key = name if rng.random() < 0.9 else rng.choice(["extra", name.upper(), ""])
                pairs.append(f"'{key}', s.{column}")
            return f"jsonb_build_object({', '.join(pairs)})", []
        if r < 0.5:
            return "to_jsonb(s)", []
        if r < 0.6:
            cols = [n if n in columns else "x1" for n in names]
            if rng.random() < 0.3:
                cols = cols[:-1] or ["x1", "x2"]
            return f"jsonb_build_array({', '.join('s.' + c for c in cols)})", []
        if r < 0.7:
            cols = [n if n in columns else "x1" for n in names]
            return f"ROW({', '.join('s.' + c for c in cols)})", []
        if r < 0.78:
            return f"s.{rng.choice(columns)}", []
        if r < 0.85:
            return rng.choice(["NULL::jsonb", "'{}'::jsonb", "'[]'::jsonb", "'null'::jsonb", "s.j",
                               "(SELECT j FROM fz_json LIMIT 1)"]), []
        _, text = features_value(rng, model)
        return "%s::jsonb", [text]

    def model_sql(self, rng: random.Random) -> Tuple[str, List[Any]]:
        """The model condition's right-hand side for a per-row form: a parameter, or s.k."""
        if rng.random() < 0.1:
            return "s.k", []
        return "%s", [self.model_ref(rng)]

    # -- families ----------------------------------------------------------------------------------

    def _features(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        ref, _, text = self.model_and_features(rng)
        model_cond = rng.choices(["model = %s", "%s = model", "model = %s::text", "model IN (%s)", "model LIKE %s",
                                  "lower(model) = %s", "model = %s AND model = 'fz_lin'"], [60, 8, 8, 4, 3, 3, 2])[0]
        feat_cond = rng.choices(["features = %s", "features = %s::jsonb", "%s::jsonb = features",
                                 "features = %s::json::jsonb", "features = to_jsonb(%s::text)", "features @> %s",
                                 "features = ANY(ARRAY[%s::jsonb])", "features::text = %s", "features = (%s)::jsonb",
                                 "features = coalesce(%s::jsonb, '{}')"], [50, 15, 6, 4, 4, 3, 3, 3, 3, 3])[0]
        forms = [
            (f"SELECT {self.select_list(rng)} FROM pgml.predictions WHERE {model_cond} AND {feat_cond}"
             f"{self.extra_conditions(rng)}{self.tail(rng)}", (ref, text)),
            ("SELECT (SELECT prediction FROM pgml.predictions WHERE model = %s AND features = %s)", (ref, text)),
            ("WITH f AS (SELECT %s::jsonb AS j) SELECT p.prediction FROM pgml.predictions p, f "
             "WHERE p.model = %s AND p.features = f.j", (text, ref)),
            ("SELECT prediction FROM pgml.predictions WHERE model = %s", (ref,)),
            ("SELECT prediction FROM pgml.predictions WHERE features = %s", (text,)),
            ("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = %s "
             "UNION ALL SELECT prediction FROM pgml.predictions WHERE model = %s AND features = %s",
             (ref, text, self.model_ref(rng), features_value(rng, self.models[rng.choice(self.names)])[1])),
            ("SELECT * FROM pgml.predictions", None),
            ("COPY (SELECT prediction, label FROM pgml.predictions WHERE model = %s AND features = %s) TO STDOUT",
             (ref, text)),
        ]
        sql, params = rng.choices(forms, [70, 6, 5, 4, 3, 4, 2, 6])[0]
        return [Step(sql, params, copy_out=sql.startswith("COPY"))], []

    def _prepared(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        name = f"fz_p{index}"
        generic = rng.random() < 0.5
        steps = [Step("SET plan_cache_mode = force_generic_plan")] if generic else []
        if rng.random() < 0.25:
            types = rng.choice(["text, text, text", "text, text, name", "varchar, text, text"])
            steps.append(Step(f"PREPARE {name}({types}) AS SELECT key, prediction, label FROM pgml.predictions "
                              "WHERE model = $1 AND relation = $2 AND key_column = $3"))
            for _ in range(rng.randint(1, 3)):
                ref = self.model_ref(rng)
                steps.append(Step(f"EXECUTE {name}(%s, %s, %s)",
                                  (ref, self.relation_ref(rng, ref), self.key_column(rng))))
        else:
            shapes = [("text, jsonb", "$2"), ("varchar, jsonb", "$2"), ("text, jsonb", "$2 -> 'f'")]
            if not generic:
                # A cast of a parameter in a generic plan meets a Multicorn bug (it reads the value's
                # type from the wrong field: "lookup failed for type ..."), a documented limitation.
                shapes += [("text, text", "$2::jsonb"), ("name, json", "$2::jsonb"), ("text, unknown", "$2::jsonb")]
            types, feat = rng.choice(shapes)
            steps.append(Step(f"PREPARE {name}({types}) AS SELECT {self.select_list(rng)} FROM pgml.predictions "
                              f"WHERE model = $1 AND features = {feat}{self.extra_conditions(rng)}"))
            for _ in range(rng.randint(1, 7)):
                ref, _, text = self.model_and_features(rng)
                prefix = rng.choices(["", "EXPLAIN ", "EXPLAIN ANALYZE "], [85, 10, 5])[0]
                steps.append(Step(f"{prefix}EXECUTE {name}(%s, %s)", (ref, text)))
        return steps, [f"DEALLOCATE {name}", "RESET plan_cache_mode"]

    def _functions(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        ref, _, text = self.model_and_features(rng)
        function = rng.choice(["pgml.score", "pgml.classify", "pgml.predict_proba", "pgml.prediction"])
        r = rng.random()
        params: List[Any]
        if r < 0.4:
            arg, params = rng.choices(["%s::jsonb", "%s::json", "%s"], [85, 10, 5])[0], [text]
        elif r < 0.65:
            if rng.random() < 0.7:
                ref = rng.choice(["fz_bool", "fz_quoted", "fz_bool_1", "fz_quoted_1"])  # one feature: a number
            cast, values = rng.choice(SCALARS)
            arg, params = f"%s::{cast}", [rng.choice(values + [rng.choice(WEIRD_VALUES), random_string(rng)])]
            if isinstance(params[0], (list, dict, Raw)):
                params = [to_json(params[0])]
        elif r < 0.88:
            model = self.by_ref.get(ref or "") or self.models[rng.choice(self.names)]
            items, params = [], []
            if rng.random() < 0.6:
                for feature in model["features"]:  # in training order, each of its own type
                    items.append(f"%s::{KIND_TYPES.get(feature['kind'], 'text')}")
                    value = value_for(rng, feature)
                    params.append(value if rng.random() < 0.9 else rng.choice(WEIRD_VALUES))
                    if isinstance(params[-1], (list, dict, Raw)):
                        params[-1] = to_json(params[-1])
            else:
                for _ in range(rng.randint(0, 5)):
                    cast, values = rng.choice(SCALARS)
                    items.append(f"%s::{cast}")
                    params.append(rng.choice(values))
            arg = f"ROW({', '.join(items)})"
        else:
            arg, params = rng.choice(["NULL", "NULL::jsonb", "(SELECT s FROM fz_score s LIMIT 1)",
                                      "(SELECT s FROM fz_num s LIMIT 1)", "ROW()", "ARRAY[1, 2]", "'{}'::int[]",
                                      "(SELECT s FROM fz_mixed s LIMIT 1)", "(SELECT s FROM fz_class s LIMIT 1)"]), []
        if function == "pgml.prediction":
            sql = f"SELECT * FROM pgml.prediction(%s, {arg})"
        else:
            sql = f"SELECT {function}(%s, {arg})"
        wrong_arity = rng.random()
        if wrong_arity < 0.03:
            sql, params = f"SELECT {function}(%s)", []
        elif wrong_arity < 0.06:
            sql = f"SELECT {function}(%s, {arg}, 1)"
        return [Step(sql, tuple([ref] + params))], []

    def _lateral(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        name = rng.choice(self.names)
        model = self.models[name]
        expr, expr_params = self.row_expression(rng, model)
        msql, mparams = self.model_sql(rng)
        if mparams and rng.random() < 0.75:
            mparams = [rng.choice([name, model["id"]])]  # the model the features are built for
        src = self.source(rng)
        shape = rng.choices(["prediction", "left", "score", "classify", "proba", "direct", "correlated", "join"],
                            [30, 8, 14, 6, 6, 12, 12, 12])[0]
        must_fail = None
        if shape == "prediction":
            sql = f"SELECT s.id, p.* FROM {src} CROSS JOIN LATERAL pgml.prediction({msql}, {expr}) p"
            params = mparams + expr_params
        elif shape == "left":
            sql = f"SELECT s.id, p.label FROM {src} LEFT JOIN LATERAL pgml.prediction({msql}, {expr}) p ON true"
            params = mparams + expr_params
        elif shape in ("score", "classify", "proba"):
            function = {"score": "pgml.score", "classify": "pgml.classify", "proba": "pgml.predict_proba"}[shape]
            sql = f"SELECT s.id, {function}({msql}, {expr}) FROM {src}"
            params = mparams + expr_params
        elif shape == "direct":
            # Per-row features straight into pgml.predictions: an error by design.
            sql = (f"SELECT s.id, p.prediction FROM {src} CROSS JOIN LATERAL (SELECT prediction "
                   f"FROM pgml.predictions q WHERE q.model = {msql} AND q.features = {expr}) p")
            params = mparams + expr_params
            if (not expr_params and "(SELECT j" not in expr
                    and expr not in ("NULL::jsonb", "'{}'::jsonb", "'[]'::jsonb", "'null'::jsonb")):
                must_fail = "a LATERAL join over pgml.predictions with per-row features must be refused"
        elif shape == "correlated":
            sql = (f"SELECT s.id, (SELECT prediction FROM pgml.predictions q WHERE q.model = {msql} "
                   f"AND q.features = {expr}) FROM {src}")
            params = mparams + expr_params
        else:
            sql = (f"SELECT s.id, p.prediction FROM {src} JOIN pgml.predictions p "
                   f"ON p.model = {msql} AND p.features = {expr}")
            params = mparams + expr_params
        if "ROW(" in expr and shape in ("direct", "correlated", "join"):
            sql = sql.replace(expr, f"pgml._features({expr})")
        return [Step(sql, tuple(params) or None, must_fail=must_fail)], []

    def relation_ref(self, rng: random.Random, ref: Optional[str]) -> Optional[str]:
        model = self.by_ref.get(ref or "")
        r = rng.random()
        if model is not None and r < 0.35:
            return {"fz_lin": "fz_num", "fz_forest": "fz_num", "fz_mlp": "fz_num", "fz_by_limited": "fz_num",
                    "fz_mixed": "fz_mixed", "fz_gbt": "fz_mixed", "fz_quoted": '"Fz Quoted"', "fz_uni": "fz_unicode",
                    "fz_card": "fz_card", "fz_card_hot": "fz_card", "fz_view": "fz_view",
                    "fz_bool": "fz_boolcls"}.get(ref.rsplit("_", 1)[0] if ref not in self.models else ref, "fz_class")
        if r < 0.6:
            return rng.choice(["fz_score", "public.fz_score", "fz_num", "fz_mixed", "fz_class", "fz_card", "fz_view"])
        return rng.choice([
            "fz_missing", "", None, '"unterminated', "fz_score; SELECT 1", "fz_temp", "pg_temp.fz_temp", "fz_secret",
            "pgml.model_estimators", "pgml.predictions", "pgml._predictions", "fz_json", "fz_empty", "fz_nan",
            "pg_catalog.pg_class", "information_schema.tables", "Fz Quoted", '"Fz Quoted"', "fz_schema.t", "FZ_SCORE",
            '"FZ_SCORE"', "fz_score*", "(SELECT 1)", "x" * 1000, "模型", "fz_score WHERE false", "public.", ".fz_score",
            "a.b.c.d", "fz_nulls", "pg_stat_activity", "pgml.training_runs", "fz_unicode",
        ])

    def key_column(self, rng: random.Random) -> Optional[str]:
        return rng.choice(["id", "id", "k", "x1", "x2", "t", "ts", "b", "iv", "j", "code", "cash", "mood", "nope", "",
                           None, "ID", '"id"', "id; drop", "ключ", "*", "x" * 300, "y", "X Col"])

    def _batch(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        ref = self.model_ref(rng)
        relation = self.relation_ref(rng, ref)
        select = rng.choice(["key, prediction", "count(*)", "*", "label, probabilities", "version, key",
                             "count(DISTINCT key)", "sum(prediction)"])
        r = rng.random()
        if r < 0.5:
            sql, params = (f"SELECT {select} FROM pgml.predictions WHERE model = %s AND relation = %s "
                           "AND key_column = %s", (ref, relation, self.key_column(rng)))
        elif r < 0.85:
            sql, params = f"SELECT {select} FROM pgml.predictions WHERE model = %s AND relation = %s", (ref, relation)
        else:
            # features and relation together: an error by design.
            _, _, text = self.model_and_features(rng)
            sql, params = (f"SELECT {select} FROM pgml.predictions WHERE model = %s AND relation = %s "
                           "AND features = %s", (ref, relation, text))
        sql += rng.choice(["", "", "", " LIMIT 3", " ORDER BY 1 LIMIT 5", " AND key_column IS NULL"])
        return [Step(sql, params)], []

    def _explain(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        inner = rng.choices([self._features, self._lateral, self._functions, self._batch, self._train],
                            [35, 30, 15, 15, 5])[0]
        steps, cleanup = inner(rng, index, role)
        prefix = rng.choice(["EXPLAIN ", "EXPLAIN ", "EXPLAIN ANALYZE ", "EXPLAIN (VERBOSE) ", "EXPLAIN (COSTS OFF) ",
                             "EXPLAIN (ANALYZE, VERBOSE, BUFFERS) ", "EXPLAIN (FORMAT JSON) "])
        for step in steps:
            if not step.sql.startswith("COPY"):
                step.sql = prefix + step.sql
            step.must_fail = None
        return steps, cleanup

    def _copy(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        table = rng.choice(["pgml.training_runs", "pgml.training_runs (relation, y_column)", "pgml._training_runs",
                            "pgml._training_runs (relation, y_column, token)", "pgml._predictions",
                            "pgml._predictions (model, features)", "pgml.algorithms", "pgml._trained_estimators",
                            "pgml.predictions", "pgml.models"])
        fmt = rng.choice(["", "", " WITH (FORMAT csv)", " WITH (FORMAT csv, HEADER true)", " WITH (FORMAT binary)",
                          " WITH (FORMAT text, DELIMITER ',')"])
        data: Union[str, bytes]
        r = rng.random()
        if "binary" in fmt:
            data = rng.choice([b"", b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\xff\xff",
                               b"PGCOPY\n\xff\r\n\x00" + bytes(8)
                               + b"\x00\x02\x00\x00\x00\x06fz_num\x00\x00\x00\x01y\xff\xff",
                               bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))])
        elif r < 0.2:
            data = ""
        elif r < 0.5:
            data = "fz_num\ty\n" if "csv" not in fmt else "fz_num,y\n"
        elif r < 0.7:
            data = "\t".join(rng.choice(["fz_lin", "\\N", "{}", "1", "x", "2020-01-01", "t", "\\x00"])
                             for _ in range(rng.randint(1, 25))) + "\n"
        elif r < 0.85:
            data = "".join(rng.choice(["a", "\t", "\n", "\\", ",", "\"", "é", "1", "\\N", "\\."])
                           for _ in range(rng.randint(1, 200)))
        else:
            data = "fz_num\ty\n" * rng.randint(2, 50)
        return [Step(f"COPY {table} FROM STDIN{fmt}", copy_in=data)], []

    # -- training ----------------------------------------------------------------------------------

    def hyperparams(self, rng: random.Random, algorithm: str, task: str) -> Optional[str]:
        """Random values for some of the algorithm's real hyperparameters (jsonb text), or junk."""
        key = algorithm.strip().lower()
        defaults = self.algorithms.get((key, task)) or self.algorithms.get((key, "regression")) \
            or self.algorithms.get((key, "classification"))
        if defaults is None or rng.random() < 0.1:
            return rng.choice([None, "{}", '{"alpha": 0.5}', "[]", "1", '"x"', "null", '{"bogus": 1}'])
        params: Dict[str, Any] = {}
        keys = sorted(defaults)
        for key in rng.sample(keys, min(len(keys), rng.randint(0, 3))):
            params[key] = self.hyperparam_value(rng, key, defaults[key])
        if rng.random() < 0.05:
            params[rng.choice(["bogus", "N_ESTIMATORS", "max-depth", "", "😀"])] = 1
        return to_json(safe_hyperparams(key, params))

    def hyperparam_value(self, rng: random.Random, key: str, default: Any) -> Any:
        r = rng.random()
        if r < 0.25:
            return default
        if r < 0.55 and isinstance(default, (int, float)) and not isinstance(default, bool):
            return rng.choice([-1, 0, 1, 2, -default, default * 2, default / 3, 1e12, 10**12, -1e12, 0.5, 1e-300,
                               Raw("1e400"), Raw("-1e400"), 2**63, 10**30])
        if r < 0.65 and isinstance(default, str):
            return rng.choice([default.upper(), default + "x", "", " " + default, "auto", "none", None])
        if r < 0.7 and isinstance(default, list):
            return rng.choice([[], [0], [-1], [3, 3], [2.5], ["a"], [[1]], [50, 50, 50, 50], [None]])
        return rng.choice([None, True, False, "abc", "", [], [0], {}, {"a": 1}, -1, 0, 1, 2.5, "NaN", "Infinity",
                           [1, 2, 3], {"nested": {"deep": [1]}}, Raw("1e400"), "1e12"])

    def search_options(self, rng: random.Random, algorithm: str,
                       task: str) -> Tuple[Optional[str], Optional[str], Optional[int]]:
        method = rng.choice(["grid", "random", "grid", "random", "GRID", "bayes", "", None])
        defaults = self.algorithms.get((algorithm.strip().lower(), task)) or {}
        space: Any
        r = rng.random()
        if defaults and r < 0.7:
            space = {}
            for key in rng.sample(sorted(defaults), min(len(defaults), rng.randint(1, 2))):
                values = [self.hyperparam_value(rng, key, defaults[key]) for _ in range(rng.randint(1, 2))]
                values = [safe_hyperparams(algorithm.strip().lower(), {key: v}).get(key, v) for v in values]
                space[key] = values if rng.random() < 0.9 else values[0]
            space = to_json(space)
        else:
            space = rng.choice([None, "{}", "[]", '{"alpha": []}', '{"alpha": 1}', '{"bogus": [1, 2]}', "null",
                                '{"alpha": [0.1, 1]}', '{"max_depth": [2, null]}'])
        folds = rng.choice([None, None, 2, 3, 0, 1, -1, 1000, 5])
        return method, space, folds

    def preprocess(self, rng: random.Random, relation: str) -> Optional[str]:
        columns = TRAIN_RELATIONS.get(relation, ["x"])[1:] + ["nope", ""]
        spec: Any = {}
        for column in rng.sample(columns, min(len(columns), rng.randint(1, 3))):
            entry: Any = {}
            for key in rng.sample(["impute", "scale", "encode", "fill_value", "bogus"], rng.randint(0, 3)):
                entry[key] = rng.choice({
                    "impute": ["mean", "median", "most_frequent", "constant", "none", "MEAN", "", None, 1],
                    "scale": ["standard", "min_max", "none", "max_abs", None, True],
                    "encode": ["one_hot", "ordinal", "target", "", None, []],
                    "fill_value": [0, -1, "unknown", None, "NaN", Raw("1e400"), [], {}, True, "x" * 100],
                    "bogus": [1],
                }[key])
            spec[column] = entry if rng.random() < 0.9 else rng.choice(["median", [], 1, None])
        if rng.random() < 0.05:
            spec = rng.choice([[], "x", 1, None])
        return to_json(spec)

    def training_request(self, rng: random.Random) -> Dict[str, Any]:
        """The options of one training run: a valid request, then none, one or a few of its options
        made random (so that most runs get past the first check, and some train)."""
        relation = rng.choice(VALID_TRAINING)
        y = TRAIN_RELATIONS[relation][0]
        task = "classification" if y in ("label", "flag") else "regression"
        algorithm = rng.choice(sorted(a for a, t in self.algorithms if t == task))
        request: Dict[str, Any] = {
            "relation": relation, "y_column": y, "algorithm": algorithm,
            "name": rng.choice([None, f"fzt_{rng.randrange(200)}"]), "task": None,
            "hyperparams": None, "search": None, "search_params": None, "search_folds": None, "preprocess": None,
            "test_size": None, "test_sampling": None, "deploy": rng.choice([None, None, True, False]),
        }
        if rng.random() < 0.4:
            request["hyperparams"] = self.valid_hyperparams(rng, algorithm, task)
        mutations = rng.choices([0, 1, 2, 3], [35, 40, 15, 10])[0]
        for option in rng.sample(TRAINING_OPTIONS, mutations):
            self.mutate_option(rng, request, option, task)
        algorithm = (request["algorithm"] or "").strip().lower()
        if request["hyperparams"] is None and algorithm in SMALL_DEFAULTS:
            request["hyperparams"] = to_json(SMALL_DEFAULTS[algorithm])
        if request["relation"] == "fz_card" and algorithm in PERMUTATION_IMPORTANCE and request["preprocess"] is None:
            # Permutation importance re-predicts once per one-hot column: many seconds on 300 codes.
            request["preprocess"] = '{"code": {"encode": "ordinal"}}'
        return request

    def valid_hyperparams(self, rng: random.Random, algorithm: str, task: str) -> str:
        """Mostly valid hyperparameters: a default, or a default nudged."""
        defaults = self.algorithms[(algorithm, task)]
        params: Dict[str, Any] = {}
        for key in rng.sample(sorted(defaults), min(len(defaults), rng.randint(1, 2))):
            value = defaults[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                params[key] = value
            elif isinstance(value, int):
                params[key] = value + rng.choice([0, 1, 2])
            else:
                params[key] = value * rng.choice([0.5, 1, 2])
        return to_json(safe_hyperparams(algorithm, params))

    def mutate_option(self, rng: random.Random, request: Dict[str, Any], option: str, task: str) -> None:
        if option == "relation":
            request["relation"] = rng.choice(sorted(TRAIN_RELATIONS) + [
                "fz_missing", "", None, "public.fz_num", "Fz Quoted", "fz_num; DROP TABLE fz_num", "x" * 1000,
                "pg_catalog.pg_class", "pgml.model_versions", "pgml.predictions", "FZ_NUM", "fz_score", "模型",
                "pg_temp.fz_temp", "fz_num*", "fz_schema.nope", "(SELECT 1)", "fz_num fz_num"])
            columns = TRAIN_RELATIONS.get(request["relation"] or "")
            if columns and rng.random() < 0.7:
                request["y_column"] = columns[0]
        elif option == "y_column":
            columns = TRAIN_RELATIONS.get(request["relation"] or "", ["y"])
            request["y_column"] = rng.choice(columns + ["nope", "", None, "Y", '"y"', "Y Col", "j", "t", "ts", "iv",
                                                        "b", "ü", "label", "x1; --", "code", "mood", "cash", "tm", "d"])
        elif option == "algorithm":
            name = request["algorithm"]
            request["algorithm"] = rng.choice(sorted({a for a, _ in self.algorithms}) + [
                name.upper(), f" {name} ", name.title(), "nope", "", "linear; drop", "模型", "x" * 500, "Linear",
                "RANDOM_FOREST", "random-forest", None, "lasso", "huber"])
        elif option == "task":
            request["task"] = rng.choice(["regression", "classification", "Regression", "bogus", "", " regression"])
        elif option == "name":
            request["name"] = rng.choice(["1abc", "a b", "x" * 61, "x" * 60, "", "模型", "a'b", "fzt_shared",
                                          "fzt_shared_2", "fzt_" + "9" * 50, "_", "A", "fzt-1", "fzt_1_2", "pgml"])
        elif option == "hyperparams":
            request["hyperparams"] = self.hyperparams(rng, request["algorithm"] or "linear", request["task"] or task)
        elif option == "search":
            request["search"], request["search_params"], request["search_folds"] = \
                self.search_options(rng, request["algorithm"] or "linear", task)
        elif option == "preprocess":
            request["preprocess"] = self.preprocess(rng, request["relation"] or "")
        elif option == "test_size":
            request["test_size"] = rng.choice([0, 1, -1, "NaN", "Infinity", "-Infinity", 0.5, 0.1, 0.9, 1e-9, 0.999, 2,
                                               1e-300, 0.01])
        elif option == "test_sampling":
            request["test_sampling"] = rng.choice(["random", "last", "LAST", "bogus", "", " last"])
        elif option == "deploy":
            request["deploy"] = rng.choice([True, False])

    def _train(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        request = self.training_request(rng)
        types = {"hyperparams": "jsonb", "search_params": "jsonb", "preprocess": "jsonb", "test_size": "float8",
                 "search_folds": "int", "deploy": "boolean"}
        args, params = ["%s", "%s"], [request["relation"], request["y_column"]]
        optional = [k for k in request if k not in ("relation", "y_column") and request[k] is not None]
        if "algorithm" in optional and rng.random() < 0.5:
            optional.remove("algorithm")
            args.append("%s")
            params.append(request["algorithm"])
        rng.shuffle(optional)
        for key in optional:
            args.append(f"{key} => %s::{types.get(key, 'text')}")
            params.append(request[key])
        if rng.random() < 0.03:
            args.append("bogus => 1")
        return [Step(f"SELECT pgml.train({', '.join(args)})", tuple(params))], []

    def _train_insert(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        request = self.training_request(rng)
        keys = ["relation", "y_column"] + [k for k in request if k not in ("relation", "y_column") and
                                           (request[k] is not None or rng.random() < 0.1)]
        casts = {"hyperparams": "::jsonb", "search_params": "::jsonb", "preprocess": "::jsonb", "test_size": "::float8",
                 "search_folds": "::int"}
        values = ", ".join(f"%s{casts.get(k, '')}" for k in keys)
        returning = rng.choice(["", " RETURNING id", " RETURNING *", " RETURNING id, version, task, metrics",
                                " RETURNING train_rows + test_rows"])
        params = tuple(request[k] for k in keys)
        rows = rng.choices([1, 2], [90, 10])[0]
        if rows == 2:
            sql = f"INSERT INTO pgml.training_runs ({', '.join(keys)}) VALUES ({values}), ({values}){returning}"
            params = params + params
        else:
            sql = f"INSERT INTO pgml.training_runs ({', '.join(keys)}) VALUES ({values}){returning}"
        return [Step(sql, params)], []

    def _transaction(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        """Train and score in one transaction; after a rollback the model must be gone."""
        name = f"fztx_{self.seed}_{index}"
        relation = "fz_class" if rng.random() < 0.3 else "fz_num"
        y = "label" if relation == "fz_class" else "y"
        algorithm = rng.choice(["linear", "decision_tree", "knn", "ridge"])
        model = self.models["fz_cls" if relation == "fz_class" else "fz_lin"]
        _, text = features_value(rng, model)
        valid = to_json(Obj((f["name"], value_for(rng, f)) for f in model["features"]))
        undo = rng.choice(["ROLLBACK", "COMMIT", "ROLLBACK TO SAVEPOINT sp"])
        steps = [Step("BEGIN")]
        if undo.startswith("ROLLBACK TO"):
            steps.append(Step("SAVEPOINT sp"))
        steps += [Step("SELECT pgml.train(%s, %s, %s, name => %s)", (relation, y, algorithm, name)),
                  Step("SELECT prediction, label FROM pgml.predictions WHERE model = %s AND features = %s",
                       (name, valid)),
                  Step("SELECT pgml.prediction(%s, %s::jsonb)", (name + "_1", text if rng.random() < 0.3 else valid)),
                  Step(undo)]
        gone = "the model of a rolled-back training must not be scored"
        if undo.startswith("ROLLBACK TO"):
            # Whether a model rolled back to a savepoint is still served is issue 9's, not checked here.
            steps.append(Step("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = %s",
                              (name, valid), tolerate=True))
            steps.append(Step("COMMIT"))
        elif undo == "ROLLBACK":
            steps.append(Step("SELECT prediction FROM pgml.predictions WHERE model = %s AND features = %s",
                              (name, valid), must_fail=gone))
        else:
            steps.append(Step("SELECT pgml.score(%s, %s::jsonb)", (name, valid)))
        return steps, ["ROLLBACK"]

    def _cancel(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        """A statement that statement_timeout stops mid-work; the session must then work as usual."""
        name = f"fzc_{index}"
        work, params = rng.choice([
            ("SELECT pgml.train('fz_card', 'y', 'svm', name => %s)", (name,)),  # seconds: permutation importance
            ("SELECT pgml.train('fz_card', 'y', 'random_forest', hyperparams => '{\"n_estimators\": 50}', name => %s)",
             (name,)),
            ("SELECT pgml.train('fz_num', 'y', 'mlp', hyperparams => '{\"hidden_layer_sizes\": [50], "
             "\"max_iter\": 200, \"tol\": 1e-9}', name => %s)", (name,)),
            ("SELECT pgml.train('fz_card', 'y', 'knn', search => 'grid', "
             "search_params => '{\"n_neighbors\": [1, 3, 5]}', name => %s)", (name,)),
            ("SELECT count(*) FROM pgml.predictions WHERE model = 'fz_card_hot' AND relation = 'fz_card'", None),
            ("SELECT count(*) FROM pgml.predictions WHERE model = 'fz_cls_svm' AND relation = 'fz_class'", None),
            ("SELECT sum(pgml.score('fz_forest', jsonb_build_object('x1', s.x1, 'x2', s.x2, 'x3', s.x3))) "
             "FROM fz_score s, generate_series(1, 20)", None),
            ("SELECT count(p.*) FROM fz_score s, generate_series(1, 20) g CROSS JOIN LATERAL "
             "pgml.prediction('fz_cls_svm', jsonb_build_object('x1', s.x1, 'x2', s.x2, 'color', s.color)) p", None),
        ])
        timeout = rng.choice([1, 5, 20, 50, 100, 200, 400])
        steps = [Step(f"SET statement_timeout = '{timeout}ms'"), Step(work, params, tolerate=True),
                 Step("RESET statement_timeout"),
                 Step("SELECT pgml.score('fz_lin', '[1, 2, 3]'::jsonb)",
                      must_succeed="after a statement timeout, the session must score as usual")]
        if rng.random() < 0.3:
            steps.append(Step("SELECT pgml.train('fz_num', 'y', 'linear', name => %s)", (name + "_after",),
                              must_succeed="after a statement timeout, the session must train as usual"))
        return steps, ["RESET statement_timeout"]

    def _writes(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        """Direct writes to the wrapper's tables: refused, whoever asks."""
        table = rng.choice(["pgml._training_runs", "pgml._predictions", "pgml.algorithms", "pgml._trained_estimators"])
        column = {"pgml._training_runs": "relation", "pgml._predictions": "model", "pgml.algorithms": "name",
                  "pgml._trained_estimators": "token"}[table]
        value = rng.choice(["fz_num", "fz_lin", "", None, "x" * 1000])
        sql, params = rng.choice([
            (f"INSERT INTO {table} ({column}) VALUES (%s)", (value,)),
            (f"INSERT INTO {table} ({column}) SELECT %s FROM generate_series(1, 3)", (value,)),
            (f"UPDATE {table} SET {column} = %s", (value,)),
            (f"UPDATE {table} SET {column} = %s WHERE {column} = 'x'", (value,)),
            (f"DELETE FROM {table}", None),
            (f"DELETE FROM {table} WHERE {column} = %s", (value,)),
            (f"TRUNCATE {table}", None),
            ("INSERT INTO pgml._training_runs (relation, y_column, token) VALUES ('public.fz_num', 'y', '1:x')", None),
            ("INSERT INTO pgml.training_runs (relation, y_column) VALUES ('fz_num', 'y') ON CONFLICT DO NOTHING", None),
            ("UPDATE pgml.training_runs SET name = 'x' WHERE false", None) if role == "limited" else
            ("SELECT count(*) FROM pgml.training_runs", None),
            ("DELETE FROM pgml.training_runs WHERE false", None) if role == "limited" else
            ("SELECT count(*) FROM pgml.models", None),
        ])
        return [Step(sql, params)], []

    def _deploy(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        name = rng.choice(self.names + ["nope", "", None, "fzt_1"])
        if rng.random() < 0.6:
            strategy: Any = rng.choice(["best_score", "most_recent", "rollback", "bogus", "", None, "BEST_SCORE"])
            return [Step("SELECT pgml.deploy(%s, %s::text)", (name, strategy))], []
        version = rng.choice([1, 2, 0, -1, 999, 2**31 - 1, None])
        return [Step("SELECT pgml.deploy(%s, %s::int)", (name, version))], []

    def _internal(self, rng: random.Random, index: int, role: str) -> Tuple[List[Step], List[str]]:
        """The wrapper's internal tables, read directly (the owner may; others may not)."""
        ref, _, text = self.model_and_features(rng)
        sql, params = rng.choice([
            ("SELECT * FROM pgml._predictions WHERE model = %s AND features = %s", (ref, text)),
            ("SELECT error FROM pgml._predictions WHERE model = %s", (ref,)),
            ("SELECT count(*) FROM pgml._predictions WHERE model = %s AND relation = %s",
             (ref, self.relation_ref(rng, ref))),
            ("SELECT * FROM pgml._trained_estimators WHERE token = %s", (rng.choice(["", "1:x", None, "x" * 500]),)),
            ("SELECT * FROM pgml._trained_estimators", None),
            ("SELECT * FROM pgml._training_runs", None),
            ("SELECT * FROM pgml._training_runs WHERE relation = %s", (rng.choice(["fz_num", None]),)),
            ("SELECT * FROM pgml.algorithms WHERE name = %s AND task = %s",
             (rng.choice(["linear", "", None, "x" * 100]), rng.choice(["regression", "bogus", None]))),
            ("SELECT count(*) FROM pgml.algorithms a JOIN pgml.algorithms b USING (name)", None),
            ("SELECT * FROM pgml.training_runs WHERE name = %s", (ref,)),
        ])
        return [Step(sql, params)], []


# Scalar types for pgml.score(model, value): (cast, plausible values as text).
SCALARS: List[Tuple[str, List[Any]]] = [
    ("float8", ["1.5", "-3", "NaN", "Infinity", "1e308", "0"]),
    ("numeric", ["1.5", "1e400", "NaN", "-0.0001", "123456789012345678901234567890"]),
    ("int", ["1", "-2147483648", "0"]),
    ("bigint", ["9223372036854775807", "-1"]),
    ("text", ["red", "", "ünï", "x" * 100]),
    ("boolean", ["true", "false"]),
    ("interval", ["2 years", "-1 day", "178000000 years", "00:00:01"]),
    ("timestamp", ["2020-01-01", "infinity", "-infinity", "294276-12-31"]),
    ("timestamptz", ["2020-01-01 00:00+00", "infinity"]),
    ("date", ["2020-01-01", "infinity", "5874897-12-31", "4713-01-01 BC"]),
    ("time", ["12:00", "24:00"]),
    ("money", ["$1.50", "-92233720368547758.08"]),
    ("fz_mood", ["sad", "happy"]),
    ("int[]", ["{1,2,3}", "{}"]),
    ("float8[]", ["{1.5,NaN}"]),
    ("json", ['{"x1": 1}', "[1, 2, 3]", "1"]),
    ("point", ["(1,2)"]),
    ("bytea", ["\\x00ff"]),
    ("uuid", ["00000000-0000-0000-0000-000000000000"]),
]

# The SQL type that writes a feature of each kind.
KIND_TYPES = {"number": "float8", "boolean": "boolean", "interval": "interval", "date": "date",
              "timestamp": "timestamptz", "time": "time", "text": "text"}

# Bounds that keep a training run small: the fuzzer tests input handling, not memory or time limits.
COST_BOUNDS = {"n_estimators": 50, "max_iter": 200, "max_fun": 200, "n_iter_no_change": 50, "degree": 5,
               "n_jobs": 2, "cache_size": 200, "max_bins": 255, "max_leaf_nodes": 64, "max_depth": 50,
               "n_neighbors": 50, "leaf_size": 100}
# Bounds of one algorithm: libsvm with a huge C may iterate for minutes before it converges.
ALGORITHM_BOUNDS = {"svm": {"C": 1e4}}
# Algorithms that converge on their own on small data, so a huge max_iter is only a big number.
CONVERGING = ("linear", "ridge", "lasso", "elastic_net", "bayesian_ridge", "huber")
# Algorithms with neither coef_ nor feature_importances_: their importance is measured by permutation.
PERMUTATION_IMPORTANCE = ("svm", "knn", "mlp", "bagging", "hist_gradient_boosting")
# Algorithms whose defaults are heavy: each run gets a small size unless the case sets one.
SMALL_DEFAULTS = {
    "random_forest": {"n_estimators": 10}, "extra_trees": {"n_estimators": 10},
    "gradient_boosting_trees": {"n_estimators": 10}, "hist_gradient_boosting": {"max_iter": 10},
    "ada_boost": {"n_estimators": 10}, "bagging": {"n_estimators": 5},
    "mlp": {"hidden_layer_sizes": [5], "max_iter": 50},
}


def safe_hyperparams(algorithm: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Clamps what would make a valid run big or slow; invalid values (strings, negatives, nested
    JSON) pass as they are, since refusing them is what is tested."""
    out = dict(params)
    for key, value in list(out.items()):
        bound = ALGORITHM_BOUNDS.get(algorithm, {}).get(key, COST_BOUNDS.get(key))
        if key == "verbose":
            out[key] = 0 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        elif key == "hidden_layer_sizes" and isinstance(value, list):
            out[key] = [min(v, 50) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value[:3]]
        elif key == "hidden_layer_sizes" and isinstance(value, (int, float, Raw)) and not isinstance(value, bool):
            out[key] = 50 if isinstance(value, Raw) or value > 50 else value
        elif key == "max_iter" and algorithm in CONVERGING and value in (1e12, 10**12):
            pass  # {"max_iter": 1e12}: a big number that these algorithms never reach
        elif key == "tol" and isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            out[key] = value if value < 0 else 1e-4  # tol 0 never stops iterating; a negative one is refused
        elif bound is not None and isinstance(value, (int, float, Raw)) and not isinstance(value, bool):
            number = float(value) if not isinstance(value, Raw) else float("-inf" if value.startswith("-") else "inf")
            if number > bound:
                out[key] = bound if isinstance(value, int) or isinstance(value, Raw) else float(bound)
            elif key == "n_jobs" and number < -2:
                out[key] = -2
    for key, value in SMALL_DEFAULTS.get(algorithm, {}).items():
        out.setdefault(key, value)
    return out


# --------------------------------------------------------------------------------------------------
# Running cases
# --------------------------------------------------------------------------------------------------


def error_text(exc: psycopg2.Error) -> str:
    diag = exc.diag
    parts = [f"{exc.pgcode or '-----'}: {(diag.message_primary or str(exc)).strip()}"]
    if diag.message_detail:
        parts.append(f"DETAIL: {diag.message_detail}")
    if diag.message_hint:
        parts.append(f"HINT: {diag.message_hint}")
    return " | ".join(parts)


def classify(exc: psycopg2.Error) -> str:
    """clear error or bug, for an error whose connection survived."""
    text = error_text(exc)
    if EXPLAIN_REFUSAL in text:
        return "clear error"
    if exc.pgcode == "XX000" or any(marker in text for marker in BUG_MARKERS):
        return "bug"
    return "clear error"


class Runner:
    """One long-lived autocommit connection per role, plus an idle sentinel that notices crashes
    nobody else saw (a crashed backend makes the postmaster restart every session)."""

    def __init__(self, database: str, role: str) -> None:
        self.database = database
        self.users = {"postgres": "postgres", "limited": role}
        self.conns: Dict[str, psycopg2.extensions.connection] = {}
        self.sentinel = self._connect("postgres")
        self.crashes = 0

    def _connect(self, user: str, wait: float = 60.0) -> psycopg2.extensions.connection:
        # After a crash the server refuses connections while it recovers.
        deadline = time.monotonic() + wait
        while True:
            try:
                return connect(self.database, user)
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def conn(self, role: str) -> psycopg2.extensions.connection:
        conn = self.conns.get(role)
        if conn is None or conn.closed:
            conn = self._connect(self.users[role])
            with conn.cursor() as cur:
                # A temporary table of this session: training on it is refused, scoring cannot see it.
                cur.execute("CREATE TEMP TABLE IF NOT EXISTS fz_temp AS SELECT * FROM fz_num")
            self.conns[role] = conn
        return conn

    def _after_crash(self) -> None:
        self.crashes += 1
        for conn in list(self.conns.values()) + [self.sentinel]:
            try:
                conn.close()
            except psycopg2.Error:
                pass
        self.conns.clear()
        time.sleep(1.0)
        self.sentinel = self._connect("postgres")

    def _alive(self, conn: psycopg2.extensions.connection) -> bool:
        if conn.closed:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except psycopg2.Error as exc:
            # An error from the server (an aborted transaction block, say) means it still answers.
            return exc.pgcode is not None and not conn.closed

    def run(self, case: Case) -> Outcome:
        started = time.monotonic()
        conn = self.conn(case.role)
        outcome = Outcome("ok")
        for step in case.steps:
            result = self._step(conn, case, step)
            if result.kind == "crash":
                outcome = result
                break
            if step.must_succeed and result.kind != "ok":
                outcome = Outcome("bug", f"{step.must_succeed}, yet it failed: {result.message}")
                break
            if result.kind == "ok":
                continue
            outcome = result
            if result.kind == "bug" or not step.tolerate:
                break
        if outcome.kind == "crash":
            self._after_crash()
        else:
            for sql in case.cleanup:
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql)
                except psycopg2.Error:
                    if not self._alive(conn):
                        outcome = Outcome("crash", f"the connection died in cleanup ({sql})")
                        self._after_crash()
                        break
        outcome.seconds = time.monotonic() - started
        return outcome

    def _step(self, conn: psycopg2.extensions.connection, case: Case, step: Step) -> Outcome:
        """One statement's outcome."""
        try:
            with conn.cursor() as cur:
                if step.copy_in is not None:
                    data = step.copy_in
                    cur.copy_expert(step.sql, io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data))
                elif step.copy_out:
                    cur.copy_expert(cur.mogrify(step.sql, step.params).decode(), io.StringIO())
                else:
                    cur.execute(step.sql, step.params)
                    rows = cur.fetchall() if cur.description else []
                    if step.must_fail:
                        return Outcome("bug", f"{step.must_fail}, yet it returned {_short(repr(rows), 200)}")
        except (IndexError, TypeError, ValueError) as exc:  # psycopg2 refused the input before sending it
            raise RuntimeError(f"the fuzzer built a case the client cannot send:\n{case.describe()}") from exc
        except psycopg2.Error as exc:
            if not self._alive(conn):
                return Outcome("crash", f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            if exc.pgcode is None:
                raise RuntimeError(f"the fuzzer sent something the client refused:\n{case.describe()}") from exc
            return Outcome(classify(exc), error_text(exc))
        return Outcome("ok")

    def sentinel_alive(self) -> bool:
        return self._alive(self.sentinel)

    def close(self) -> None:
        for conn in list(self.conns.values()) + [self.sentinel]:
            conn.close()


@dataclass
class Report:
    """Counts per outcome and per family, and the first inputs of each distinct bug or crash."""

    seed: int
    cases: int = 0
    seconds: float = 0.0
    counts: Counter = field(default_factory=Counter)
    by_family: Dict[str, Counter] = field(default_factory=dict)
    problems: Dict[str, List[Tuple[Case, Outcome]]] = field(default_factory=dict)
    slowest: List[Tuple[float, int, str]] = field(default_factory=list)
    clear: Dict[str, Counter] = field(default_factory=dict)
    family_seconds: Counter = field(default_factory=Counter)
    repeats: Counter = field(default_factory=Counter)

    def add(self, case: Case, outcome: Outcome) -> None:
        self.cases += 1
        self.counts[outcome.kind] += 1
        self.by_family.setdefault(case.family, Counter())[outcome.kind] += 1
        self.family_seconds[case.family] += outcome.seconds
        if outcome.kind == "clear error":
            self.clear.setdefault(case.family, Counter())[outcome.message.split(" | ")[0][:110]] += 1
        if outcome.kind in ("bug", "crash"):
            sig = signature(outcome)
            self.repeats[sig] += 1
            found = self.problems.setdefault(sig, [])
            if len(found) < SHOWN:  # a few inputs per message are enough, and cases can be large
                found.append((case, outcome))
        self.slowest = sorted(self.slowest + [(outcome.seconds, case.index, case.family)], reverse=True)[:5]

    @property
    def failures(self) -> int:
        return self.counts["bug"] + self.counts["crash"]

    def shown(self) -> List[Tuple[Case, Outcome, int]]:
        """Up to SHOWN bug/crash inputs, round-robin over the distinct messages."""
        picked: List[Tuple[Case, Outcome, int]] = []
        for round_ in range(SHOWN):
            for sig, found in self.problems.items():
                if round_ < len(found) and len(picked) < SHOWN:
                    picked.append((found[round_][0], found[round_][1], self.repeats[sig]))
        return picked

    def inputs(self) -> str:
        """Every bug/crash input with its message, for an assertion message."""
        return "\n\n".join(f"[{o.kind}] {o.message}\n{c.describe()}" for c, o, _ in self.shown())

    def common_errors(self, top: int = 8) -> str:
        """The most frequent clear errors of each family: what the generators mostly hit."""
        lines = []
        for family in sorted(self.clear):
            lines.append(f"{family}:")
            lines += [f"  {count:>5}  {message}" for message, count in self.clear[family].most_common(top)]
        return "\n".join(lines)

    def summary(self, limit: Optional[int] = 300) -> str:
        lines = [f"pgml_fdw fuzz: {self.cases} cases, seed {self.seed}, {self.seconds:.0f} s",
                 "  " + ", ".join(f"{kind}: {self.counts[kind]}" for kind in OUTCOMES), "", "per family:"]
        width = max((len(f) for f in self.by_family), default=10)
        for family in sorted(self.by_family):
            counts = self.by_family[family]
            mean = self.family_seconds[family] / max(sum(counts.values()), 1) * 1000
            lines.append(f"  {family:<{width}}  " + "  ".join(f"{kind}: {counts[kind]:>5}" for kind in OUTCOMES)
                         + f"  ({mean:.0f} ms/case)")
        lines.append("slowest: " + ", ".join(f"case {i} [{f}] {s:.2f} s" for s, i, f in self.slowest))
        if self.problems:
            lines += ["", f"{self.failures} bug/crash outcomes, {len(self.problems)} distinct messages; the first "
                          f"{SHOWN} distinct inputs (the first input of each message, then the next ones):"]
            for case, outcome, repeats in self.shown():
                lines += ["", f"[{outcome.kind}] (message seen {repeats}x) {outcome.message}", case.describe(limit),
                          f"  replay: python3 tests/fuzz.py --seed {self.seed} --replay {case.index}"]
        return "\n".join(lines)


def signature(outcome: Outcome) -> str:
    """A bug's message without its particulars (values, numbers), to group repeats."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "?", outcome.message.split(", yet it returned")[0])
    return outcome.kind + ":" + re.sub(r"\d+", "N", text)[:200]


def campaign(database: str, cases: int, seed: int, seconds: Optional[float] = None,
             log: Optional[Callable[[str], None]] = None) -> Report:
    """Sets up ``database`` (which has the extension) and runs ``cases`` cases, or as many as fit
    in ``seconds``."""
    started = time.monotonic()
    state = setup(database)
    generator = Generator(seed, state)
    runner = Runner(database, state["role"])
    report = Report(seed)
    try:
        for index in range(cases):
            if seconds is not None and time.monotonic() - started > seconds:
                break
            case = generator.case(index)
            report.add(case, runner.run(case))
            if log and (index + 1) % 1000 == 0:
                log(f"{index + 1} cases, {time.monotonic() - started:.0f} s: " +
                    ", ".join(f"{k}: {report.counts[k]}" for k in OUTCOMES))
        if not runner.sentinel_alive():
            # A backend crashed without any case seeing it: every session was restarted.
            sentinel = Case(-1, "sentinel", "postgres", [Step("-- the idle sentinel connection died")])
            report.add(sentinel, Outcome("crash", "the sentinel connection opened before the first case died"))
    finally:
        runner.close()
    report.seconds = time.monotonic() - started
    return report


def _as_admin(*statements: str) -> None:
    """Runs statements on the postgres database (what cannot run inside the fuzzed one)."""
    admin = connect("postgres")
    with admin.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    admin.close()


def fresh_database(database: str) -> None:
    """The fuzzer's own database, made anew with the extension."""
    _as_admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)", f"CREATE DATABASE {database}")
    conn = connect(database)
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION pgml_fdw CASCADE")
    conn.close()


def drop_database(database: str) -> None:
    """The fuzzer's database and its login role, gone."""
    _as_admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)",
              f'DROP ROLE IF EXISTS "{limited_role_name(database)}"')


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=None, help="stop starting cases after this long")
    parser.add_argument("--replay", type=int, default=None, help="run only this case and print it in full")
    parser.add_argument("--database", default=SCRIPT_DATABASE)
    parser.add_argument("--keep", action="store_true", help="leave the database behind")
    parser.add_argument("--common-errors", action="store_true",
                        help="also print each family's most frequent clear errors")
    args = parser.parse_args(argv)

    fresh_database(args.database)
    try:
        if args.replay is not None:
            state = setup(args.database)
            case = Generator(args.seed, state).case(args.replay)
            runner = Runner(args.database, state["role"])
            outcome = runner.run(case)
            runner.close()
            print(case.describe(limit=None))
            print(f"=> {outcome.kind}: {outcome.message}")
            return 0 if outcome.kind in ("ok", "clear error") else 1
        report = campaign(args.database, args.cases, args.seed, args.seconds,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        if not args.keep:
            drop_database(args.database)
    print(report.summary())
    if args.common_errors:
        print("\nmost frequent clear errors:\n" + report.common_errors())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
