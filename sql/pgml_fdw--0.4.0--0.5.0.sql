-- pgml_fdw 0.4.0 -> 0.5.0: PostgresML's algorithms, SQL, preprocessing, clustering and explanations.
--
-- Run by ALTER EXTENSION pgml_fdw UPDATE, and by CREATE EXTENSION after the earlier scripts. Each
-- section below is one part of 0.5.0.
\echo Use "ALTER EXTENSION pgml_fdw UPDATE TO '0.5.0'" to load this file. \quit

-- ==== preprocessing ====
-- PostgresML's preprocessing and training options (pgml_fdw/preprocessing.py, training.py and
-- search.py): "encode" target and an explicit ordinal order, "impute" min, max, zero and error,
-- "scale" max_abs and robust (and their spellings: mode, preserve, native), test_sampling first,
-- and search_args ('{"n_iter": 20, "cv": 5}'). search_args is a training option like search_folds:
-- INSERT INTO pgml.training_runs (..., search_args) hands it to the wrapper through pgml._train and
-- pgml._training_runs; the wrapper stores it with the run's search ("args" of
-- pgml.model_versions.search), which pgml.training_runs shows.
-------------------------------------------------------------------------------------------------------
ALTER FOREIGN TABLE pgml._training_runs ADD COLUMN search_args jsonb;

-- 0.1.0's view, and search_args last (a view's columns keep their order: new ones go at the end).
CREATE OR REPLACE VIEW pgml.training_runs AS
SELECT m.id, m.name, m.version, m.relation, m.y_column, m.algorithm, m.task, m.hyperparams,
       m.search ->> 'method' AS search,
       NULL::jsonb AS search_params,    -- grid or random search: e.g. '{"max_depth": [3, 5, null]}'
       (m.search ->> 'folds')::integer AS search_folds,
       NULL::jsonb AS preprocess,       -- per column, e.g. '{"age": {"impute": "median", "scale": "robust"}}'
       NULL::double precision AS test_size,   -- held-out fraction (default 0.25)
       NULL::text AS test_sampling,     -- random (default), or first or last: rows in the relation's order
       NULL::boolean AS deploy,         -- deploy when it beats the deployed version (default true)
       m.metrics, m.train_rows, m.test_rows, m.duration, m.peak_memory, m.trained_by, m.trained_at,
       m.search -> 'args' AS search_args  -- the search's n_iter (random search) and cv (folds): '{"n_iter": 20}'
FROM pgml.model_versions m;
COMMENT ON COLUMN pgml.training_runs.search_args IS
    'PostgresML''s search_args: {"n_iter": candidates of a random search (default 10), "cv": folds (search_folds)}.';
COMMENT ON COLUMN pgml.training_runs.test_sampling IS
    'random (default: a shuffle with seed 0, stratified by class), first or last: the first or last rows in the order the relation returns them (a view''s ORDER BY; a table''s physical order, which no query promises).';

-- 0.2.0's pgml._train, which also hands the wrapper search_args.
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


-- pgml.train takes search_args too, as its last parameter: every call of 0.4.0's keeps working (by
-- position or by name). A function's parameters cannot change in place, so it is made anew.
DROP FUNCTION pgml.train(text, text, text, text, text, jsonb, text, jsonb, integer, jsonb, double precision,
                         text, boolean);
-- Train a model; returns the new version's id (e.g. my_data_1). Named arguments give the options
-- of pgml.training_runs: SELECT pgml.train('my_data', 'y', 'random_forest', hyperparams => '{...}').
CREATE FUNCTION pgml.train(
    relation text, y_column text, algorithm text DEFAULT 'linear', name text DEFAULT NULL,
    task text DEFAULT NULL, hyperparams jsonb DEFAULT NULL, search text DEFAULT NULL,
    search_params jsonb DEFAULT NULL, search_folds integer DEFAULT NULL, preprocess jsonb DEFAULT NULL,
    test_size double precision DEFAULT NULL, test_sampling text DEFAULT NULL, deploy boolean DEFAULT true,
    search_args jsonb DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    new_id text;
BEGIN
    PERFORM pgml._refuse_on_standby('train');
    INSERT INTO pgml.training_runs (relation, y_column, algorithm, name, task, hyperparams, search,
                                    search_params, search_folds, search_args, preprocess, test_size,
                                    test_sampling, deploy)
    VALUES (train.relation, train.y_column, train.algorithm, train.name, train.task, train.hyperparams,
            train.search, train.search_params, train.search_folds, train.search_args, train.preprocess,
            train.test_size, train.test_sampling, train.deploy)
    RETURNING training_runs.id INTO new_id;
    RETURN new_id;
END
$$;
-- ==== end preprocessing ====
