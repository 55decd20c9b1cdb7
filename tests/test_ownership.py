"""Model names have owners, and retraining does what the user meant.

Two roles with the documented training grants: the second must not be able to change what the
first one's application is served, by training, deploying or naming.
"""
from __future__ import annotations

import subprocess

import pytest

from conftest import Session, dsn, linear_rows, make_table, role

def forget(db: Session, condition: str) -> None:
    """Deletes the model names matching ``condition`` and, as only a superuser may, their numbering:
    the tests train them anew from version 1."""
    for table in ("model_names", "version_numbers"):
        db.run(f"DELETE FROM pgml.{table} WHERE name {condition}")


TRAINING_GRANTS = ["GRANT INSERT, SELECT (id) ON pgml.training_runs TO {role}",
                   "GRANT SELECT ON pgml.predictions TO {role}"]


@pytest.fixture
def owners(db: Session):
    """alice owns the model "own_victim", trained on y = 3x + 1; mallory may train and predict."""
    alice = role(db, "pgml_alice", TRAINING_GRANTS)
    mallory = role(db, "pgml_mallory", TRAINING_GRANTS)
    make_table(db, "own_line", "x float8, y float8", linear_rows())
    make_table(db, "own_fake", "x float8, y float8", [(float(x), 1000.0 + x * 1e-9) for x in range(50)])
    db.run(f"GRANT SELECT ON own_line TO {alice}")
    db.run(f"GRANT SELECT ON own_fake TO {mallory}")
    forget(db, "IN ('own_victim', 'own_victim2', 'own_victim2_1')")
    as_alice = Session(alice)
    assert as_alice.one("SELECT pgml.train('own_line', 'y', name => 'own_victim')") == "own_victim_1"
    as_mallory = Session(mallory)
    yield as_alice, as_mallory, alice, mallory
    as_alice.close()
    as_mallory.close()
    forget(db, "LIKE 'own\\_%'")


def test_another_role_cannot_train_a_new_version(owners) -> None:
    as_alice, as_mallory, alice, mallory = owners
    before = as_alice.one("SELECT pgml.score('own_victim', 2.0)")
    error = as_mallory.error("SELECT pgml.train('own_fake', 'y', name => 'own_victim')")
    assert error.pgcode == "42501"
    assert f'model "own_victim": it belongs to role {alice}' in error.pgerror
    assert f"GRANT {alice} TO {mallory}" in error.diag.message_hint
    assert as_alice.one("SELECT pgml.score('own_victim', 2.0)") == before == pytest.approx(7, abs=0.05)
    assert as_alice.one("SELECT version FROM pgml.predictions WHERE model = 'own_victim' AND features = '[2]'") == 1


def test_another_role_cannot_deploy_or_roll_back(db: Session, owners) -> None:
    as_alice, as_mallory, alice, mallory = owners
    as_alice.one("SELECT pgml.train('own_line', 'y', name => 'own_victim', deploy => false)")
    for statement in ("SELECT pgml.deploy('own_victim', 2)", "SELECT pgml.deploy('own_victim', 'most_recent')",
                      "SELECT pgml.deploy('own_victim', 'rollback')",
                      "INSERT INTO pgml.deployments (name, version, strategy) VALUES ('own_victim', 2, 'version')"):
        error = as_mallory.error(statement)
        assert error.pgcode in ("42501", "22023"), (statement, error.pgerror)
        if error.pgcode == "22023":  # rollback: nothing to roll back to, said before anything else
            assert "no earlier deployment" in error.pgerror
    assert db.one("SELECT version, deployed_by FROM pgml.deployed_models WHERE name = 'own_victim'") == (1, alice)
    # The owner may; and a member of the owner role may too.
    assert as_alice.one("SELECT pgml.deploy('own_victim', 2)") == "own_victim_2"
    db.run(f"GRANT {alice} TO {mallory}")
    assert as_mallory.one("SELECT pgml.deploy('own_victim', 1)") == "own_victim_1"
    assert db.one("SELECT deployed_by FROM pgml.deployed_models WHERE name = 'own_victim'") == mallory
    db.run(f"REVOKE {alice} FROM {mallory}")


def test_deployed_by_cannot_be_forged(db: Session, owners) -> None:
    as_alice, _, alice, mallory = owners
    as_alice.run("INSERT INTO pgml.deployments (name, version, strategy, deployed_by) "
                 f"VALUES ('own_victim', 1, 'version', '{mallory}')")
    assert db.one("SELECT deployed_by FROM pgml.deployed_models WHERE name = 'own_victim'") == alice


def test_names_cannot_shadow_ids(db: Session, owners) -> None:
    as_alice, as_mallory, _, _ = owners
    as_alice.one("SELECT pgml.train('own_line', 'y', name => 'own_victim2')")
    error = as_mallory.error("SELECT pgml.train('own_fake', 'y', name => 'own_victim2_1')")
    assert error.pgcode == "22023" and "ends like a version id" in error.pgerror
    assert "own_victim2_1_model" in error.diag.message_hint
    assert as_alice.one("SELECT pgml.score('own_victim2_1', 2.0)") == pytest.approx(7, abs=0.05)
    assert db.one("SELECT count(*) FROM pgml.model_names WHERE name = 'own_victim2_1'") == 0


def test_owner_is_listed_and_first_trainer_owns(db: Session, owners) -> None:
    as_alice, as_mallory, alice, mallory = owners
    assert as_mallory.one("SELECT pgml.train('own_fake', 'y', name => 'own_mallorys')") == "own_mallorys_1"
    assert db.rows("SELECT name, owner FROM pgml.model_names WHERE name IN ('own_victim', 'own_mallorys') ORDER BY 1") \
        == [("own_mallorys", mallory), ("own_victim", alice)]
    assert db.one("SELECT owner FROM pgml.models WHERE id = 'own_victim_1'") == alice


def test_default_names_are_schema_qualified_outside_public(db: Session) -> None:
    forget(db, "IN ('own_same', 'own_schema.own_same')")
    db.run("CREATE SCHEMA IF NOT EXISTS own_schema")
    make_table(db, "own_same", "x float8, y float8", linear_rows())
    make_table(db, "own_schema.own_same", "x float8, y float8", [(x, -x) for x, _ in linear_rows()])
    assert db.one("SELECT pgml.train('own_same', 'y')") == "own_same_1"
    assert db.one("SELECT pgml.train('own_schema.own_same', 'y')") == "own_schema.own_same_1"
    assert db.one("SELECT pgml.score('own_same', 2.0)") == pytest.approx(7, abs=0.05)
    assert db.one("SELECT pgml.score('own_schema.own_same', 2.0)") == pytest.approx(-2, abs=0.05)
    # On a search_path that finds the other schema first, the unqualified name means that relation.
    db.run("SET search_path = own_schema, public")
    assert db.one("SELECT pgml.train('own_same', 'y')") == "own_schema.own_same_2"
    db.run("RESET search_path")
    forget(db, "IN ('own_same', 'own_schema.own_same')")


def test_retrain_on_changed_features_deploys(db: Session, name: str) -> None:
    make_table(db, "own_grow", "x float8, noise float8, y float8",
               [(x, float(i % 7), y) for i, (x, y) in enumerate(linear_rows(noise=1.0))])
    db.run("CREATE OR REPLACE VIEW own_grow_v AS SELECT x, y FROM own_grow")
    db.one("SELECT pgml.train('own_grow_v', 'y', name => %s)", (name,))
    # The same data, a worse algorithm: not deployed.
    db.one("SELECT pgml.train('own_grow_v', 'y', 'ridge', name => %s, hyperparams => '{\"alpha\": 1e6}')", (name,))
    assert db.one("SELECT version FROM pgml.deployed_models WHERE name = %s", (name,)) == 1
    # A column added to the view: the retrain is what the user means now, whatever its score.
    db.run("DROP VIEW own_grow_v")
    db.run("CREATE VIEW own_grow_v AS SELECT x, noise, y FROM own_grow")
    db.one("SELECT pgml.train('own_grow_v', 'y', 'ridge', name => %s, hyperparams => '{\"alpha\": 1e6}')", (name,))
    assert db.one("SELECT version FROM pgml.deployed_models WHERE name = %s", (name,)) == 3
    assert db.one("SELECT pgml.score(%s, '{\"x\": 2, \"noise\": 1}'::jsonb)", (name,)) is not None
    # best_score compares only versions trained on the deployed version's data.
    assert db.one("SELECT pgml.deploy(%s, 'best_score')", (name,)) == f"{name}_3"


def _demo() -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn(), "-f", "demo/demo.sql"],
                          capture_output=True, text=True, timeout=600)


def test_demo_twice_and_beside_same_named_views(db: Session) -> None:
    forget(db, "IN ('my_data', 'my_model', 'big_spenders', 'other.my_data')")
    # Another schema trained a my_data view with other columns first.
    db.run("CREATE SCHEMA IF NOT EXISTS other")
    make_table(db, "other.my_data_t", "age int, total_purchases float8", [(a, a * 2.0) for a in range(40)])
    db.run("CREATE OR REPLACE VIEW other.my_data AS SELECT * FROM other.my_data_t")
    assert db.one("SELECT pgml.train('other.my_data', 'total_purchases')") == "other.my_data_1"
    for run in (1, 2):
        done = _demo()
        assert done.returncode == 0, done.stderr
        assert db.one("SELECT count(*) FROM pgml.model_versions WHERE name = 'my_data'") == run
    assert db.one("SELECT pgml.score('other.my_data', '{\"age\": 10}'::jsonb)") == pytest.approx(20, abs=0.01)
    db.run("DROP SCHEMA other CASCADE")


def test_deployment_rows_cannot_be_forged(db: Session, owners) -> None:
    """INSERT on pgml.deployments is everyone's, for the names they own: the id, time and author
    are not theirs to choose, so they cannot take the ids the owner's next deployments need."""
    as_alice, as_mallory, alice, mallory = owners
    as_mallory.one("SELECT pgml.train('own_fake', 'y', name => 'own_mallorys')")
    upcoming = db.one("SELECT last_value + 1 FROM pgml.deployments_id_seq")
    for offset in range(5):
        as_mallory.run("INSERT INTO pgml.deployments (id, name, version, strategy, deployed_at) "
                       "VALUES (%s, 'own_mallorys', 1, 'version', '2000-01-01')", (upcoming + 10 + offset,))
    assert db.one("SELECT count(*) FROM pgml.deployments WHERE deployed_at < '2001-01-01'") == 0
    assert as_mallory.error("INSERT INTO pgml.deployments (name, version, strategy) "
                            "VALUES ('own_mallorys', 1, 'auto')").pgcode == "22023"
    for _ in range(20):
        as_alice.one("SELECT pgml.deploy('own_victim', 1)")
    assert as_alice.one("SELECT pgml.train('own_line', 'y', name => 'own_victim')") == "own_victim_2"


def test_schema_qualified_names_belong_to_the_schema(db: Session, owners) -> None:
    _, as_mallory, _, mallory = owners
    db.run("CREATE SCHEMA IF NOT EXISTS own_theirs")
    error = as_mallory.error("SELECT pgml.train('own_fake', 'y', name => 'own_theirs.squat')")
    assert error.pgcode == "42501" and "schema own_theirs" in error.pgerror
    db.run(f"GRANT CREATE ON SCHEMA own_theirs TO {mallory}")
    assert as_mallory.one("SELECT pgml.train('own_fake', 'y', name => 'own_theirs.squat')") == "own_theirs.squat_1"
    forget(db, "= 'own_theirs.squat'")
    db.run("DROP SCHEMA own_theirs CASCADE")
