-- pgml_fdw 0.1.0 -> 0.2.0: models that are owned, served exactly as committed, and kept.
--
-- CREATE EXTENSION pgml_fdw installs 0.2.0 by running the 0.1.0 script and then this one, so this file
-- is both the upgrade (ALTER EXTENSION pgml_fdw UPDATE) and the rest of a new install.
--
--   * Every model name has an owner: the role that trained it first. Training a new version,
--     deploying and rolling back need membership in that role.
--   * Every version has a uid that no other model will ever have. Predictions resolve a name or id
--     to it in the caller's own snapshot, so a backend serves exactly what its transaction sees.
--   * The wrapper connects back to the database it runs in, found at run time, as the role
--     pgml_fdw (not a superuser), and only when it must load a model it has not cached.
--   * DROP EXTENSION refuses while models exist.
\echo Use "ALTER EXTENSION pgml_fdw UPDATE" to load this file. \quit

-------------------------------------------------------------------------------------------------------
-- Connections back to this database. The wrapper finds the port, socket directory and database name
-- of the backend it runs in, so a renamed database, a copy made from a template, or a hot standby
-- (which reads its own replicated models) needs no setting. Options of the server pgml:
--   serve_user  the role that loads models (default pgml_fdw, made below: it can read the model
--               tables and nothing else);
--   read_user   the role that reads the relations a user trains on or scores whole, as that user:
--               it must be able to become each of them (SET ROLE), which takes a superuser unless
--               every such role is granted to it (default: the role that installed the extension);
--   dsn         further libpq settings, e.g. 'passfile=/var/lib/postgresql/.pgpass' or a host and
--               port when the loopback must go elsewhere.
-- Both roles log in over the server's Unix socket: pg_hba.conf must let them in without a password
-- (e.g. "local all pgml_fdw peer map=pgml_fdw" with "pgml_fdw postgres pgml_fdw" in pg_ident.conf),
-- or a passfile given in dsn must hold their passwords.
-------------------------------------------------------------------------------------------------------
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgml_fdw') THEN
        CREATE ROLE pgml_fdw LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pgml_fdw', current_database());
    EXECUTE format('ALTER SERVER pgml OPTIONS (ADD serve_user %L, ADD read_user %L)', 'pgml_fdw', current_user);
    -- 0.1.0 wrote the database, port, socket and user into dsn once, at CREATE EXTENSION: that dsn
    -- goes. One an administrator changed is kept, and still overrides what the wrapper finds.
    IF (SELECT option_value FROM pg_options_to_table((SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'pgml'))
        WHERE option_name = 'dsn')
       = (SELECT format('host=%s port=%s dbname=%s user=%s application_name=pgml_fdw',
                        coalesce(nullif(trim(split_part(current_setting('unix_socket_directories'), ',', 1)), ''), 'localhost'),
                        current_setting('port'), quote_ident(current_database()), quote_ident(r.rolname))
          FROM pg_extension e JOIN pg_roles r ON r.oid = e.extowner WHERE e.extname = 'pgml_fdw') THEN
        ALTER SERVER pgml OPTIONS (DROP dsn);
    ELSE
        RAISE WARNING 'the foreign server pgml keeps its dsn option, which overrides the database, port and role the wrapper would use'
            USING HINT = 'Keep only the settings you need in it (e.g. passfile=...), or drop it: ALTER SERVER pgml OPTIONS (DROP dsn).';
    END IF;
END
$$;

-------------------------------------------------------------------------------------------------------
-- Model names and their owners.
-------------------------------------------------------------------------------------------------------
CREATE TABLE pgml.model_names (
    name         text PRIMARY KEY,
    owner        name NOT NULL,                 -- its members may train, deploy and roll back the name
    versions     integer NOT NULL DEFAULT 0,    -- versions numbered so far: deleting one frees no number
    created_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgml.model_names IS 'Every model name, its owner and the versions it has numbered. DELETE a name to delete its versions.';
INSERT INTO pgml.model_names (name, owner, versions, created_at)
SELECT DISTINCT ON (name) name, trained_by, max(version) OVER (PARTITION BY name), trained_at
FROM pgml.model_versions ORDER BY name, version;
DO $$
DECLARE
    ambiguous text := (SELECT string_agg(name, ', ') FROM pgml.model_names WHERE name ~ '_[0-9]+$');
BEGIN
    IF ambiguous IS NOT NULL THEN
        RAISE WARNING 'model names that end like a version id: %', ambiguous
            USING DETAIL = 'New names may not; these still answer by name first, before the version of that id.',
                  HINT = 'Retrain them under names that do not end in _ and digits, and delete these.';
    END IF;
END
$$;
SELECT pg_catalog.pg_extension_config_dump('pgml.model_names', '');

ALTER TABLE pgml.model_versions
    ADD FOREIGN KEY (name) REFERENCES pgml.model_names (name) ON DELETE CASCADE,
    ADD COLUMN uid uuid NOT NULL UNIQUE DEFAULT gen_random_uuid();  -- one per version, ever
ALTER TABLE pgml.model_versions ALTER COLUMN uid DROP DEFAULT;
COMMENT ON COLUMN pgml.model_versions.uid IS 'Never given to another model, in this or any database: what backends cache a model by.';

-- The role that owns a model name, if the name exists.
CREATE FUNCTION pgml._owner(model_name text) RETURNS name
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT owner FROM pgml.model_names WHERE name = model_name
$$;

-- Whether a role may change a model name: train it, deploy or roll it back. Superusers may.
CREATE FUNCTION pgml._may_manage(model_name text, who name) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM pg_roles r
                   WHERE r.rolname = pgml._owner(model_name) AND pg_has_role(who, r.oid, 'MEMBER'))
$$;

-- Every deployment, whoever inserts it, needs the name's owner: pgml.deploy and training run as
-- the caller or check the trainer, and a direct INSERT by a role granted it is checked here.
CREATE FUNCTION pgml._check_deployment() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT pgml._may_manage(NEW.name, current_user) THEN
        RAISE EXCEPTION 'permission denied to deploy model "%": it belongs to role %', NEW.name, pgml._owner(NEW.name)
            USING ERRCODE = '42501',
                  HINT = format('Only members of its owner role may deploy it: ask for GRANT %I TO %I.',
                                pgml._owner(NEW.name), current_user);
    END IF;
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        -- Only the name, version and strategy are the inserter's to choose.
        NEW.id := nextval('pgml.deployments_id_seq');
        NEW.deployed_by := current_user;
        NEW.deployed_at := now();
        IF NEW.strategy NOT IN ('best_score', 'most_recent', 'rollback', 'version') THEN
            RAISE EXCEPTION 'unknown deployment strategy "%"', NEW.strategy
                USING ERRCODE = '22023', HINT = 'Deploy with pgml.deploy(name, version) or pgml.deploy(name, strategy).';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER check_deployment BEFORE INSERT ON pgml.deployments
    FOR EACH ROW EXECUTE FUNCTION pgml._check_deployment();
GRANT INSERT ON pgml.deployments TO PUBLIC;  -- gated by check_deployment
GRANT USAGE ON SEQUENCE pgml.deployments_id_seq TO PUBLIC;

-------------------------------------------------------------------------------------------------------
-- Serving exactly the committed state. A backend caches models by uid (immutable) and names by
-- what they resolved to. Each query over pgml.predictions hands the wrapper its context
-- (pgml._context()), read in the caller's snapshot: the generation of the model store (a new one
-- is written by every commit that changed a model or a deployment: the cached names go) and the
-- names and ids the caller's own transaction changed and has not committed, resolved as it sees
-- them. Those are noted in the transaction-local setting pgml.changed, which a rolled-back
-- savepoint takes back with its changes: nothing is written or read back in a table, so no
-- serializable transaction can conflict on them.
-------------------------------------------------------------------------------------------------------
-- The newest row is the current generation. Rows are only ever added, at commit, under a lock
-- taken only then: transactions that changed models queue for microseconds as they commit, and
-- generations follow commit order (a backend that sees one has seen every commit before it).
CREATE TABLE pgml._generation (
    id           bigserial PRIMARY KEY,
    generation   uuid NOT NULL DEFAULT gen_random_uuid()
);
INSERT INTO pgml._generation DEFAULT VALUES;

-- Writes this transaction's generation, once (pgml.published holds the transaction's id: a value
-- set by hand, or left by another transaction, does not count).
CREATE FUNCTION pgml._publish() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '10s' AS $$
BEGIN
    IF current_setting('pgml.published', true) IS DISTINCT FROM txid_current()::text THEN
        BEGIN
            LOCK TABLE pgml._generation IN EXCLUSIVE MODE;  -- readers are not blocked
        EXCEPTION WHEN lock_not_available THEN
            RAISE EXCEPTION 'cannot publish this change to models: another transaction that changed models holds the lock'
                USING ERRCODE = '55P03',
                      HINT = 'A transaction that ran SET CONSTRAINTS ALL IMMEDIATE, or a prepared transaction, after changing models '
                             'holds it until it ends: see pg_locks for pgml._generation. Then retry.';
        END;
        INSERT INTO pgml._generation DEFAULT VALUES;
        PERFORM set_config('pgml.published', txid_current()::text, true);
    END IF;
END
$$;

-- After each change: note the name or id for this transaction's own queries: "txid ref ref ..."
-- ('*': the tables were truncated; '!': too many to list).
CREATE FUNCTION pgml._note_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    changed jsonb := to_jsonb(CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END);
    noted text := current_setting('pgml.changed', true);
    ref text;
BEGIN
    IF split_part(coalesce(noted, ''), ' ', 1) IS DISTINCT FROM txid_current()::text THEN
        noted := txid_current()::text;  -- empty, or left by a session-level SET
    END IF;
    FOREACH ref IN ARRAY CASE WHEN TG_OP = 'TRUNCATE' THEN ARRAY['*']
                              WHEN TG_TABLE_NAME = 'model_versions' THEN ARRAY[changed ->> 'id', changed ->> 'name']
                              ELSE ARRAY[changed ->> 'name'] END LOOP
        IF length(noted) > 20000 THEN
            ref := '!';
        END IF;
        IF position(' ' || ref || ' ' IN noted || ' ') = 0 THEN
            noted := noted || ' ' || ref;
        END IF;
    END LOOP;
    PERFORM set_config('pgml.changed', noted, true);
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pgml._publish();  -- TRUNCATE locks the tables until commit anyway
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER note_change AFTER INSERT OR UPDATE OR DELETE ON pgml.model_versions
    FOR EACH ROW EXECUTE FUNCTION pgml._note_change();
CREATE TRIGGER note_change AFTER INSERT OR UPDATE OR DELETE ON pgml.deployments
    FOR EACH ROW EXECUTE FUNCTION pgml._note_change();
CREATE TRIGGER note_truncate AFTER TRUNCATE ON pgml.model_versions
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._note_change();
CREATE TRIGGER note_truncate AFTER TRUNCATE ON pgml.deployments
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._note_change();

-- At commit (deferred), once per transaction that kept a change: a new generation.
CREATE FUNCTION pgml._publish_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pgml._publish();
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER publish_changes AFTER INSERT OR UPDATE OR DELETE ON pgml.model_versions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgml._publish_changes();
CREATE CONSTRAINT TRIGGER publish_changes AFTER INSERT OR UPDATE OR DELETE ON pgml.deployments
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgml._publish_changes();
-- Also where changes arrive by logical replication (session_replication_role = replica).
ALTER TABLE pgml.model_versions ENABLE ALWAYS TRIGGER note_change, ENABLE ALWAYS TRIGGER publish_changes,
                                ENABLE ALWAYS TRIGGER note_truncate;
ALTER TABLE pgml.deployments ENABLE ALWAYS TRIGGER note_change, ENABLE ALWAYS TRIGGER publish_changes,
                             ENABLE ALWAYS TRIGGER note_truncate;

-- The uid a model name (its deployed version) or id stands for, in the caller's snapshot; NULL if
-- none. PL/pgSQL, so that its plans are kept for the session: it runs for every prediction.
CREATE FUNCTION pgml._find(model text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found text;
BEGIN
    SELECT m.uid::text INTO found FROM pgml.deployments d
      JOIN pgml.model_versions m ON m.name = d.name AND m.version = d.version
     WHERE d.name = model ORDER BY d.id DESC LIMIT 1;
    IF found IS NULL THEN
        SELECT m.uid::text INTO found FROM pgml.model_versions m WHERE m.id = model;
    END IF;
    RETURN found;
END
$$;

-- What pgml.predictions hands the wrapper: "generation[ ref=uid ...]", the refs being the names and
-- ids this transaction changed (pgml.changed), resolved in its snapshot: setting pgml.changed by
-- hand changes no answer. PL/pgSQL, so that PostgreSQL never inlines it into the query: a plain
-- EXPLAIN must be able to run it (Multicorn evaluates the scan's conditions even then).
CREATE FUNCTION pgml._context() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    current text := (SELECT g.generation::text FROM pgml._generation g ORDER BY g.id DESC LIMIT 1);
    noted text := current_setting('pgml.changed', true);
BEGIN
    IF noted IS NULL OR noted = '' OR split_part(noted, ' ', 1) IS DISTINCT FROM txid_current_if_assigned()::text THEN
        RETURN current;
    END IF;
    RETURN current || coalesce((
        SELECT ' ' || string_agg(r.ref || '=' || coalesce(pgml._find(r.ref), ''), ' ')
        FROM regexp_split_to_table(noted, ' ') WITH ORDINALITY AS r(ref, n)
        WHERE r.n > 1 AND r.ref ~ '^([A-Za-z_][A-Za-z0-9_.]*|[*!])$'), '');
END
$$;

-- As pgml._find, or raises: what the scoring functions pass to pgml.predictions.
CREATE OR REPLACE FUNCTION pgml._resolve(model text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    found text := pgml._find(model);
BEGIN
    IF found IS NULL THEN
        RAISE EXCEPTION 'no model named "%"', model
            USING ERRCODE = '42704',
                  HINT = 'Train one with pgml.train, or list them: SELECT id, deployed FROM pgml.models.';
    END IF;
    RETURN found;
END
$$;

-- The deployment notes of 0.1.0: a backend was told of its own deployments through this table.
DROP TRIGGER deployment_changed ON pgml.deployments;
DROP FUNCTION pgml._deployment_changed();
DROP FOREIGN TABLE pgml._model_cache;

ALTER FOREIGN TABLE pgml._predictions ADD COLUMN context text;
CREATE OR REPLACE VIEW pgml.predictions AS
SELECT p.model, p.features,
       CASE WHEN p.error IS NULL THEN p.prediction ELSE pgml._raise(p.error, p.prediction) END AS prediction,
       CASE WHEN p.error IS NULL THEN p.label ELSE pgml._raise(p.error, p.label) END AS label,
       CASE WHEN p.error IS NULL THEN p.probabilities ELSE pgml._raise(p.error, p.probabilities) END AS probabilities,
       CASE WHEN p.error IS NULL THEN p.version ELSE pgml._raise(p.error, p.version) END AS version,
       p.relation, p.key_column,
       CASE WHEN p.error IS NULL THEN p.key ELSE pgml._raise(p.error, p.key) END AS key
FROM pgml._predictions p
WHERE p.context = (SELECT pgml._context()) AND pgml._check(p.error) = 0;

-------------------------------------------------------------------------------------------------------
-- Training: names, owners, versions and the auto-deploy rule.
-------------------------------------------------------------------------------------------------------
DROP FUNCTION pgml._next_version(text);

-- Trains and stores one run. Checks again, as trained_by, everything it does not take on trust.
CREATE OR REPLACE FUNCTION pgml._train() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel regclass := to_regclass(NEW.relation);
    owner_role name;
    model_uid uuid := gen_random_uuid();
    trained record;
    estimator record;
    current record;
    key_metric text;
BEGIN
    IF rel IS NULL THEN
        RAISE EXCEPTION 'relation "%" does not exist', NEW.relation USING ERRCODE = '42P01';
    END IF;
    IF (SELECT relpersistence FROM pg_class WHERE oid = rel) = 't' THEN
        RAISE EXCEPTION 'cannot train on the temporary table %', rel
            USING ERRCODE = '0A000',
                  HINT = 'The training run reads through its own connection, which cannot see temporary tables: use an ordinary table or view.';
    END IF;
    IF NOT has_table_privilege(NEW.trained_by, rel, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for %: training reads it as %', rel, NEW.trained_by
            USING ERRCODE = '42501', HINT = format('Ask its owner for GRANT SELECT ON %s TO %I.', rel, NEW.trained_by);
    END IF;
    -- By default the relation's name, schema-qualified outside public: public.my_data and
    -- bar.my_data are the models my_data and bar.my_data.
    NEW.name := coalesce(NEW.name, (SELECT CASE n.nspname WHEN 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END
                                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel));
    IF NEW.name !~ '^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$' OR length(NEW.name) > 63 THEN
        RAISE EXCEPTION 'invalid model name "%"', NEW.name
            USING ERRCODE = '22023',
                  HINT = 'Use letters, digits and underscores, starting with a letter, at most 63 characters '
                         '(one dot allowed, as in schema.view); or give one: pgml.train(..., name => ''my_model'').';
    END IF;
    -- One run per name at a time, so that version numbers are handed out in order.
    PERFORM pg_advisory_xact_lock(hashtext('pgml_fdw:' || NEW.name));
    SELECT n.owner INTO owner_role FROM pgml.model_names n WHERE n.name = NEW.name;
    IF owner_role IS NULL THEN
        -- A model's id is name_version: a name that ends like a version would be one's id.
        IF NEW.name ~ '_[0-9]+$' THEN
            RAISE EXCEPTION 'invalid model name "%": it ends like a version id (name_version)', NEW.name
                USING ERRCODE = '22023',
                      HINT = 'Choose a name that does not end in _ and digits: pgml.train(..., name => ''' || NEW.name || '_model'').';
        END IF;
        -- schema.view names the schema's model; only those who may create objects in it claim one.
        IF NEW.name LIKE '%.%' AND NOT coalesce(has_schema_privilege(NEW.trained_by, (SELECT oid FROM pg_namespace
                                                   WHERE nspname = split_part(NEW.name, '.', 1)), 'CREATE'), false) THEN
            RAISE EXCEPTION 'permission denied to name a model "%": you may not create objects in schema %',
                            NEW.name, split_part(NEW.name, '.', 1)
                USING ERRCODE = '42501', HINT = 'Choose a name without a dot: pgml.train(..., name => ''...'').';
        END IF;
        INSERT INTO pgml.model_names (name, owner) VALUES (NEW.name, NEW.trained_by);
    ELSIF NOT pgml._may_manage(NEW.name, NEW.trained_by) THEN
        RAISE EXCEPTION 'permission denied to train model "%": it belongs to role %', NEW.name, owner_role
            USING ERRCODE = '42501',
                  HINT = format('Train under a name of your own (pgml.train(..., name => ''...'')), or ask for GRANT %I TO %I.',
                                owner_role, NEW.trained_by);
    END IF;
    UPDATE pgml.model_names n SET versions = n.versions + 1 WHERE n.name = NEW.name RETURNING n.versions INTO NEW.version;
    NEW.id := NEW.name || '_' || NEW.version;
    NEW.trained_at := now();

    INSERT INTO pgml._training_runs (id, name, version, relation, y_column, algorithm, task, hyperparams,
                                     search, search_params, search_folds, preprocess, test_size,
                                     test_sampling, deploy, trained_by, trained_at, token, memory_limit)
    VALUES (NEW.id, NEW.name, NEW.version, NEW.relation, NEW.y_column, coalesce(NEW.algorithm, 'linear'),
            NEW.task, NEW.hyperparams, NEW.search, NEW.search_params, NEW.search_folds, NEW.preprocess,
            NEW.test_size, NEW.test_sampling, NEW.deploy, NEW.trained_by, NEW.trained_at, model_uid::text,
            pgml._training_memory())
    RETURNING * INTO trained;
    PERFORM pgml._check(trained.error);

    SELECT * INTO estimator FROM pgml._trained_estimators e WHERE e.token = trained.token;
    INSERT INTO pgml.model_versions (id, name, version, task, algorithm, relation, y_column, features,
                                     classes, hyperparams, search, metrics, importance, train_rows,
                                     test_rows, duration, peak_memory, trained_by, trained_at, uid)
    SELECT NEW.id, NEW.name, NEW.version, trained.task, trained.algorithm, NEW.relation, NEW.y_column,
           d.features, d.classes, d.hyperparams, d.search, trained.metrics, d.importance,
           trained.train_rows, trained.test_rows, trained.duration, trained.peak_memory, NEW.trained_by,
           NEW.trained_at, model_uid
    FROM jsonb_to_record(estimator.details)
         AS d(features jsonb, classes jsonb, hyperparams jsonb, search jsonb, importance jsonb);
    INSERT INTO pgml.model_estimators (model_id, estimator) VALUES (NEW.id, estimator.estimator);

    NEW.task := trained.task;
    NEW.algorithm := trained.algorithm;
    NEW.metrics := trained.metrics;
    NEW.train_rows := trained.train_rows;
    NEW.test_rows := trained.test_rows;
    NEW.duration := trained.duration;
    NEW.peak_memory := trained.peak_memory;
    IF NOT coalesce(NEW.deploy, true) THEN
        RETURN NEW;
    END IF;
    -- Auto-deploy: the first version; a version trained on other data (relation, target, task or
    -- feature columns changed: the retrain is what the user means now); or one that beats the
    -- deployed version's key metric on the same data.
    SELECT v.* INTO current FROM pgml.deployed_models v WHERE v.name = NEW.name;
    key_metric := CASE NEW.task WHEN 'regression' THEN 'r2' ELSE 'f1' END;
    IF current IS NULL
       OR current.relation IS DISTINCT FROM NEW.relation OR current.y_column IS DISTINCT FROM NEW.y_column
       OR current.task IS DISTINCT FROM NEW.task
       OR pgml._feature_names(current.features) IS DISTINCT FROM
          (SELECT pgml._feature_names(m.features) FROM pgml.model_versions m WHERE m.id = NEW.id)
       OR coalesce((NEW.metrics ->> key_metric)::float8, '-Infinity')
          > coalesce((current.metrics ->> key_metric)::float8, '-Infinity') THEN
        INSERT INTO pgml.deployments (name, version, strategy, deployed_by)
        VALUES (NEW.name, NEW.version, 'auto', NEW.trained_by);
    END IF;
    RETURN NEW;
END
$$;

-- A version's feature columns, sorted: what "trained on the same data" compares.
CREATE FUNCTION pgml._feature_names(features jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_agg(f ->> 'name' ORDER BY f ->> 'name') FROM jsonb_array_elements(features) f
$$;

-- Train a model; returns the new version's id (e.g. my_data_1). Named arguments give the options
-- of pgml.training_runs: SELECT pgml.train('my_data', 'y', 'random_forest', hyperparams => '{...}').
CREATE OR REPLACE FUNCTION pgml.train(
    relation text, y_column text, algorithm text DEFAULT 'linear', name text DEFAULT NULL,
    task text DEFAULT NULL, hyperparams jsonb DEFAULT NULL, search text DEFAULT NULL,
    search_params jsonb DEFAULT NULL, search_folds integer DEFAULT NULL, preprocess jsonb DEFAULT NULL,
    test_size double precision DEFAULT NULL, test_sampling text DEFAULT NULL, deploy boolean DEFAULT true)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    new_id text;
BEGIN
    PERFORM pgml._refuse_on_standby('train');
    INSERT INTO pgml.training_runs (relation, y_column, algorithm, name, task, hyperparams, search,
                                    search_params, search_folds, preprocess, test_size, test_sampling, deploy)
    VALUES (train.relation, train.y_column, train.algorithm, train.name, train.task, train.hyperparams,
            train.search, train.search_params, train.search_folds, train.preprocess, train.test_size,
            train.test_sampling, train.deploy)
    RETURNING training_runs.id INTO new_id;
    RETURN new_id;
END
$$;

-- A hot standby serves models but changes none: say so before PostgreSQL's generic read-only error.
CREATE FUNCTION pgml._refuse_on_standby(action text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'cannot % on a hot standby', action
            USING ERRCODE = '25006',
                  HINT = 'Models are trained and deployed on the primary; this standby serves them as soon as it replays the commit.';
    END IF;
END
$$;

-------------------------------------------------------------------------------------------------------
-- Deploying: as the caller, who must be a member of the name's owner (pgml._check_deployment).
-------------------------------------------------------------------------------------------------------

-- The version a strategy picks: best_score (the best key metric among versions trained on the
-- deployed version's relation, target and features), most_recent, or rollback (the version deployed
-- before the current one).
CREATE FUNCTION pgml._choose_version(model_name text, strategy text) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current record;
    chosen integer;
BEGIN
    IF NOT EXISTS (SELECT FROM pgml.model_versions m WHERE m.name = model_name) THEN
        RAISE EXCEPTION 'no model named "%"', model_name
            USING ERRCODE = '42704', HINT = 'List them: SELECT DISTINCT name FROM pgml.models.';
    END IF;
    SELECT * INTO current FROM pgml.deployed_models d WHERE d.name = model_name;
    CASE strategy
    WHEN 'most_recent' THEN
        SELECT max(version) INTO chosen FROM pgml.model_versions m WHERE m.name = model_name;
    WHEN 'best_score' THEN
        SELECT m.version INTO chosen FROM pgml.model_versions m
        WHERE m.name = model_name
          AND (current IS NULL OR (m.task = current.task AND m.y_column = current.y_column
                                   AND m.relation = current.relation
                                   AND pgml._feature_names(m.features) = pgml._feature_names(current.features)))
        ORDER BY coalesce((m.metrics ->> CASE m.task WHEN 'regression' THEN 'r2' ELSE 'f1' END)::float8,
                          '-Infinity') DESC, m.version DESC
        LIMIT 1;
    WHEN 'rollback' THEN
        SELECT d.version INTO chosen FROM pgml.deployments d
        WHERE d.name = model_name AND d.version <> current.version
        ORDER BY d.id DESC LIMIT 1;
        IF chosen IS NULL THEN
            RAISE EXCEPTION 'model "%" has no earlier deployment to roll back to', model_name
                USING ERRCODE = '22023', HINT = 'Deploy a version by number: SELECT pgml.deploy(name, version).';
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown deployment strategy "%"', strategy
            USING ERRCODE = '22023', HINT = 'Use best_score, most_recent or rollback, or give a version number.';
    END CASE;
    RETURN chosen;
END
$$;

-- Deploy a version of a model by strategy (see pgml._choose_version). Returns its id.
CREATE OR REPLACE FUNCTION pgml.deploy(name text, strategy text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chosen integer;
BEGIN
    PERFORM pgml._refuse_on_standby('deploy');
    chosen := pgml._choose_version(deploy.name, strategy);
    INSERT INTO pgml.deployments (name, version, strategy) VALUES (deploy.name, chosen, strategy);
    RETURN deploy.name || '_' || chosen;
END
$$;

-- Deploy a given version of a model. Returns its id.
CREATE OR REPLACE FUNCTION pgml.deploy(name text, version integer) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pgml._refuse_on_standby('deploy');
    IF NOT pgml._version_exists(deploy.name, deploy.version) THEN
        RAISE EXCEPTION 'model "%" has no version %', deploy.name, deploy.version
            USING ERRCODE = '42704', HINT = 'List its versions: SELECT id, version, metrics FROM pgml.models WHERE name = ''' || deploy.name || '''.';
    END IF;
    INSERT INTO pgml.deployments (name, version, strategy) VALUES (deploy.name, deploy.version, 'version');
    RETURN deploy.name || '_' || deploy.version;
END
$$;

CREATE FUNCTION pgml._version_exists(model_name text, model_version integer) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM pgml.model_versions m WHERE m.name = model_name AND m.version = model_version)
$$;

-- One row per model version, newest first, with its name's owner.
CREATE OR REPLACE VIEW pgml.models AS
SELECT m.id, m.name, m.version, m.task, m.algorithm, m.relation, m.y_column,
       d.version IS NOT NULL AS deployed,
       m.metrics, m.hyperparams, m.train_rows, m.test_rows, m.duration,
       m.trained_by, m.trained_at, m.search IS NOT NULL AS searched, n.owner
FROM pgml.model_versions m
JOIN pgml.model_names n ON n.name = m.name
LEFT JOIN pgml.deployed_models d ON d.id = m.id
ORDER BY m.name, m.version DESC;

-------------------------------------------------------------------------------------------------------
-- Keeping models. DROP EXTENSION would drop the model tables with it: refused while they hold a
-- model. PostgreSQL does not tell an event trigger which extension a DROP names, so the statement's
-- text decides: it is refused when it names pgml_fdw or multicorn (which pgml_fdw needs, and whose
-- DROP ... CASCADE would take it along), the schema of either (pgml; public, for multicorn), or
-- the owner of their objects (DROP OWNED).
-------------------------------------------------------------------------------------------------------
CREATE FUNCTION pgml._keep_models() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    versions bigint;
    -- What would take the models along: the extensions, their schemas, their owner's objects.
    names text := (SELECT string_agg(DISTINCT regexp_replace(x, '([^A-Za-z0-9_])', '\\\1', 'g'), '|')
                   FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                   JOIN pg_roles r ON r.oid = e.extowner,
                   LATERAL (VALUES (e.extname), (n.nspname), (CASE WHEN TG_TAG = 'DROP OWNED' THEN r.rolname END)) v(x)
                   WHERE e.extname IN ('pgml_fdw', 'multicorn') AND x IS NOT NULL);
BEGIN
    IF current_query() !~* ('\m(' || names || ')\M') THEN
        RETURN;
    END IF;
    SELECT count(*) INTO versions FROM pgml.model_versions;
    IF versions > 0 THEN
        RAISE EXCEPTION '% would delete the % model versions of pgml_fdw', TG_TAG, versions
            USING ERRCODE = '2BP01',
                  DETAIL = 'The models live in the extension''s tables (pgml.model_names, model_versions, model_estimators, deployments).',
                  HINT = 'To upgrade, use ALTER EXTENSION pgml_fdw UPDATE, which keeps them. To keep a copy: '
                         'pg_dump --data-only --schema=pgml. To delete them: TRUNCATE pgml.model_names CASCADE, then drop.';
    END IF;
END
$$;
CREATE EVENT TRIGGER pgml_fdw_keep_models ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION pgml._keep_models();

-------------------------------------------------------------------------------------------------------
-- Privileges (see also 0.1.0's). The role pgml_fdw loads models; the internal functions run in
-- callers' queries (pgml._context in pgml.predictions, pgml._resolve in the scoring functions).
-------------------------------------------------------------------------------------------------------
GRANT USAGE ON SCHEMA pgml TO pgml_fdw;
GRANT SELECT ON pgml.model_names, pgml.model_versions, pgml.model_estimators, pgml.deployments TO pgml_fdw;
GRANT SELECT ON pgml._generation TO PUBLIC;  -- random uuids, read by pgml._context as the caller
REVOKE ALL ON FUNCTION pgml._note_change(), pgml._publish_changes(), pgml._publish(), pgml._check_deployment(),
    pgml._train(), pgml._keep_models() FROM PUBLIC;
