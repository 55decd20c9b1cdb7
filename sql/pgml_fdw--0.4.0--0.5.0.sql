-- pgml_fdw 0.4.0 -> 0.5.0: PostgresML's algorithms, SQL, preprocessing, clustering and explanations.
--
-- Run by ALTER EXTENSION pgml_fdw UPDATE, and by CREATE EXTENSION after the earlier scripts. Each
-- section below is one part of 0.5.0.
\echo Use "ALTER EXTENSION pgml_fdw UPDATE TO '0.5.0'" to load this file. \quit

-- ==== clustering ====
-------------------------------------------------------------------------------------------------------
-- Clustering and decomposition, PostgresML's unsupervised tasks: trained without y_column, every
-- column of the relation a feature.
--   SELECT pgml.train('customers', NULL, 'kmeans', hyperparams => '{"n_clusters": 4}');
--   SELECT pgml.score('customers', '{"age": 31, "visits": 4}'::jsonb);       -- the cluster, 0 to 3
--   SELECT pgml.train('pixels', NULL, 'pca', hyperparams => '{"n_components": 3}');
--   SELECT pgml.decompose('pixels', ROW(...));                              -- double precision[]
-- A clustering model predicts a cluster's number: prediction is the number, label the same as
-- text (a cluster is a class without a name), probabilities those of gaussian_mixture. A
-- decomposition model answers its components, an array, in the new column components of
-- pgml.predictions and through pgml.decompose; asked for a prediction (pgml.score...), it says so.
-------------------------------------------------------------------------------------------------------

-- Versions of the new tasks, trained without a y column (for clustering, a y_column is optional:
-- left out of the features, and compared with the clusters in the metrics). ALTER TABLE refuses a
-- table with trigger events pending: changes to models earlier in this transaction (an update
-- from 0.2.0 fills in their versions) publish now rather than at commit.
SET CONSTRAINTS pgml.publish_changes IMMEDIATE;
SET CONSTRAINTS pgml.publish_changes DEFERRED;
ALTER TABLE pgml.model_versions ALTER COLUMN y_column DROP NOT NULL;
ALTER TABLE pgml.model_versions DROP CONSTRAINT model_versions_task_check,
    ADD CONSTRAINT model_versions_task_check
        CHECK (task IN ('regression', 'classification', 'clustering', 'decomposition')),
    ADD CONSTRAINT model_versions_y_column_check
        CHECK (y_column IS NOT NULL OR task IN ('clustering', 'decomposition'));
COMMENT ON COLUMN pgml.model_versions.y_column IS
    'The column predicted; NULL for clustering and decomposition trained without one (a y_column given to clustering is not a feature: the metrics compare the clusters with it).';

-- The metric that ranks a task's versions, higher being better for each (PostgresML's names):
-- what auto-deploy and pgml.deploy(name, 'best_score') compare.
CREATE FUNCTION pgml._key_metric(task text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE task WHEN 'regression' THEN 'r2' WHEN 'classification' THEN 'f1'
                     WHEN 'clustering' THEN 'silhouette' WHEN 'decomposition' THEN 'cumulative_explained_variance' END
$$;

-- As 0.1.0's, but y_column may be NULL: the wrapper then trains clustering or decomposition (the
-- task given, or the algorithm's: kmeans, pca...), or says that the task needs one.
CREATE OR REPLACE FUNCTION pgml._identify_trainer() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
BEGIN
    NEW.trained_by := current_user;
    IF NEW.relation IS NULL THEN
        RAISE EXCEPTION 'a training run needs a relation'
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

-- pgml._train: in the preprocessing section below, with the key metric of every task.

-- As 0.2.0's, with the key metric of every task, and versions without y_column (NULL) counted as
-- trained on the same data as each other.
CREATE OR REPLACE FUNCTION pgml._choose_version(model_name text, strategy text) RETURNS integer
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
          AND (current IS NULL OR (m.task = current.task AND m.y_column IS NOT DISTINCT FROM current.y_column
                                   AND m.relation = current.relation
                                   AND pgml._feature_names(m.features) = pgml._feature_names(current.features)))
        ORDER BY coalesce((m.metrics ->> pgml._key_metric(m.task))::float8,
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

-- Predictions get a column for a decomposition's components: appended last, so that the view keeps
-- its columns in place (a backend still running the 0.4.0 package leaves it NULL).
ALTER FOREIGN TABLE pgml._predictions ADD COLUMN components double precision[];
CREATE OR REPLACE VIEW pgml.predictions AS
SELECT p.model, p.features,
       CASE WHEN p.error IS NULL THEN p.prediction ELSE pgml._raise(p.error, p.prediction) END AS prediction,
       CASE WHEN p.error IS NULL THEN p.label ELSE pgml._raise(p.error, p.label) END AS label,
       CASE WHEN p.error IS NULL THEN p.probabilities ELSE pgml._raise(p.error, p.probabilities) END AS probabilities,
       CASE WHEN p.error IS NULL THEN p.version ELSE pgml._raise(p.error, p.version) END AS version,
       p.relation, p.key_column,
       CASE WHEN p.error IS NULL THEN p.key ELSE pgml._raise(p.error, p.key) END AS key,
       CASE WHEN p.error IS NULL THEN p.components ELSE pgml._raise(p.error, p.components) END AS components
FROM pgml._predictions p
WHERE p.context = (SELECT pgml._context()) AND pgml._check(p.error) = 0;

-- A decomposition model's components for one row of features (as pgml.score takes them: a jsonb
-- object or array, one value of any type, or a row):
--   SELECT pgml.decompose('pixels', '{"p1": 0.5, "p2": 0.1}'::jsonb);
--   SELECT id, pgml.decompose('pixels', ROW(p1, p2)) FROM images;
-- For a whole table: SELECT key, components FROM pgml.predictions
--                    WHERE model = 'pixels' AND relation = 'public.images' AND key_column = 'id'.
CREATE FUNCTION pgml.decompose(model text, features jsonb) RETURNS double precision[]
LANGUAGE plpgsql STABLE COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    ref text := pgml._reference(model);  -- once: as a condition of the query it would run twice
    answer double precision[];
BEGIN
    SELECT p.components INTO answer
    FROM pgml.predictions p WHERE p.model = ref AND p.features = decompose.features;
    IF answer IS NULL THEN
        RAISE EXCEPTION 'model "%" is not a decomposition model', model
            USING ERRCODE = '22023',
                  HINT = 'pgml.decompose answers for models trained with task decomposition (pca); use pgml.score(model, features) for a prediction.';
    END IF;
    RETURN answer;
END
$$;

CREATE FUNCTION pgml.decompose(model text, features anyelement) RETURNS double precision[]
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml.decompose(model, pgml._features(features)) $$;
-- ==== end clustering ====

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

-- 0.2.0's pgml._train, which also hands the wrapper search_args and takes the key metric of every
-- task (pgml._key_metric, in the clustering section).
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

-- ==== explain ====
-------------------------------------------------------------------------------------------------------
-- Why this prediction? pgml.explain(model, features) splits one prediction into a base value and
-- each feature's contribution, which add up to what the model computed for the row
-- (pgml_fdw/explain.py): exactly the coefficient times the encoded value for linear models, exact
-- path-dependent TreeSHAP for scikit-learn's trees, forests and gradient boosting, and the
-- library's own contributions for xgboost and lightgbm.
--
-- Who may explain: whoever may predict (SELECT on pgml.predictions). An explanation says little more
-- than the predictions it explains: a linear model's contributions are its coefficients times the
-- row's values, which a predictor can read already (pgml._model_expressions) or work out from a few
-- predictions; a tree model's also use the share of training rows on each side of the splits the
-- row passes through, aggregates coarser than what the predictions of a fully grown tree already
-- give away (each leaf's training targets).
-------------------------------------------------------------------------------------------------------

-- One row per feature of the explanation of the prediction for WHERE model = uid AND features = ...,
-- after a row for the base; or one row holding the error.
CREATE FOREIGN TABLE pgml._explanations (
    model         text,
    features      jsonb,
    feature       text,
    value         jsonb,
    imputed       boolean,
    contribution  double precision,
    explains      text,
    label         text,
    error         jsonb
) SERVER pgml OPTIONS (table 'explanations');
CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE OR DELETE ON pgml._explanations
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._refuse_writes();
ALTER FOREIGN TABLE pgml._explanations ENABLE ALWAYS TRIGGER refuse_writes;

-- 0 when the caller may explain (may predict), else raises.
CREATE FUNCTION pgml._may_explain() RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT has_table_privilege('pgml.predictions', 'SELECT') THEN
        RAISE EXCEPTION 'permission denied to explain predictions'
            USING ERRCODE = '42501',
                  HINT = format('Explaining takes the privilege to predict: ask for GRANT SELECT ON pgml.predictions TO %I.',
                                current_user);
    END IF;
    RETURN 0;
END
$$;

-- What pgml.explain reads it through; it raises the wrapper's errors. The privilege condition names
-- no column: PostgreSQL evaluates it once, before the scan runs (a one-time filter), so no row
-- exists, for any condition of the caller's to see, unless the caller may predict. Not a security
-- barrier view: that would make the scan a subquery, where Multicorn cannot be trusted with the
-- features of pgml.explain's query (a parameter). Written "= 0" so that Multicorn passes them over.
CREATE VIEW pgml._model_explanations AS
SELECT e.model, e.features, e.feature, e.value, e.imputed, e.contribution, e.explains, e.label
FROM pgml._explanations e
WHERE pgml._may_explain() = 0 AND pgml._check(e.error) = 0;
GRANT SELECT ON pgml._model_explanations TO PUBLIC;

-- Each feature's contribution to the model's prediction for one row of features (a jsonb object
-- keyed by feature name, or an array in training order), after a first row, feature '(base)', for
-- the base value. base + sum(contribution) is the quantity named in explains, for the class in label:
--   prediction         a regression's prediction
--   probability        a tree classifier's probability of its predicted class
--   log_odds           the log-odds of the predicted class (logistic regression, boosting, two classes)
--   raw_score          the predicted class's score before the softmax (3+ classes), or a log-link
--                      regression's log of the prediction
--   decision_function  the predicted class's score (ridge and linear svm classifiers)
-- value is the value the model used: the one given, or, where imputed is true, the one imputation
-- put in place of a NULL (numbers in the model's units: seconds for intervals and times).
--   SELECT feature, value, contribution FROM pgml.explain('my_data', '{"age": 31, "location": "Paris"}'::jsonb)
--   ORDER BY abs(contribution) DESC;
-- PL/pgSQL with one generic plan, like the scoring functions: its query is planned once per
-- session, never under an EXPLAIN (Multicorn mishandles values only known when a query runs there).
CREATE FUNCTION pgml.explain(model text, features jsonb)
RETURNS TABLE (feature text, value jsonb, imputed boolean, contribution double precision, explains text, label text)
LANGUAGE plpgsql STABLE ROWS 10 COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    resolved text;
BEGIN
    PERFORM pgml._may_explain();  -- before the name is looked up
    resolved := pgml._resolve(model);
    RETURN QUERY
    SELECT e.feature, e.value, e.imputed, e.contribution, e.explains, e.label
    FROM pgml._model_explanations e
    WHERE e.model = resolved AND e.features = explain.features;
END
$$;

-- The same for one feature value of any type, or a row of them (as pgml.prediction takes them):
--   SELECT * FROM pgml.explain('my_data', ROW('2 years'::interval, 31, 'Paris'));
CREATE FUNCTION pgml.explain(model text, features anyelement)
RETURNS TABLE (feature text, value jsonb, imputed boolean, contribution double precision, explains text, label text)
LANGUAGE sql STABLE ROWS 10 COST 10 AS $$ SELECT * FROM pgml.explain(model, pgml._features(features)) $$;
-- ==== end explain ====

-- ==== fixes ====
-- 0.4.0's condition on pgml._model_expressions was a bare function call, which Multicorn cannot
-- read as a condition and warned about ("unsupported expression for extractClauseFrom") on every
-- pgml.score_table and pgml.score_into. A comparison with no column in it is one PostgreSQL checks
-- once, before the scan, and Multicorn passes over in silence.
CREATE OR REPLACE VIEW pgml._model_expressions WITH (security_barrier) AS
SELECT e.model, e.expression, e.error FROM pgml._expressions e
WHERE CASE WHEN has_table_privilege('pgml.predictions', 'SELECT') THEN 0 END = 0;
-- ==== end fixes ====
