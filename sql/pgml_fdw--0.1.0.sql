-- pgml_fdw 0.1.0: train and serve scikit-learn models from SQL.
--
--   INSERT INTO pgml.training_runs (relation, y_column) VALUES ('my_data', 'total_purchases');
--   SELECT prediction FROM pgml.predictions WHERE model = 'my_data' AND features = '{"age": 31}';
--
-- Training and prediction happen in Python, inside this database's backend, through the Multicorn
-- wrapper pgml_fdw.fdw.PgmlWrapper. Everything else (the model store, versions, deployments, who may
-- do what) is ordinary SQL, below.
\echo Use "CREATE EXTENSION pgml_fdw CASCADE" to load this file. \quit

-------------------------------------------------------------------------------------------------------
-- The server. The wrapper reads training data and stores nothing itself: it talks back to this very
-- database through the dsn below (libpq syntax), built from this server's socket, port and database
-- and the role that created the extension. That role needs to log in over that socket without a
-- password (peer or trust in pg_hba.conf); if yours cannot, change the dsn:
--   ALTER SERVER pgml OPTIONS (SET dsn 'host=... port=... dbname=... user=... passfile=...');
-------------------------------------------------------------------------------------------------------
DO $$
DECLARE
    socket_dir text := split_part(current_setting('unix_socket_directories'), ',', 1);
BEGIN
    EXECUTE format(
        'CREATE SERVER pgml FOREIGN DATA WRAPPER multicorn OPTIONS (wrapper %L, dsn %L)',
        'pgml_fdw.fdw.PgmlWrapper',
        format('host=%s port=%s dbname=%s user=%s application_name=pgml_fdw',
               CASE WHEN socket_dir = '' THEN 'localhost' ELSE trim(socket_dir) END,
               current_setting('port'), quote_ident(current_database()), quote_ident(current_user)));
END
$$;

-------------------------------------------------------------------------------------------------------
-- The model store. Every training run is a new, immutable version of a model name. These are plain
-- tables, dumped by pg_dump with the database.
-------------------------------------------------------------------------------------------------------
CREATE TABLE pgml.model_versions (
    id           text PRIMARY KEY,              -- name_version, e.g. my_data_3: what predictions accept
    name         text NOT NULL,
    version      integer NOT NULL CHECK (version > 0),
    task         text NOT NULL CHECK (task IN ('regression', 'classification')),
    algorithm    text NOT NULL,
    relation     text NOT NULL,                 -- the table or view it was trained on
    y_column     text NOT NULL,
    features     jsonb NOT NULL,                -- [{name, type, kind, preprocess...}] in training order
    classes      jsonb,                         -- classification: the labels, in their original form
    hyperparams  jsonb NOT NULL,                -- every hyperparameter of the fitted estimator
    search       jsonb,                         -- hyperparameter search: method, folds, every candidate
    metrics      jsonb NOT NULL,                -- measured on the held-out split
    importance   jsonb,                         -- {"method": ..., "columns": {column: value}}
    train_rows   integer NOT NULL,
    test_rows    integer NOT NULL,
    duration     interval NOT NULL,
    peak_memory  bigint,                        -- bytes the training used at most (see pgml.training_memory)
    trained_by   name NOT NULL,
    trained_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);
COMMENT ON TABLE pgml.model_versions IS 'Every trained model version and its metadata; pgml.models is the friendly view.';

CREATE TABLE pgml.model_estimators (
    model_id     text PRIMARY KEY REFERENCES pgml.model_versions (id) ON DELETE CASCADE,
    estimator    bytea NOT NULL                 -- the pickled preprocessing and scikit-learn estimator
);
COMMENT ON TABLE pgml.model_estimators IS 'The serialized model of each version. Kept apart so that listing models stays cheap.';

CREATE TABLE pgml.deployments (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    version      integer NOT NULL,
    strategy     text NOT NULL,                 -- auto, best_score, most_recent, rollback or version
    deployed_by  name NOT NULL DEFAULT current_user,
    deployed_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (name, version) REFERENCES pgml.model_versions (name, version) ON DELETE CASCADE
);
CREATE INDEX ON pgml.deployments (name, id);
COMMENT ON TABLE pgml.deployments IS 'Deployment history: the newest row of a name says which version answers for it.';

SELECT pg_catalog.pg_extension_config_dump('pgml.model_versions', '');
SELECT pg_catalog.pg_extension_config_dump('pgml.model_estimators', '');
SELECT pg_catalog.pg_extension_config_dump('pgml.deployments', '');
SELECT pg_catalog.pg_extension_config_dump('pgml.deployments_id_seq', '');

-------------------------------------------------------------------------------------------------------
-- Errors. The wrapper never raises an error itself: raising from Python would jump over the Python
-- interpreter's frames, and enough of those jumps crash the backend. It hands the error back as a
-- row ({"sqlstate", "message", "hint", "detail"}) and the SQL below raises it.
-------------------------------------------------------------------------------------------------------
-- STABLE, so that the views that call it stay simple views PostgreSQL can merge into a query.
-- COST 1: it runs at most once per statement, and its default cost, counted for every row a view
-- could return, would make PostgreSQL JIT-compile queries over whole relations.
CREATE FUNCTION pgml._raise(error jsonb, result_type anyelement) RETURNS anyelement
LANGUAGE plpgsql STABLE COST 1 SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state text := coalesce(error ->> 'sqlstate', 'XX000');
    message text := coalesce(error ->> 'message', 'pgml_fdw failed');
    detail text := error ->> 'detail';
    hint text := error ->> 'hint';
BEGIN
    -- A statement the wrapper gave up on because it was cancelled: PostgreSQL raises its own
    -- cancel or termination error at the start of this statement, before anything below.
    PERFORM pg_catalog.pg_sleep(0);
    IF detail IS NOT NULL AND hint IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, DETAIL = detail, HINT = hint;
    ELSIF hint IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, HINT = hint;
    ELSIF detail IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, DETAIL = detail;
    END IF;
    RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message;
END
$$;

-- 0 when there is no error, else raises it. Inlined into the query that calls it, so a row without
-- an error costs one NULL test; written as "= 0" in conditions so that Multicorn passes it over.
CREATE FUNCTION pgml._check(error jsonb) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN error IS NULL THEN 0 ELSE pgml._raise(error, 0) END
$$;

-- Multicorn cannot take rows from COPY (it crashes the backend), and the wrapper's tables are only
-- written through the extension's own functions: every direct write is refused, COPY included.
CREATE FUNCTION pgml._refuse_writes() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- pgml._train inserts into pgml._training_runs from inside a trigger; nothing else may.
    IF TG_TABLE_NAME = '_training_runs' AND TG_OP = 'INSERT' AND pg_trigger_depth() > 1 THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'pgml.% cannot be written to directly', TG_TABLE_NAME
        USING ERRCODE = '42809',
              HINT = 'Train with INSERT INTO pgml.training_runs or pgml.train(); everything else is read-only.';
END
$$;

-------------------------------------------------------------------------------------------------------
-- The foreign tables: the wrapper's face. pgml.algorithms is read directly; the others are internal
-- and read through the views and functions below, which raise the errors the wrapper hands back.
-------------------------------------------------------------------------------------------------------

-- One row per training run: the request in, the run's results (or its error) out.
CREATE FOREIGN TABLE pgml._training_runs (
    id            text,
    name          text,
    version       integer,
    relation      text,
    y_column      text,
    algorithm     text,
    task          text,
    hyperparams   jsonb,
    search        text,
    search_params jsonb,
    search_folds  integer,
    preprocess    jsonb,
    test_size     double precision,
    test_sampling text,
    deploy        boolean,
    metrics       jsonb,
    train_rows    integer,
    test_rows     integer,
    duration      interval,
    peak_memory   bigint,
    trained_by    name,
    trained_at    timestamptz,
    token         text,             -- hands the trained estimator to pgml._trained_estimators
    memory_limit  bigint,           -- bytes one run may use (pgml.training_memory), 0: the default
    error         jsonb
) SERVER pgml OPTIONS (table 'training_runs');

-- Predictions, read through the view pgml.predictions.
CREATE FOREIGN TABLE pgml._predictions (
    model         text,
    features      jsonb,
    prediction    double precision,
    label         text,
    probabilities jsonb,
    version       integer,
    relation      text,
    key_column    text,
    key           text,
    error         jsonb
) SERVER pgml OPTIONS (table 'predictions');

-- The algorithms a run can name, per task, with their default hyperparameters.
CREATE FOREIGN TABLE pgml.algorithms (
    name          text,
    task          text,
    estimator     text,
    description   text,
    needs_scaling boolean,
    hyperparams   jsonb
) SERVER pgml OPTIONS (table 'algorithms');

-- Internal: a training run hands its estimator to pgml._train through this table.
CREATE FOREIGN TABLE pgml._trained_estimators (
    token         text,
    estimator     bytea,
    details       jsonb             -- features, classes, hyperparams, search, importance
) SERVER pgml OPTIONS (table 'trained_estimators');

-- Internal: scanned when a deployment changes, so this session's own next query sees it at once.
CREATE FOREIGN TABLE pgml._model_cache (
    name          text,
    model         text,
    txid          bigint
) SERVER pgml OPTIONS (table 'model_cache');

CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE OR DELETE ON pgml._training_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._refuse_writes();
CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE OR DELETE ON pgml._predictions
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._refuse_writes();
CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE OR DELETE ON pgml.algorithms
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._refuse_writes();
CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE OR DELETE ON pgml._trained_estimators
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._refuse_writes();
CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE OR DELETE ON pgml._model_cache
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._refuse_writes();
-- Also under session_replication_role = replica: Multicorn would crash on a COPY all the same.
ALTER FOREIGN TABLE pgml._training_runs ENABLE ALWAYS TRIGGER refuse_writes;
ALTER FOREIGN TABLE pgml._predictions ENABLE ALWAYS TRIGGER refuse_writes;
ALTER FOREIGN TABLE pgml.algorithms ENABLE ALWAYS TRIGGER refuse_writes;
ALTER FOREIGN TABLE pgml._trained_estimators ENABLE ALWAYS TRIGGER refuse_writes;
ALTER FOREIGN TABLE pgml._model_cache ENABLE ALWAYS TRIGGER refuse_writes;

-- Predict by SELECT: WHERE model = ... AND features = ... gives one row. model is a name (its deployed
-- version) or a version's id (name_version). features is a jsonb object keyed by column name or an
-- array in training order, given as a constant or a query parameter. Or score a whole table at once:
--   WHERE model = ... AND relation = 'my_table' AND key_column = 'id'
-- gives one row per row of my_table, with its key_column value in key. To score the rows of another
-- table one by one, use pgml.prediction(model, features) in a LATERAL join, or pgml.score().
-- Every output column raises the wrapper's error, so a condition on one cannot hide it.
CREATE VIEW pgml.predictions AS
SELECT p.model, p.features,
       CASE WHEN p.error IS NULL THEN p.prediction ELSE pgml._raise(p.error, p.prediction) END AS prediction,
       CASE WHEN p.error IS NULL THEN p.label ELSE pgml._raise(p.error, p.label) END AS label,
       CASE WHEN p.error IS NULL THEN p.probabilities ELSE pgml._raise(p.error, p.probabilities) END AS probabilities,
       CASE WHEN p.error IS NULL THEN p.version ELSE pgml._raise(p.error, p.version) END AS version,
       p.relation, p.key_column,
       CASE WHEN p.error IS NULL THEN p.key ELSE pgml._raise(p.error, p.key) END AS key
FROM pgml._predictions p
WHERE pgml._check(p.error) = 0;
COMMENT ON VIEW pgml.predictions IS 'Predictions: WHERE model = ... AND features = ... (one row), or AND relation = ... (a whole table).';

-------------------------------------------------------------------------------------------------------
-- Training runs belong to the caller's transaction: pgml._identify_trainer checks the request as
-- the caller, pgml._train has the wrapper train and stores the version, all in one transaction.
-------------------------------------------------------------------------------------------------------

-- Train by INSERT: one row, one run. Give relation and y_column; everything else has a default.
-- The columns from metrics on are filled in by the run and returned by INSERT ... RETURNING *.
-- SELECT lists every stored run.
CREATE VIEW pgml.training_runs AS
SELECT m.id, m.name, m.version, m.relation, m.y_column, m.algorithm, m.task, m.hyperparams,
       m.search ->> 'method' AS search,
       NULL::jsonb AS search_params,    -- grid or random search: e.g. '{"max_depth": [3, 5, null]}'
       (m.search ->> 'folds')::integer AS search_folds,
       NULL::jsonb AS preprocess,       -- per column, e.g. '{"age": {"impute": "median", "scale": "min_max"}}'
       NULL::double precision AS test_size,   -- held-out fraction (default 0.25)
       NULL::text AS test_sampling,     -- random (default) or last: the last rows, for time-ordered data
       NULL::boolean AS deploy,         -- deploy when it beats the deployed version (default true)
       m.metrics, m.train_rows, m.test_rows, m.duration, m.peak_memory, m.trained_by, m.trained_at
FROM pgml.model_versions m;
ALTER VIEW pgml.training_runs ALTER COLUMN algorithm SET DEFAULT 'linear';
ALTER VIEW pgml.training_runs ALTER COLUMN deploy SET DEFAULT true;
COMMENT ON VIEW pgml.training_runs IS 'INSERT (relation, y_column, ...) trains a model version; SELECT lists them.';

-- The next version number of a name, counting this transaction's own uncommitted versions.
CREATE FUNCTION pgml._next_version(model_name text) RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(max(version), 0) + 1 FROM pgml.model_versions WHERE name = model_name
$$;

-- The bytes one training run may use: pgml.training_memory (e.g. SET pgml.training_memory = '2GB'),
-- or 0 for the wrapper's default, a quarter of the server's memory.
CREATE FUNCTION pgml._training_memory() RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    setting text := nullif(current_setting('pgml.training_memory', true), '');
    bytes bigint;
BEGIN
    IF setting IS NULL THEN
        RETURN 0;
    END IF;
    BEGIN
        bytes := pg_size_bytes(setting);
    EXCEPTION WHEN invalid_parameter_value OR numeric_value_out_of_range THEN
        RAISE EXCEPTION 'pgml.training_memory is not a size: %', setting
            USING ERRCODE = '22023', HINT = 'For example: SET pgml.training_memory = ''2GB''.';
    END;
    IF bytes <= 0 THEN
        RAISE EXCEPTION 'pgml.training_memory must be positive, not %', setting
            USING ERRCODE = '22023', HINT = 'For example: SET pgml.training_memory = ''2GB''.';
    END IF;
    RETURN bytes;
END
$$;

-- Two INSTEAD OF triggers of pgml.training_runs, fired in name order; each hands NEW to the next.
-- The first runs as the caller and with the caller's search_path, which names the relation: it
-- records who trains and checks that they may read it. The second runs as the extension owner,
-- trusting only trained_by (which the first always sets, and which nothing else can reach: nobody
-- may attach these functions to a table of their own).
CREATE FUNCTION pgml._identify_trainer() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
BEGIN
    NEW.trained_by := current_user;
    IF NEW.relation IS NULL OR NEW.y_column IS NULL THEN
        RAISE EXCEPTION 'a training run needs relation and y_column'
            USING ERRCODE = '22023',
                  HINT = 'INSERT INTO pgml.training_runs (relation, y_column) VALUES (''my_view'', ''column_to_predict'')';
    END IF;
    BEGIN
        rel := to_regclass(NEW.relation);
    EXCEPTION WHEN OTHERS THEN  -- a name that does not even parse
        rel := NULL;
    END;
    IF rel IS NULL THEN
        RAISE EXCEPTION 'relation "%" does not exist', NEW.relation
            USING ERRCODE = '42P01',
                  HINT = 'Name a table or view you can SELECT from, schema-qualified if it is not on your search_path.';
    END IF;
    -- Schema-qualified: the wrapper's connection, and the next trigger, have their own search_path.
    SELECT format('%I.%I', n.nspname, c.relname) INTO NEW.relation
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
    RETURN NEW;
END
$$;

-- Trains and stores one run. Checks again, as trained_by, everything it does not take on trust.
CREATE FUNCTION pgml._train() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel regclass := to_regclass(NEW.relation);
    trained record;
    estimator record;
    current record;
    key_metric text;
    token text;
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
    NEW.name := coalesce(NEW.name, (SELECT relname FROM pg_class WHERE oid = rel));
    IF NEW.name !~ '^[A-Za-z_][A-Za-z0-9_]*$' OR length(NEW.name) > 60 THEN
        RAISE EXCEPTION 'invalid model name "%"', NEW.name
            USING ERRCODE = '22023',
                  HINT = 'Use letters, digits and underscores, starting with a letter, at most 60 characters.';
    END IF;
    -- One run per name at a time, so that version numbers are handed out in order.
    PERFORM pg_advisory_xact_lock(hashtext('pgml_fdw:' || NEW.name));
    NEW.version := pgml._next_version(NEW.name);
    NEW.id := NEW.name || '_' || NEW.version;
    NEW.trained_at := now();
    token := txid_current()::text || ':' || gen_random_uuid()::text;

    INSERT INTO pgml._training_runs (id, name, version, relation, y_column, algorithm, task, hyperparams,
                                     search, search_params, search_folds, preprocess, test_size,
                                     test_sampling, deploy, trained_by, trained_at, token, memory_limit)
    VALUES (NEW.id, NEW.name, NEW.version, NEW.relation, NEW.y_column, coalesce(NEW.algorithm, 'linear'),
            NEW.task, NEW.hyperparams, NEW.search, NEW.search_params, NEW.search_folds, NEW.preprocess,
            NEW.test_size, NEW.test_sampling, NEW.deploy, NEW.trained_by, NEW.trained_at, token,
            pgml._training_memory())
    RETURNING * INTO trained;
    PERFORM pgml._check(trained.error);

    SELECT * INTO estimator FROM pgml._trained_estimators e WHERE e.token = trained.token;
    INSERT INTO pgml.model_versions (id, name, version, task, algorithm, relation, y_column, features,
                                     classes, hyperparams, search, metrics, importance, train_rows,
                                     test_rows, duration, peak_memory, trained_by, trained_at)
    SELECT NEW.id, NEW.name, NEW.version, trained.task, trained.algorithm, NEW.relation, NEW.y_column,
           d.features, d.classes, d.hyperparams, d.search, trained.metrics, d.importance,
           trained.train_rows, trained.test_rows, trained.duration, trained.peak_memory, NEW.trained_by,
           NEW.trained_at
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
    SELECT v.* INTO current FROM pgml.deployed_models v WHERE v.name = NEW.name;
    key_metric := CASE NEW.task WHEN 'regression' THEN 'r2' ELSE 'f1' END;
    IF current IS NULL
       OR (current.task = NEW.task AND current.y_column = NEW.y_column
           AND coalesce((NEW.metrics ->> key_metric)::float8, '-Infinity')
               > coalesce((current.metrics ->> key_metric)::float8, '-Infinity')) THEN
        INSERT INTO pgml.deployments (name, version, strategy, deployed_by)
        VALUES (NEW.name, NEW.version, 'auto', NEW.trained_by);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER a_identify_trainer INSTEAD OF INSERT ON pgml.training_runs
    FOR EACH ROW EXECUTE FUNCTION pgml._identify_trainer();
CREATE TRIGGER b_train INSTEAD OF INSERT ON pgml.training_runs
    FOR EACH ROW EXECUTE FUNCTION pgml._train();

-- Every backend caches models; a deployment tells them all (after commit) and this session at once.
CREATE FUNCTION pgml._deployment_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('pgml_models', NEW.name);
    PERFORM 1 FROM pgml._model_cache
     WHERE name = NEW.name AND model = NEW.name || '_' || NEW.version AND txid = txid_current();
    RETURN NULL;
END
$$;
CREATE TRIGGER deployment_changed AFTER INSERT ON pgml.deployments
    FOR EACH ROW EXECUTE FUNCTION pgml._deployment_changed();

-------------------------------------------------------------------------------------------------------
-- Views.
-------------------------------------------------------------------------------------------------------

-- The deployed version of each name: the newest deployment.
CREATE VIEW pgml.deployed_models AS
SELECT DISTINCT ON (d.name) m.*, d.deployed_by, d.deployed_at, d.strategy
FROM pgml.deployments d
JOIN pgml.model_versions m ON m.name = d.name AND m.version = d.version
ORDER BY d.name, d.id DESC;

-- One row per model version, newest first.
CREATE VIEW pgml.models AS
SELECT m.id, m.name, m.version, m.task, m.algorithm, m.relation, m.y_column,
       d.version IS NOT NULL AS deployed,
       m.metrics, m.hyperparams, m.train_rows, m.test_rows, m.duration,
       m.trained_by, m.trained_at, m.search IS NOT NULL AS searched
FROM pgml.model_versions m
LEFT JOIN pgml.deployed_models d ON d.id = m.id
ORDER BY m.name, m.version DESC;

-- One row per feature of each version: its type, preprocessing and importance.
CREATE VIEW pgml.features AS
SELECT m.id AS model, m.name, m.version, f.ordinality::integer AS position,
       f.value ->> 'name' AS feature, f.value ->> 'type' AS type, f.value -> 'preprocess' AS preprocess,
       (m.importance -> 'columns' ->> (f.value ->> 'name'))::float8 AS importance,
       m.importance ->> 'method' AS importance_method
FROM pgml.model_versions m, jsonb_array_elements(m.features) WITH ORDINALITY f
ORDER BY m.name, m.version DESC, f.ordinality;

-------------------------------------------------------------------------------------------------------
-- SQL functions: the short forms.
-------------------------------------------------------------------------------------------------------

-- Train a model; returns the new version's id (e.g. my_data_1). Named arguments give the options
-- of pgml.training_runs: SELECT pgml.train('my_data', 'y', 'random_forest', hyperparams => '{...}').
CREATE FUNCTION pgml.train(
    relation text, y_column text, algorithm text DEFAULT 'linear', name text DEFAULT NULL,
    task text DEFAULT NULL, hyperparams jsonb DEFAULT NULL, search text DEFAULT NULL,
    search_params jsonb DEFAULT NULL, search_folds integer DEFAULT NULL, preprocess jsonb DEFAULT NULL,
    test_size double precision DEFAULT NULL, test_sampling text DEFAULT NULL, deploy boolean DEFAULT true)
RETURNS text LANGUAGE sql AS $$
    INSERT INTO pgml.training_runs (relation, y_column, algorithm, name, task, hyperparams, search,
                                    search_params, search_folds, preprocess, test_size, test_sampling, deploy)
    VALUES (relation, y_column, algorithm, name, task, hyperparams, search, search_params,
            search_folds, preprocess, test_size, test_sampling, deploy)
    RETURNING id
$$;

-- The version id a model name or id stands for, in the caller's snapshot (so a version deployed
-- earlier in the same transaction counts). An id is returned as it is.
CREATE FUNCTION pgml._resolve(model text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found text;
BEGIN
    SELECT id INTO found FROM pgml.deployed_models WHERE name = model;
    IF found IS NULL THEN
        SELECT id INTO found FROM pgml.model_versions WHERE id = model;
    END IF;
    IF found IS NULL THEN
        RAISE EXCEPTION 'no model named "%"', model
            USING ERRCODE = '42704',
                  HINT = 'Train one with pgml.train, or list them: SELECT id, deployed FROM pgml.models.';
    END IF;
    RETURN found;
END
$$;

-- One feature value of any type, or a row of them, as the jsonb that pgml.predictions takes.
-- ROW(a, b) becomes an array in that order; a table row or a record with named fields, an object.
CREATE FUNCTION pgml._features(features anyelement) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j jsonb := to_jsonb(features);
BEGIN
    IF jsonb_typeof(j) = 'object'
       AND (SELECT bool_and(key = 'f' || ordinality) FROM jsonb_each(j) WITH ORDINALITY) THEN
        RETURN (SELECT jsonb_agg(value ORDER BY ordinality) FROM jsonb_each(j) WITH ORDINALITY);
    ELSIF jsonb_typeof(j) IN ('object', 'array') AND pg_typeof(features) IN ('jsonb'::regtype, 'json'::regtype) THEN
        RETURN j;
    ELSIF jsonb_typeof(j) = 'object' THEN
        RETURN j;
    END IF;
    RETURN jsonb_build_array(j);
END
$$;

-- Scoring functions, one row of features per call: in a select list (pgml.score), or in a LATERAL
-- join (pgml.prediction). Their COST is set low on purpose: PostgreSQL cannot compile Python, so
-- counting a prediction at its true cost would only make it JIT-compile every query that scores
-- many rows, which costs far more than it saves.

-- Every column of a prediction for one row of features: a jsonb object or array, one value of any
-- type, or a row. Use it where a query needs more than the value:
--   SELECT u.id, p.label, p.probabilities FROM users u
--   CROSS JOIN LATERAL pgml.prediction('churn', jsonb_build_object('plan', u.plan, 'seats', u.seats)) p;
CREATE FUNCTION pgml.prediction(model text, features jsonb)
RETURNS TABLE (prediction double precision, label text, probabilities jsonb, version integer)
LANGUAGE plpgsql STABLE ROWS 1 COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    resolved text := pgml._resolve(model);  -- once: as a condition of the query it would run twice
BEGIN
    RETURN QUERY
    SELECT p.prediction, p.label, p.probabilities, p.version
    FROM pgml.predictions p WHERE p.model = resolved AND p.features = prediction.features;
END
$$;

CREATE FUNCTION pgml.prediction(model text, features anyelement)
RETURNS TABLE (prediction double precision, label text, probabilities jsonb, version integer)
LANGUAGE sql STABLE ROWS 1 COST 10 AS $$ SELECT * FROM pgml.prediction(model, pgml._features(features)) $$;

-- The prediction for one row of features: pgml.score('my_data_1', '2 years'::interval),
-- pgml.score('m', ROW(31, 'Paris')), pgml.score('m', '{"age": 31}'::jsonb). Regression gives the
-- value; classification the class, when classes are numbers or booleans (use pgml.classify for
-- text classes).
CREATE FUNCTION pgml.score(model text, features jsonb) RETURNS double precision
LANGUAGE plpgsql STABLE COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    resolved text := pgml._resolve(model);  -- once: as a condition of the query it would run twice
    answer record;
BEGIN
    SELECT p.prediction, p.label INTO answer
    FROM pgml.predictions p WHERE p.model = resolved AND p.features = score.features;
    IF answer.prediction IS NULL AND answer.label IS NOT NULL THEN
        RAISE EXCEPTION 'model "%" predicts text classes, which pgml.score cannot return as a number', model
            USING ERRCODE = '22023', HINT = 'Use pgml.classify(model, features) for the class as text.';
    END IF;
    RETURN answer.prediction;
END
$$;

CREATE FUNCTION pgml.score(model text, features anyelement) RETURNS double precision
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml.score(model, pgml._features(features)) $$;

-- The predicted class as text, for classification models.
CREATE FUNCTION pgml.classify(model text, features jsonb) RETURNS text
LANGUAGE plpgsql STABLE COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    resolved text := pgml._resolve(model);  -- once: as a condition of the query it would run twice
    answer record;
BEGIN
    SELECT p.prediction, p.label INTO answer
    FROM pgml.predictions p WHERE p.model = resolved AND p.features = classify.features;
    IF answer.label IS NULL THEN
        RAISE EXCEPTION 'model "%" is a regression model', model
            USING ERRCODE = '22023', HINT = 'Use pgml.score(model, features) for its prediction.';
    END IF;
    RETURN answer.label;
END
$$;

CREATE FUNCTION pgml.classify(model text, features anyelement) RETURNS text
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml.classify(model, pgml._features(features)) $$;

-- The probability of each class, {class: probability}, for classification models.
CREATE FUNCTION pgml.predict_proba(model text, features jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    resolved text := pgml._resolve(model);  -- once: as a condition of the query it would run twice
    answer record;
BEGIN
    SELECT p.label, p.probabilities INTO answer
    FROM pgml.predictions p WHERE p.model = resolved AND p.features = predict_proba.features;
    IF answer.label IS NULL THEN
        RAISE EXCEPTION 'model "%" is a regression model and has no class probabilities', model
            USING ERRCODE = '22023', HINT = 'Use pgml.score(model, features) for its prediction.';
    END IF;
    IF answer.probabilities IS NULL THEN
        RAISE EXCEPTION 'the algorithm of model "%" gives no probabilities', model
            USING ERRCODE = '22023',
                  HINT = 'Train it with an algorithm that does, for instance linear or random_forest.';
    END IF;
    RETURN answer.probabilities;
END
$$;

CREATE FUNCTION pgml.predict_proba(model text, features anyelement) RETURNS jsonb
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml.predict_proba(model, pgml._features(features)) $$;

-- Deploy a version of a model by strategy: best_score (the best key metric among versions with the
-- deployed version's task and y column), most_recent, or rollback (the version deployed before the
-- current one). Returns the deployed version's id. Runs as the caller, who needs SELECT on
-- pgml.model_versions and pgml.deployments and INSERT on pgml.deployments.
CREATE FUNCTION pgml.deploy(name text, strategy text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    model_name text := name;
    current record;
    chosen integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgml.model_versions m WHERE m.name = model_name) THEN
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
          AND (current IS NULL OR (m.task = current.task AND m.y_column = current.y_column))
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
    INSERT INTO pgml.deployments (name, version, strategy, deployed_by)
    VALUES (model_name, chosen, strategy, current_user);
    RETURN model_name || '_' || chosen;
END
$$;

-- Deploy a given version of a model. Returns its id.
CREATE FUNCTION pgml.deploy(name text, version integer) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    model_name text := name;
    model_version integer := version;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgml.model_versions m WHERE m.name = model_name AND m.version = model_version) THEN
        RAISE EXCEPTION 'model "%" has no version %', model_name, model_version
            USING ERRCODE = '42704', HINT = 'List its versions: SELECT id, version, metrics FROM pgml.models WHERE name = ''' || model_name || '''.';
    END IF;
    INSERT INTO pgml.deployments (name, version, strategy, deployed_by)
    VALUES (model_name, model_version, 'version', current_user);
    RETURN model_name || '_' || model_version;
END
$$;

-------------------------------------------------------------------------------------------------------
-- Privileges. Nothing is granted to PUBLIC but the algorithm list: an administrator decides who may
-- train (INSERT on training_runs, plus SELECT on the data), who may predict (SELECT on predictions),
-- who may deploy (INSERT on deployments) and who may read model metadata (the views). See README.
-------------------------------------------------------------------------------------------------------
GRANT USAGE ON SCHEMA pgml TO PUBLIC;
GRANT SELECT ON pgml.algorithms TO PUBLIC;
-- The trigger functions are nobody's to attach elsewhere; pgml._raise and pgml._check run in the
-- callers' queries, pgml._next_version and pgml._training_memory in pgml._identify_trainer's.
REVOKE ALL ON FUNCTION pgml._deployment_changed(), pgml._refuse_writes(), pgml._identify_trainer(),
    pgml._train() FROM PUBLIC;
