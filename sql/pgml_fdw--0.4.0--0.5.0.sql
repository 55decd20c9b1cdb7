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
-- pgml._choose_version: in the postgresml section, which adds an algorithm filter, with the key
-- metric of every task.

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
    -- Once: as a condition of the query it would run twice. A PostgresML project's name too
    -- (pgml._served_model, in the postgresml section).
    ref text := pgml._reference(pgml._served_model(model));
    answer double precision[];
BEGIN
    IF features IS NULL THEN
        RETURN NULL;
    END IF;
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


-- pgml.train takes search_args too, as its last parameter: in the postgresml section, where it
-- also takes PostgresML's calls with their arguments in place.
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
    resolved := pgml._resolve(pgml._served_model(model));  -- a PostgresML project's name too
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

-- ==== postgresml ====
-------------------------------------------------------------------------------------------------------
-- PostgresML's classic machine learning API, on pgml_fdw's models:
--
--   SELECT * FROM pgml.load_dataset('diabetes');
--   SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'pgml.diabetes', 'target', 'ridge');
--   SELECT * FROM pgml.deploy('Diabetes Progression', 'best_score', 'ridge');
--   SELECT pgml.predict('Diabetes Progression', ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6]) FROM pgml.diabetes;
--
-- A PostgresML project is a model name of pgml_fdw's: a project whose name is a valid model name
-- (letters, digits and underscores, such as churn) is the model of that name; any other project
-- name ('Diabetes Progression') is given one made from it (diabetes_progression), listed in
-- pgml.projects. The project's versions, deployments and owner are that model's. So a name given
-- to the functions below is a model's name or id when it reads as one, and a project's otherwise:
-- neither can stand for the other.
--
-- Where PostgresML's names are pgml_fdw's already (pgml.models, pgml.deployments,
-- pgml.deployed_models), pgml_fdw's stay; pgml.projects and pgml.trained_models list the projects
-- and every version as PostgresML does.
-------------------------------------------------------------------------------------------------------

-- PostgresML's tasks and deployment strategies. Enums: pgml.train and pgml.deploy take them where
-- pgml_fdw's own functions of those names take text, so that a call written with plain literals
-- (pgml.train('my_data', 'y')) still finds pgml_fdw's function (PostgreSQL prefers text for a
-- literal), while a call naming PostgresML's parameters (relation_name => ...) finds PostgresML's.
CREATE TYPE pgml.task AS ENUM ('regression', 'classification', 'clustering', 'decomposition');
CREATE TYPE pgml.strategy AS ENUM ('best_score', 'most_recent', 'rollback');

-- Each project: its task, its model and the training data it was last given (PostgresML's
-- snapshot: what pgml.train('project') trains on again). Written only by pgml.train, for a member of
-- the model's owner; the model's deletion deletes it.
CREATE TABLE pgml.project_names (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name <> ''),
    task          text NOT NULL CHECK (task IN ('regression', 'classification', 'clustering', 'decomposition')),
    model         text NOT NULL UNIQUE REFERENCES pgml.model_names (name) ON DELETE CASCADE,
    relation      text NOT NULL,
    y_column      text CHECK (y_column IS NOT NULL OR task IN ('clustering', 'decomposition')),
    test_size     double precision CHECK (test_size > 0 AND test_size < 1),
    test_sampling text CHECK (test_sampling IN ('random', 'first', 'last')),
    preprocess    jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgml.project_names IS 'PostgresML projects: each one''s model name, task and last training data. pgml.projects lists them.';
SELECT pg_catalog.pg_extension_config_dump('pgml.project_names', '');
SELECT pg_catalog.pg_extension_config_dump('pgml.project_names_id_seq', '');

-- PostgresML's pgml.projects, with the project's model, its owner and its last training data.
CREATE VIEW pgml.projects AS
SELECT p.id, p.name, p.task, p.created_at,
       greatest(p.updated_at, (SELECT max(m.trained_at) FROM pgml.model_versions m WHERE m.name = p.model)) AS updated_at,
       p.model, n.owner, p.relation, p.y_column
FROM pgml.project_names p
JOIN pgml.model_names n ON n.name = p.model;
COMMENT ON VIEW pgml.projects IS 'PostgresML projects: name, task, and the pgml_fdw model that holds their versions.';

-- PostgresML's pgml.trained_models: every version, by project name (or model name, outside projects).
-- Its id is pgml.models' (name_version), so the two join on id as in PostgresML's examples.
CREATE VIEW pgml.trained_models AS
SELECT m.id, coalesce(p.name, m.name) AS name, m.task, m.algorithm, 'python'::text AS runtime,
       m.relation AS relation_name, m.y_column AS y_column_name, m.trained_at AS created_at,
       d.id IS NOT NULL AS deployed
FROM pgml.model_versions m
LEFT JOIN pgml.project_names p ON p.model = m.name
LEFT JOIN pgml.deployed_models d ON d.id = m.id
ORDER BY m.trained_at DESC;
COMMENT ON VIEW pgml.trained_models IS 'Every model version as PostgresML lists them: by project, newest first.';

-- What a name given to PostgresML's functions stands for: a model's name or id when it reads as
-- one (then a project of that name, if any, is that model), else a project's model. Raises when it
-- is neither.
CREATE FUNCTION pgml._model_of(project text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found text;
BEGIN
    IF pgml._is_model_name(project) THEN
        RETURN project;
    END IF;
    SELECT p.model INTO found FROM pgml.project_names p WHERE p.name = project;
    IF found IS NULL THEN
        RAISE EXCEPTION 'no project named "%"', project
            USING ERRCODE = '42704',
                  HINT = format('Train it first: SELECT * FROM pgml.train(%L, ''regression'', ''my_table'', ''my_column''); '
                                'list them: SELECT name, model FROM pgml.projects.', project);
    END IF;
    RETURN found;
END
$$;

-- Whether a name reads as a model's name or id (what pgml._train accepts as a name, and names
-- followed by _version).
CREATE FUNCTION pgml._is_model_name(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT name ~ '^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$' AND length(name) <= 63
$$;

-- A project, or a row of NULLs.
CREATE FUNCTION pgml._project(project text) RETURNS pgml.project_names
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.* FROM pgml.project_names p WHERE p.name = project
$$;

-- The model name for a new project: its own name when that reads as a model name, else one made
-- from it: lower case, runs of other characters as one underscore (Diabetes Progression:
-- diabetes_progression), then _p2, _p3... while that is taken by another model or project.
CREATE FUNCTION pgml._new_project_model(project text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    base text;
    candidate text;
    n integer := 1;
BEGIN
    IF pgml._is_model_name(project) THEN
        IF project ~ '_[0-9]+$' THEN
            RAISE EXCEPTION 'invalid project name "%": it reads as the id of a model''s version (name_version)', project
                USING ERRCODE = '22023', HINT = 'Choose a name that does not end in _ and digits, such as ' || project || '_project.';
        END IF;
        RETURN project;
    END IF;
    base := left(trim(BOTH '_' FROM lower(regexp_replace(project, '[^A-Za-z0-9]+', '_', 'g'))), 50);
    base := rtrim(base, '_');
    IF base = '' OR base ~ '^[0-9]' THEN
        base := rtrim(left('project_' || base, 50), '_');
    END IF;
    IF base ~ '_[0-9]+$' THEN
        base := base || '_p';  -- project_2 would read as version 2 of the model "project"
    END IF;
    candidate := base;
    WHILE EXISTS (SELECT FROM pgml.model_names WHERE name = candidate)
          OR EXISTS (SELECT FROM pgml.project_names WHERE model = candidate) LOOP
        n := n + 1;
        candidate := base || '_p' || n;
    END LOOP;
    RETURN candidate;
END
$$;

-------------------------------------------------------------------------------------------------------
-- Requests: the few changes PostgresML's functions make for their caller in tables the caller may
-- not write (a project's record, a dataset's table in schema pgml). As with pgml.training_runs, two
-- INSTEAD OF triggers of an insert into pgml._requests: the first, as the caller, records who asks;
-- the second, as the extension owner, trusts only that and checks the rest. Nobody may call or
-- attach the second elsewhere.
-------------------------------------------------------------------------------------------------------
CREATE VIEW pgml._requests AS
SELECT NULL::text AS action, NULL::jsonb AS arguments, NULL::name AS requested_by, NULL::jsonb AS result
WHERE false;

CREATE FUNCTION pgml._identify_requester() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.requested_by := current_user;
    NEW.result := NULL;
    RETURN NEW;
END
$$;

CREATE FUNCTION pgml._handle_request() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    CASE NEW.action
    WHEN 'record_project' THEN
        NEW.result := pgml._record_project(NEW.arguments, NEW.requested_by);
    WHEN 'load_dataset' THEN
        NEW.result := pgml._load_dataset(NEW.arguments, NEW.requested_by);
    ELSE
        RAISE EXCEPTION 'unknown request "%"', NEW.action USING ERRCODE = '22023';
    END CASE;
    RETURN NEW;
END
$$;

CREATE TRIGGER a_identify_requester INSTEAD OF INSERT ON pgml._requests
    FOR EACH ROW EXECUTE FUNCTION pgml._identify_requester();
CREATE TRIGGER b_handle_request INSTEAD OF INSERT ON pgml._requests
    FOR EACH ROW EXECUTE FUNCTION pgml._handle_request();

-- Records a project's model, task and training data after a training run of it, for a member of
-- the model's owner (who just trained it). A project keeps its model; a model has one project.
CREATE FUNCTION pgml._record_project(arguments jsonb, requester name) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    given pgml.project_names := jsonb_populate_record(NULL::pgml.project_names, arguments);
    current pgml.project_names;
BEGIN
    IF pgml._owner(given.model) IS NULL THEN
        RAISE EXCEPTION 'no model named "%"', given.model USING ERRCODE = '42704';
    END IF;
    IF NOT pgml._may_manage(given.model, requester) THEN
        RAISE EXCEPTION 'permission denied to record project "%": its model "%" belongs to role %',
                        given.name, given.model, pgml._owner(given.model)
            USING ERRCODE = '42501';
    END IF;
    -- A request says what to record, and anyone may send one: it must describe a run the requester
    -- has just trained (pgml._train_project sends it right after), and a project named like a
    -- model name is that model and no other.
    IF pgml._is_model_name(given.name) AND given.model IS DISTINCT FROM given.name THEN
        RAISE EXCEPTION 'project "%" reads as a model name, and can only be model "%"', given.name, given.name
            USING ERRCODE = '42501', HINT = 'Record projects by training them: pgml.train(project_name, task, relation_name, ...).';
    END IF;
    IF NOT EXISTS (SELECT FROM pgml.model_versions m
                   WHERE m.name = given.model AND m.trained_by = requester AND m.trained_at = now()
                     AND m.task = given.task AND m.relation = given.relation
                     AND m.y_column IS NOT DISTINCT FROM given.y_column) THEN
        RAISE EXCEPTION 'permission denied to record project "%": no run of model "%" on % was trained by % in this transaction',
                        given.name, given.model, given.relation, requester
            USING ERRCODE = '42501', HINT = 'Record projects by training them: pgml.train(project_name, task, relation_name, ...).';
    END IF;
    SELECT p.* INTO current FROM pgml.project_names p WHERE p.name = given.name;
    IF current.id IS NULL THEN
        IF EXISTS (SELECT FROM pgml.project_names p WHERE p.model = given.model) THEN
            RAISE EXCEPTION 'model "%" already holds project "%"', given.model,
                            (SELECT p.name FROM pgml.project_names p WHERE p.model = given.model)
                USING ERRCODE = '42710', HINT = 'Train that project, or choose another project name.';
        END IF;
        INSERT INTO pgml.project_names (name, task, model, relation, y_column, test_size, test_sampling, preprocess)
        VALUES (given.name, given.task, given.model, given.relation, given.y_column, given.test_size,
                given.test_sampling, given.preprocess);
    ELSIF current.model IS DISTINCT FROM given.model THEN
        RAISE EXCEPTION 'project "%" is the model "%", not "%"', given.name, current.model, given.model
            USING ERRCODE = '42710';
    ELSE
        UPDATE pgml.project_names p
        SET task = given.task, relation = given.relation, y_column = given.y_column, test_size = given.test_size,
            test_sampling = given.test_sampling, preprocess = given.preprocess, updated_at = now()
        WHERE p.id = current.id;
    END IF;
    RETURN to_jsonb(given.name);
END
$$;

-------------------------------------------------------------------------------------------------------
-- pgml.train, PostgresML's way: a project, its task, then the training data the first time.
-------------------------------------------------------------------------------------------------------

-- Trains a version of a project's model (PostgresML's pgml.train): creates the project with its
-- task the first time, trains on relation_name, or when it is NULL on the project's last training
-- data, then records the project. Returns the new version's id as well as PostgresML's row.
CREATE FUNCTION pgml._train_project(
    project text, given_task text, relation_name text, y_column_name text, given_algorithm text,
    hyperparams jsonb, search text, search_params jsonb, search_folds integer, search_args jsonb,
    test_size double precision, test_sampling text, runtime text, automatic_deploy boolean,
    materialize_snapshot boolean, preprocess jsonb)
RETURNS TABLE (model_id text, project_name text, task text, algorithm text, deployed boolean)
LANGUAGE plpgsql AS $$  -- with the caller's search_path, which names relation_name
DECLARE
    current pgml.project_names;
    model text;
    run_task text;
    run_algorithm text := coalesce(given_algorithm, 'linear');
    relation text := relation_name;
    y_column text := y_column_name;
    new_id text;
BEGIN
    PERFORM pgml._refuse_on_standby('train');
    IF project IS NULL OR project = '' THEN
        RAISE EXCEPTION 'a project needs a name' USING ERRCODE = '22023',
            HINT = 'For example: SELECT * FROM pgml.train(''My Project'', ''regression'', ''my_table'', ''my_column'').';
    END IF;
    IF runtime IS NOT NULL AND runtime <> 'python' THEN
        RAISE EXCEPTION 'runtime % is not available: pgml_fdw trains with scikit-learn, in Python', runtime
            USING ERRCODE = '0A000', HINT = 'Leave runtime out, or pass runtime => ''python''.';
    END IF;
    IF materialize_snapshot THEN
        RAISE NOTICE 'materialize_snapshot is ignored: pgml_fdw keeps no copy of the training data'
            USING DETAIL = 'Each training run reads the relation as it is then; the same relation and options give the same split.',
                  HINT = 'To train on a fixed copy, CREATE TABLE ... AS SELECT it and train on that table.';
    END IF;
    -- One training of a project at a time: its first one records it.
    PERFORM pg_advisory_xact_lock(hashtext('pgml_fdw:project:' || project));
    current := pgml._project(project);
    IF current.id IS NULL THEN
        IF given_task IS NULL THEN
            RAISE EXCEPTION 'project "%" does not exist', project
                USING ERRCODE = '42704',
                      HINT = format('To create it, give its task: SELECT * FROM pgml.train(%L, ''regression'', ''my_table'', ''my_column'').', project);
        END IF;
        model := pgml._new_project_model(project);
        run_task := given_task;
    ELSE
        model := current.model;
        run_task := coalesce(given_task, current.task);
        IF run_task <> current.task THEN
            RAISE EXCEPTION 'project "%" exists already, with task %', project, current.task
                USING ERRCODE = '22023', HINT = 'A project keeps its task: leave task out, or train a new project.';
        END IF;
    END IF;
    IF relation IS NULL THEN
        -- PostgresML trains on the project's last snapshot: the same data, split the same way.
        IF current.id IS NULL THEN
            RAISE EXCEPTION 'project "%" has no training data yet', project
                USING ERRCODE = '22023',
                      HINT = format('Give relation_name and y_column_name the first time: SELECT * FROM pgml.train(%L, %L, ''my_table'', ''my_column'').',
                                    project, run_task);
        END IF;
        relation := current.relation;
        y_column := current.y_column;
        test_size := current.test_size;
        test_sampling := current.test_sampling;
        preprocess := current.preprocess;
    ELSE
        test_sampling := CASE test_sampling WHEN 'stratified' THEN 'random' ELSE test_sampling END;
        preprocess := nullif(preprocess, '{}');
    END IF;
    IF run_task IN ('regression', 'classification') AND y_column IS NULL THEN
        RAISE EXCEPTION 'a % project needs y_column_name, the column to predict', run_task
            USING ERRCODE = '22023',
                  HINT = format('For example: SELECT * FROM pgml.train(%L, %L, %L, ''my_column'').', project, run_task, relation);
    END IF;
    -- PostgresML's default algorithm, linear, means its default for the tasks without a y column.
    IF run_algorithm = 'linear' THEN
        run_algorithm := CASE run_task WHEN 'clustering' THEN 'kmeans' WHEN 'decomposition' THEN 'pca' ELSE 'linear' END;
    END IF;

    INSERT INTO pgml.training_runs (relation, y_column, algorithm, name, task, hyperparams, search,
                                    search_params, search_folds, search_args, preprocess, test_size,
                                    test_sampling, deploy)
    VALUES (relation, y_column, run_algorithm, model, run_task, nullif(hyperparams, '{}'), search,
            CASE WHEN search IS NULL AND search_params = '{}' THEN NULL ELSE search_params END, search_folds,
            nullif(search_args, '{}'), preprocess, test_size, test_sampling, coalesce(automatic_deploy, true))
    RETURNING training_runs.id INTO new_id;

    INSERT INTO pgml._requests (action, arguments)
    VALUES ('record_project', jsonb_build_object('name', project, 'task', run_task, 'model', model,
                                                 'relation', pgml._qualified(relation::regclass), 'y_column', y_column,
                                                 'test_size', test_size, 'test_sampling', test_sampling,
                                                 'preprocess', preprocess));
    RETURN QUERY SELECT new_id, project, run_task, run_algorithm, coalesce(pgml._find(model) = pgml._find(new_id), false);
END
$$;

-- PostgresML's pgml.train. Its row: the project, its task, the algorithm trained and whether the new
-- version was deployed. A call naming an argument only PostgresML has (relation_name, y_column_name,
-- search_args, automatic_deploy...), or writing the task as pgml.task, reaches it; one with plain
-- literals in place (pgml.train('Project', 'regression', 'my_table', 'y')) reaches pgml_fdw's
-- pgml.train below, which hands it to the same training and returns the new version's id.
-- test_sampling stratified (PostgresML's default) is pgml_fdw's random, which stratifies classes;
-- search_args takes n_iter and cv (search_folds); runtime python only; materialize_snapshot is ignored (with a notice).
CREATE FUNCTION pgml.train(
    project_name text, task pgml.task DEFAULT NULL, relation_name text DEFAULT NULL,
    y_column_name text DEFAULT NULL, algorithm text DEFAULT 'linear', hyperparams jsonb DEFAULT '{}',
    search text DEFAULT NULL, search_params jsonb DEFAULT '{}', search_args jsonb DEFAULT '{}',
    test_size real DEFAULT 0.25, test_sampling text DEFAULT 'stratified', runtime text DEFAULT NULL,
    automatic_deploy boolean DEFAULT true, materialize_snapshot boolean DEFAULT false, preprocess jsonb DEFAULT '{}')
RETURNS TABLE (project text, task text, algorithm text, deployed boolean)
LANGUAGE sql AS $$
    SELECT t.project_name, t.task, t.algorithm, t.deployed
    FROM pgml._train_project($1, $2::text, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11, $12, $13, $14, $15) t
$$;

-- Whether a relation (named as the caller's search_path finds it) has a column of that name.
CREATE FUNCTION pgml._has_column(relation text, column_name text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    rel regclass;
BEGIN
    BEGIN
        rel := to_regclass(relation);
    EXCEPTION WHEN OTHERS THEN  -- a name that does not even parse: 'Diabetes Progression'
        rel := NULL;
    END;
    RETURN rel IS NOT NULL AND EXISTS (SELECT FROM pg_catalog.pg_attribute a
                                       WHERE a.attrelid = rel AND a.attname = column_name
                                         AND a.attnum > 0 AND NOT a.attisdropped);
END
$$;

-- pgml_fdw's pgml.train, and the place PostgresML's pgml.train with its arguments in place arrives
-- at: a task name where y_column is (and no such column in relation) means pgml.train(project_name,
-- task, relation_name, y_column_name, algorithm, hyperparams, search, search_params). It takes
-- search_args too, as its last parameter, and algorithm's default (linear) is applied inside, so
-- that the two call shapes can be told apart: a function's parameters cannot change in place, so it
-- is made anew; every call of 0.4.0's keeps working (by position or by name).
DROP FUNCTION pgml.train(text, text, text, text, text, jsonb, text, jsonb, integer, jsonb, double precision,
                         text, boolean);
-- Train a model; returns the new version's id (e.g. my_data_1). Named arguments give the options
-- of pgml.training_runs: SELECT pgml.train('my_data', 'y', 'random_forest', hyperparams => '{...}').
CREATE FUNCTION pgml.train(
    relation text, y_column text, algorithm text DEFAULT NULL, name text DEFAULT NULL,
    task text DEFAULT NULL, hyperparams jsonb DEFAULT NULL, search text DEFAULT NULL,
    search_params jsonb DEFAULT NULL, search_folds integer DEFAULT NULL, preprocess jsonb DEFAULT NULL,
    test_size double precision DEFAULT NULL, test_sampling text DEFAULT NULL, deploy boolean DEFAULT true,
    search_args jsonb DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    new_id text;
BEGIN
    IF train.y_column IN ('regression', 'classification', 'clustering', 'decomposition') THEN
        IF NOT pgml._has_column(train.relation, train.y_column) THEN
            SELECT t.model_id INTO new_id
            FROM pgml._train_project(train.relation, train.y_column, train.algorithm, train.name,
                                     coalesce(train.task, 'linear'), train.hyperparams, train.search,
                                     train.search_params, train.search_folds, train.search_args, train.test_size,
                                     train.test_sampling, NULL, train.deploy, false, train.preprocess) t;
            RETURN new_id;
        END IF;
    END IF;
    PERFORM pgml._refuse_on_standby('train');
    INSERT INTO pgml.training_runs (relation, y_column, algorithm, name, task, hyperparams, search,
                                    search_params, search_folds, search_args, preprocess, test_size,
                                    test_sampling, deploy)
    VALUES (train.relation, train.y_column, coalesce(train.algorithm, 'linear'), train.name, train.task,
            train.hyperparams, train.search, train.search_params, train.search_folds, train.search_args,
            train.preprocess, train.test_size, train.test_sampling, train.deploy)
    RETURNING training_runs.id INTO new_id;
    RETURN new_id;
END
$$;

-------------------------------------------------------------------------------------------------------
-- pgml.predict and pgml.predict_proba, PostgresML's way: a project (or a model's name or id) and its
-- features in an array, in training order (an array column's elements in its place), or a row.
-- Served by pgml.predictions like pgml.score, so the caller needs SELECT on pgml.predictions. An
-- array of each numeric type has its own function (numeric[] too, which PostgresML lacks: ARRAY[0.1,
-- 2.0] is one), so that every typed array finds exactly one.
-------------------------------------------------------------------------------------------------------

-- A SQL array of features as the jsonb pgml.predictions takes: flattened, row by row, when it has
-- more than one dimension.
CREATE FUNCTION pgml._array_features(features anyarray) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN array_ndims(features) > 1 THEN to_jsonb(ARRAY(SELECT unnest(features))) ELSE to_jsonb(features) END
$$;

-- As in 0.1.0, but a SQL array given alone is the features in training order (flattened), no
-- longer one feature: pgml.score('m', ARRAY[1, 2, 3]) scores the three features of m.
CREATE OR REPLACE FUNCTION pgml._features(features anyelement) RETURNS jsonb
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
    ELSIF jsonb_typeof(j) = 'array' THEN
        RETURN pgml._array_features(features);
    END IF;
    RETURN jsonb_build_array(j);
END
$$;

-- What pgml._model_of says, in the caller's query: a SQL function PostgreSQL inlines, reading the
-- project's model directly (SELECT on pgml.project_names' name and model is PUBLIC's, as model names
-- are anyone's to learn: README, Limitations), which saves a prediction the cost of calling a
-- SECURITY DEFINER function; pgml._model_of only raises the error of a name that is neither.
CREATE FUNCTION pgml._served_model(project text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pgml._is_model_name(project) THEN project
                ELSE coalesce((SELECT p.model FROM pgml.project_names p WHERE p.name = project), pgml._model_of(project))
           END
$$;

-- The prediction for one row of features, as PostgresML returns it: a real (the class, for a
-- classification whose classes are numbers or booleans).
CREATE FUNCTION pgml._predict(project text, features jsonb) RETURNS real
LANGUAGE plpgsql STABLE COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    -- once: as a condition of the query it would run twice
    ref text := pgml._reference(pgml._served_model(project));
    answer record;
BEGIN
    SELECT p.prediction, p.label INTO answer
    FROM pgml.predictions p WHERE p.model = ref AND p.features = _predict.features;
    IF answer.prediction IS NULL AND answer.label IS NOT NULL THEN
        RAISE EXCEPTION '"%" predicts text classes, which pgml.predict cannot return as a number', project
            USING ERRCODE = '22023',
                  HINT = 'Use pgml.classify(model, features) for the class as text; a project''s model is in pgml.projects.';
    END IF;
    RETURN answer.prediction;
END
$$;

CREATE FUNCTION pgml.predict(project text, features real[]) RETURNS real
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict(project, pgml._array_features(features::double precision[])) $$;
CREATE FUNCTION pgml.predict(project text, features double precision[]) RETURNS real
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict(project, pgml._array_features(features)) $$;
CREATE FUNCTION pgml.predict(project text, features numeric[]) RETURNS real
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict(project, pgml._array_features(features)) $$;
CREATE FUNCTION pgml.predict(project text, features smallint[]) RETURNS real
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict(project, pgml._array_features(features)) $$;
CREATE FUNCTION pgml.predict(project text, features integer[]) RETURNS real
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict(project, pgml._array_features(features)) $$;
CREATE FUNCTION pgml.predict(project text, features bigint[]) RETURNS real
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict(project, pgml._array_features(features)) $$;
CREATE FUNCTION pgml.predict(project text, features boolean[]) RETURNS real
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict(project, pgml._array_features(features)) $$;
-- A row: ROW(a, b) in training order, or a table's row by column name (as pgml.score takes it).
CREATE FUNCTION pgml.predict(project text, "row" anyelement) RETURNS real
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict($1, pgml._features($2)) $$;

-- The classes of a version, as text in their order (what the probabilities of pgml.predictions
-- are keyed by). model is what pgml.predictions was given: a name, an id or a uid.
CREATE FUNCTION pgml._class_labels(model text, model_version integer) RETURNS text[]
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    classes jsonb;
BEGIN
    SELECT m.classes INTO classes FROM pgml.model_versions m
    WHERE (m.name = model AND m.version = model_version) OR m.id = model
    ORDER BY (m.name = model AND m.version = model_version) DESC LIMIT 1;  -- a 0.1.0 name like another's id
    IF classes IS NULL AND model ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        SELECT m.classes INTO classes FROM pgml.model_versions m WHERE m.uid = model::uuid;
    END IF;
    RETURN ARRAY(SELECT c FROM jsonb_array_elements_text(classes) WITH ORDINALITY AS e(c, n) ORDER BY n);
END
$$;

-- The probability of each class of one row, in the order of the classes (numbers from the least,
-- false before true, text in code point order), as PostgresML returns them.
CREATE FUNCTION pgml._predict_proba(project text, features jsonb) RETURNS real[]
LANGUAGE plpgsql STABLE COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    ref text := pgml._reference(pgml._served_model(project));
    answer record;
BEGIN
    SELECT p.label, p.probabilities, p.version INTO answer
    FROM pgml.predictions p WHERE p.model = ref AND p.features = _predict_proba.features;
    IF answer.label IS NULL THEN
        RAISE EXCEPTION '"%" is a regression model and has no class probabilities', project
            USING ERRCODE = '22023', HINT = 'Use pgml.predict(project, features) for its prediction.';
    END IF;
    IF answer.probabilities IS NULL THEN
        RAISE EXCEPTION 'the algorithm of "%" gives no probabilities', project
            USING ERRCODE = '22023',
                  HINT = 'Train it with an algorithm that does: for instance linear or random_forest, or gaussian_mixture to cluster.';
    END IF;
    -- A classifier's probabilities in its classes' order; a clusterer's (gaussian_mixture), which
    -- has no classes stored, in its clusters' order.
    RETURN ARRAY(SELECT (answer.probabilities ->> c.label)::real
                 FROM unnest(coalesce(nullif(pgml._class_labels(ref, answer.version), '{}'),
                                      ARRAY(SELECT k FROM jsonb_object_keys(answer.probabilities) k ORDER BY k::integer)))
                      WITH ORDINALITY AS c(label, n) ORDER BY c.n);
END
$$;

-- Arrays give PostgresML's real[]; a jsonb or a row gives pgml_fdw's {class: probability} (0.1.0).
CREATE FUNCTION pgml.predict_proba(project text, features real[]) RETURNS real[]
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict_proba(project, pgml._array_features(features::double precision[])) $$;
CREATE FUNCTION pgml.predict_proba(project text, features double precision[]) RETURNS real[]
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict_proba(project, pgml._array_features(features)) $$;
CREATE FUNCTION pgml.predict_proba(project text, features numeric[]) RETURNS real[]
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict_proba(project, pgml._array_features(features)) $$;
CREATE FUNCTION pgml.predict_proba(project text, features smallint[]) RETURNS real[]
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict_proba(project, pgml._array_features(features)) $$;
CREATE FUNCTION pgml.predict_proba(project text, features integer[]) RETURNS real[]
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict_proba(project, pgml._array_features(features)) $$;
CREATE FUNCTION pgml.predict_proba(project text, features bigint[]) RETURNS real[]
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict_proba(project, pgml._array_features(features)) $$;
CREATE FUNCTION pgml.predict_proba(project text, features boolean[]) RETURNS real[]
LANGUAGE sql STABLE COST 10 AS $$ SELECT pgml._predict_proba(project, pgml._array_features(features)) $$;

-------------------------------------------------------------------------------------------------------
-- pgml.deploy, PostgresML's way: a project (or a model name), a strategy and an algorithm to choose
-- among. As the caller, who must be a member of the model's owner (pgml._check_deployment).
-------------------------------------------------------------------------------------------------------

-- As 0.2.0's, among the versions trained with algorithm when it is not NULL; by the key metric of
-- every task (pgml._key_metric), and with versions without y_column (NULL) counted as trained on
-- the same data as each other.
CREATE FUNCTION pgml._choose_version(model_name text, strategy text, algorithm text) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current record;
    chosen integer;
BEGIN
    IF NOT EXISTS (SELECT FROM pgml.model_versions m WHERE m.name = model_name) THEN
        RAISE EXCEPTION 'no model named "%"', model_name
            USING ERRCODE = '42704', HINT = 'List them: SELECT DISTINCT name FROM pgml.models.';
    END IF;
    IF algorithm IS NOT NULL AND NOT EXISTS (SELECT FROM pgml.model_versions m
                                             WHERE m.name = model_name AND m.algorithm = _choose_version.algorithm) THEN
        RAISE EXCEPTION 'model "%" has no version trained with algorithm %', model_name, algorithm
            USING ERRCODE = '42704',
                  HINT = format('List its versions: SELECT version, algorithm, metrics FROM pgml.models WHERE name = %L.', model_name);
    END IF;
    SELECT * INTO current FROM pgml.deployed_models d WHERE d.name = model_name;
    CASE strategy
    WHEN 'most_recent' THEN
        SELECT max(version) INTO chosen FROM pgml.model_versions m
        WHERE m.name = model_name AND (_choose_version.algorithm IS NULL OR m.algorithm = _choose_version.algorithm);
    WHEN 'best_score' THEN
        SELECT m.version INTO chosen FROM pgml.model_versions m
        WHERE m.name = model_name AND (_choose_version.algorithm IS NULL OR m.algorithm = _choose_version.algorithm)
          AND (current IS NULL OR (m.task = current.task AND m.y_column IS NOT DISTINCT FROM current.y_column
                                   AND m.relation = current.relation
                                   AND pgml._feature_names(m.features) = pgml._feature_names(current.features)))
        ORDER BY coalesce((m.metrics ->> pgml._key_metric(m.task))::float8,
                          '-Infinity') DESC, m.version DESC
        LIMIT 1;
        IF chosen IS NULL THEN
            RAISE EXCEPTION 'model "%" has no version trained with algorithm % on the deployed version''s data', model_name, algorithm
                USING ERRCODE = '42704',
                      HINT = 'best_score compares versions trained on the same relation, target and features: '
                             'deploy another one by number, SELECT pgml.deploy(name, version).';
        END IF;
    WHEN 'rollback' THEN
        SELECT d.version INTO chosen FROM pgml.deployments d JOIN pgml.model_versions m ON m.name = d.name AND m.version = d.version
        WHERE d.name = model_name AND d.version <> current.version
          AND (_choose_version.algorithm IS NULL OR m.algorithm = _choose_version.algorithm)
        ORDER BY d.id DESC LIMIT 1;
        IF chosen IS NULL THEN
            RAISE EXCEPTION 'model "%" has no earlier deployment to roll back to%', model_name,
                            CASE WHEN algorithm IS NULL THEN '' ELSE ' with algorithm ' || algorithm END
                USING ERRCODE = '22023', HINT = 'Deploy a version by number: SELECT pgml.deploy(name, version).';
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown deployment strategy "%"', strategy
            USING ERRCODE = '22023', HINT = 'Use best_score, most_recent or rollback, or give a version number.';
    END CASE;
    RETURN chosen;
END
$$;

-- Deploys the version a strategy picks; returns its id.
CREATE FUNCTION pgml._deploy(model_name text, strategy text, algorithm text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chosen integer;
BEGIN
    PERFORM pgml._refuse_on_standby('deploy');
    chosen := pgml._choose_version(model_name, strategy, algorithm);
    INSERT INTO pgml.deployments (name, version, strategy) VALUES (model_name, chosen, strategy);
    RETURN model_name || '_' || chosen;
END
$$;

-- 0.2.0's, for a project too.
CREATE OR REPLACE FUNCTION pgml.deploy(name text, strategy text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN pgml._deploy(pgml._model_of(deploy.name), strategy, NULL);
END
$$;
DROP FUNCTION pgml._choose_version(text, text);

-- 0.2.0's, for a project too.
CREATE OR REPLACE FUNCTION pgml.deploy(name text, version integer) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    model_name text := pgml._model_of(deploy.name);
BEGIN
    PERFORM pgml._refuse_on_standby('deploy');
    IF NOT pgml._version_exists(model_name, deploy.version) THEN
        RAISE EXCEPTION 'model "%" has no version %', model_name, deploy.version
            USING ERRCODE = '42704', HINT = 'List its versions: SELECT id, version, metrics FROM pgml.models WHERE name = ''' || model_name || '''.';
    END IF;
    INSERT INTO pgml.deployments (name, version, strategy) VALUES (model_name, deploy.version, 'version');
    RETURN model_name || '_' || deploy.version;
END
$$;

CREATE FUNCTION pgml._algorithm_of(model_id text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.algorithm FROM pgml.model_versions m WHERE m.id = model_id
$$;

-- PostgresML's pgml.deploy(project, strategy, algorithm): its row is the project, the strategy and
-- the deployed version's algorithm. Called with two literals, pgml.deploy(name, strategy) above
-- answers instead, with the deployed version's id.
CREATE FUNCTION pgml.deploy(project_name text, strategy pgml.strategy, algorithm text DEFAULT NULL)
RETURNS TABLE (project text, strategy text, algorithm text)
LANGUAGE sql AS $$
    SELECT $1, $2::text, pgml._algorithm_of(d.id)
    FROM (SELECT pgml._deploy(pgml._model_of($1), $2::text, $3) AS id) d
$$;

-------------------------------------------------------------------------------------------------------
-- pgml.load_dataset: the datasets scikit-learn ships (pgml_fdw/datasets.py), as the tables
-- PostgresML makes of them, in schema pgml.
-------------------------------------------------------------------------------------------------------
CREATE FOREIGN TABLE pgml._datasets (
    name          text,
    columns       jsonb,             -- [[column, type], ...]
    rows          jsonb,             -- [{column: value, ...}, ...]
    error         jsonb
) SERVER pgml OPTIONS (table 'datasets');
CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE OR DELETE ON pgml._datasets
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._refuse_writes();
ALTER FOREIGN TABLE pgml._datasets ENABLE ALWAYS TRIGGER refuse_writes;

-- Makes pgml.<dataset> for a role that may train, owned by it, in the caller's transaction. A
-- table of that name made earlier is replaced (as PostgresML does) when the role is a member of its
-- owner and nothing depends on it (PostgresML would drop what does).
-- Who loaded each dataset table. The tables belong to the extension's owner, not to the role that
-- loaded them: an owner could hang triggers, policies or defaults on a table in schema pgml that
-- run as whoever reads or trains on it next. Reading them is for everyone (public data).
CREATE TABLE pgml.dataset_tables (
    name      text PRIMARY KEY,
    loaded_by name NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now(),
    rows      bigint NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('pgml.dataset_tables', '');
GRANT SELECT ON pgml.dataset_tables TO PUBLIC;

CREATE FUNCTION pgml._load_dataset(arguments jsonb, requester name) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source text := arguments ->> 'source';
    row_limit bigint := (arguments ->> 'limit')::bigint;
    loaded record;
    existing record;
    written bigint;
    depending text;
BEGIN
    IF NOT has_table_privilege(requester, 'pgml.training_runs', 'INSERT') THEN
        RAISE EXCEPTION 'permission denied to load a dataset: role % may not train', requester
            USING ERRCODE = '42501',
                  HINT = format('pgml.load_dataset is for roles that train: GRANT INSERT ON pgml.training_runs TO %I.', requester);
    END IF;
    IF row_limit < 0 THEN
        RAISE EXCEPTION 'limit must not be negative, not %', row_limit USING ERRCODE = '22023';
    END IF;
    IF source IS NULL THEN
        RAISE EXCEPTION 'pgml.load_dataset needs the name of a dataset' USING ERRCODE = '22023',
            HINT = 'Load one of the datasets scikit-learn ships: breast_cancer, diabetes, digits, iris, linnerud or wine.';
    END IF;
    -- Two sessions loading one dataset: the second waits, then replaces the first's table.
    PERFORM pg_advisory_xact_lock(hashtext('pgml_fdw:dataset:' || source));
    SELECT d.* INTO loaded FROM pgml._datasets d WHERE d.name = source;
    PERFORM pgml._check(loaded.error);
    SELECT c.relkind, t.loaded_by INTO existing FROM pg_class c
    LEFT JOIN pgml.dataset_tables t ON t.name = c.relname
    WHERE c.relnamespace = 'pgml'::regnamespace AND c.relname = source;
    IF existing.relkind IS NOT NULL THEN
        IF existing.relkind <> 'r' OR existing.loaded_by IS NULL THEN
            RAISE EXCEPTION 'pgml.% exists and was not made by pgml.load_dataset', source USING ERRCODE = '42P07',
                HINT = format('Rename or drop pgml.%I first, or read the dataset from it as it is.', source);
        END IF;
        -- Public data, read by everyone: only whoever loaded it (or a member of that role) may
        -- replace it, with another limit, say.
        IF NOT pg_has_role(requester, existing.loaded_by, 'MEMBER') THEN
            RAISE EXCEPTION 'permission denied to load pgml.% again: role % loaded it', source, existing.loaded_by
                USING ERRCODE = '42501',
                      HINT = format('Read it as it is (every role may), or ask for GRANT %I TO %I.',
                                    existing.loaded_by, requester);
        END IF;
        BEGIN
            EXECUTE format('DROP TABLE pgml.%I', source);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            GET STACKED DIAGNOSTICS depending = PG_EXCEPTION_DETAIL;
            RAISE EXCEPTION 'cannot load pgml.% again: other objects depend on it', source
                USING ERRCODE = '2BP01', DETAIL = depending,
                      HINT = 'Drop them first (PostgresML would drop them with the table), or keep the table as it is.';
        END;
    END IF;
    EXECUTE format('CREATE TABLE pgml.%I (%s)', source,
                   (SELECT string_agg(format('%I %s', c ->> 0, (c ->> 1)::regtype), ', ' ORDER BY n)
                    FROM jsonb_array_elements(loaded.columns) WITH ORDINALITY AS e(c, n)));
    EXECUTE format('INSERT INTO pgml.%1$I SELECT * FROM jsonb_populate_recordset(NULL::pgml.%1$I, $1) LIMIT $2', source)
        USING loaded.rows, row_limit;
    GET DIAGNOSTICS written = ROW_COUNT;
    EXECUTE format('GRANT SELECT ON pgml.%I TO PUBLIC', source);
    INSERT INTO pgml.dataset_tables (name, loaded_by, rows) VALUES (source, requester, written)
    ON CONFLICT (name) DO UPDATE SET loaded_by = EXCLUDED.loaded_by, loaded_at = now(), rows = EXCLUDED.rows;
    RETURN jsonb_build_object('table_name', 'pgml.' || source, 'rows', written);
END
$$;

-- PostgresML's pgml.load_dataset for the datasets scikit-learn ships: breast_cancer, diabetes,
-- digits, iris, linnerud, wine. Makes the table pgml.<source> (replacing one the caller, or a role
-- it is a member of, loaded before), readable by every role, in the caller's transaction; limit keeps the first rows. subset and kwargs are
-- for PostgresML's Hugging Face datasets, which these are not: given, they are an error rather than
-- a table that is silently not what was asked for.
CREATE FUNCTION pgml.load_dataset(source text, subset text DEFAULT NULL, "limit" bigint DEFAULT NULL,
                                  kwargs jsonb DEFAULT '{}')
RETURNS TABLE (table_name text, rows bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    answer jsonb;
BEGIN
    PERFORM pgml._refuse_on_standby('load a dataset');
    IF subset IS NOT NULL OR coalesce(kwargs, '{}') <> '{}' THEN
        RAISE EXCEPTION 'pgml.load_dataset takes no subset or kwargs: those are for Hugging Face datasets, which pgml_fdw does not load'
            USING ERRCODE = '0A000',
                  HINT = 'Load one of the datasets scikit-learn ships by name alone: breast_cancer, diabetes, digits, iris, linnerud or wine.';
    END IF;
    INSERT INTO pgml._requests (action, arguments)
    VALUES ('load_dataset', jsonb_build_object('source', source, 'limit', load_dataset."limit"))
    RETURNING _requests.result INTO answer;
    table_name := answer ->> 'table_name';
    rows := (answer ->> 'rows')::bigint;
    RETURN NEXT;
END
$$;

-------------------------------------------------------------------------------------------------------
-- Privileges: PostgresML's functions need what pgml_fdw's do (training: INSERT on training_runs;
-- predicting: SELECT on predictions; deploying: membership in the model's owner). The requests
-- check their own; the views are granted as pgml.models is, by an administrator.
-------------------------------------------------------------------------------------------------------
GRANT INSERT, SELECT ON pgml._requests TO PUBLIC;
GRANT SELECT (name, model) ON pgml.project_names TO PUBLIC;  -- pgml._served_model, in predictions
REVOKE ALL ON FUNCTION pgml._identify_requester(), pgml._handle_request(), pgml._record_project(jsonb, name),
    pgml._load_dataset(jsonb, name) FROM PUBLIC;
-- ==== end postgresml ====

-- ==== fixes ====
-- 0.4.0's condition on pgml._model_expressions was a bare function call, which Multicorn cannot
-- read as a condition and warned about ("unsupported expression for extractClauseFrom") on every
-- pgml.score_table and pgml.score_into. A comparison with no column in it is one PostgreSQL checks
-- once, before the scan, and Multicorn passes over in silence.
CREATE OR REPLACE VIEW pgml._model_expressions WITH (security_barrier) AS
SELECT e.model, e.expression, e.error FROM pgml._expressions e
WHERE CASE WHEN has_table_privilege('pgml.predictions', 'SELECT') THEN 0 END = 0;
-- ==== end fixes ====
