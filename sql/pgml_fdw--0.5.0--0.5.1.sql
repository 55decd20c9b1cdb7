-- pgml_fdw 0.5.0 -> 0.5.1: a model's id is never given to two models, even when the run that took it
-- first rolled back.
--
-- Run by ALTER EXTENSION pgml_fdw UPDATE, and by CREATE EXTENSION after the earlier scripts.
\echo Use "ALTER EXTENSION pgml_fdw UPDATE TO '0.5.1'" to load this file. \quit

-------------------------------------------------------------------------------------------------------
-- Version numbers are taken like a sequence's values. Up to 0.5.0 a run counted its version in its
-- own transaction, so a run that rolled back (ROLLBACK, ROLLBACK TO SAVEPOINT, an error later in the
-- transaction) gave its number back, and the next run of the name got the id the first had already
-- returned to its caller: one id, two models. So did a name deleted and trained again. Now the wrapper
-- takes the number on a connection of its own and commits it at once (pgml_fdw/version_numbers.py):
-- a run that fails or rolls back leaves a gap in the numbers, as a serial column does, and no number
-- comes back, not even after the name is deleted.
-------------------------------------------------------------------------------------------------------
CREATE TABLE pgml.version_numbers (
    name  text PRIMARY KEY,                   -- a model name, present or deleted
    last  integer NOT NULL CHECK (last > 0)   -- the highest version number it was ever given
);
COMMENT ON TABLE pgml.version_numbers IS
    'The highest version number each model name was ever given, by runs committed or not; written by the wrapper alone, outside the caller''s transaction.';
INSERT INTO pgml.version_numbers (name, last)
SELECT name, versions FROM pgml.model_names WHERE versions > 0;
SELECT pg_catalog.pg_extension_config_dump('pgml.version_numbers', '');
-- The role that loads models takes the numbers (its own connection commits them).
GRANT SELECT, INSERT, UPDATE ON pgml.version_numbers TO pgml_fdw;

-- WHERE name = ... AND at_least = n takes the name's next number: n or more, and more than any it
-- was given; committed when the row is read, whatever becomes of the reader's transaction.
CREATE FOREIGN TABLE pgml._version_numbers (
    name      text,
    at_least  integer,
    version   integer,
    error     jsonb
) SERVER pgml OPTIONS (table 'version_numbers');
CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE OR DELETE ON pgml._version_numbers
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._refuse_writes();
ALTER FOREIGN TABLE pgml._version_numbers ENABLE ALWAYS TRIGGER refuse_writes;

-- The next version number of a model name, for pgml._train, which holds the name's lock: runs of a
-- name take their numbers one after the other. In the transaction that creates or updates the
-- extension, the wrapper's connection cannot see pgml.version_numbers yet (the version is NULL):
-- that transaction counts the number itself, since if it rolls back, nothing of it remains.
CREATE FUNCTION pgml._take_version(model_name text) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    least_version integer := (SELECT n.versions + 1 FROM pgml.model_names n WHERE n.name = model_name);
    taken record;
BEGIN
    SELECT v.version, v.error INTO taken FROM pgml._version_numbers v
    WHERE v.name = model_name AND v.at_least = least_version;
    PERFORM pgml._check(taken.error);
    IF taken.version IS NOT NULL THEN
        RETURN taken.version;
    END IF;
    INSERT INTO pgml.version_numbers AS v (name, last) VALUES (model_name, least_version)
    ON CONFLICT (name) DO UPDATE SET last = greatest(v.last + 1, EXCLUDED.last)
    RETURNING v.last INTO taken;
    RETURN taken.last;
END
$$;
REVOKE ALL ON FUNCTION pgml._take_version(text) FROM PUBLIC;

COMMENT ON COLUMN pgml.model_names.versions IS
    'The highest version number of the name when its last version was trained; numbers are taken from pgml.version_numbers, so rolled-back runs leave gaps and no number is given twice.';

-- 0.5.0's pgml._train, taking its version number from pgml._take_version.
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
    NEW.version := pgml._take_version(NEW.name);
    UPDATE pgml.model_names n SET versions = NEW.version WHERE n.name = NEW.name;
    NEW.id := NEW.name || '_' || NEW.version;
    NEW.trained_at := now();

    INSERT INTO pgml._training_runs (id, name, version, relation, y_column, algorithm, task, hyperparams,
                                     search, search_params, search_folds, search_args, preprocess, test_size,
                                     test_sampling, deploy, trained_by, trained_at, token, memory_limit)
    VALUES (NEW.id, NEW.name, NEW.version, NEW.relation, NEW.y_column, coalesce(NEW.algorithm, 'linear'),
            NEW.task, NEW.hyperparams, NEW.search, NEW.search_params, NEW.search_folds, NEW.search_args,
            NEW.preprocess, NEW.test_size, NEW.test_sampling, NEW.deploy, NEW.trained_by, NEW.trained_at,
            model_uid::text, pgml._training_memory())
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
    key_metric := pgml._key_metric(NEW.task);
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

