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

-- The numbering rule, in one place: records and returns a name's next number, at_least or more and
-- more than any it was given, in the transaction that calls it (the wrapper's own, which commits at
-- once; or the one that creates the extension, see pgml._take_version).
CREATE FUNCTION pgml._next_version_number(model_name text, at_least integer) RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO pgml.version_numbers AS v (name, last) VALUES (model_name, at_least)
    ON CONFLICT (name) DO UPDATE SET last = greatest(v.last + 1, EXCLUDED.last)
    RETURNING v.last
$$;
REVOKE ALL ON FUNCTION pgml._next_version_number(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgml._next_version_number(text, integer) TO pgml_fdw;

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
-- extension (its pg_extension row, visible here, is still in progress: it can only be this
-- transaction's), the wrapper's connection cannot see pgml.version_numbers, nor the role it logs in
-- as on a new cluster: that transaction counts the number itself; if it rolls back, nothing of it
-- remains (a savepoint rolled back inside it gives its numbers back).
CREATE FUNCTION pgml._take_version(model_name text) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    least_version integer := (SELECT n.versions + 1 FROM pgml.model_names n WHERE n.name = model_name);
    -- The row's 32-bit xmin, with the epoch it was written in (this one, or the one before).
    installing boolean := (SELECT coalesce(txid_status(CASE WHEN x <= now % 4294967296 THEN (now >> 32 << 32) + x
                                                            ELSE ((now >> 32) - 1 << 32) + x END) = 'in progress', false)
                           FROM (SELECT txid_current() AS now, e.xmin::text::bigint AS x
                                 FROM pg_extension e WHERE e.extname = 'pgml_fdw') t);
    taken record;
BEGIN
    IF installing THEN
        RETURN pgml._next_version_number(model_name, least_version);
    END IF;
    SELECT v.version, v.error INTO taken FROM pgml._version_numbers v
    WHERE v.name = model_name AND v.at_least = least_version;
    PERFORM pgml._check(taken.error);
    IF taken.version IS NULL THEN
        RAISE EXCEPTION 'pgml_fdw failed unexpectedly: no version number came back for model "%"', model_name
            USING ERRCODE = 'XX000', HINT = 'This is a bug in pgml_fdw: please report it with the server log.';
    END IF;
    RETURN taken.version;
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

-------------------------------------------------------------------------------------------------------
-- A uid given by hand names only a version the caller can see. The scoring functions hand the
-- wrapper uids they resolved in the caller's snapshot; a backend caches models by uid, so a uid
-- written into a query by hand (it is in pgml.model_versions) could reach a model that was deleted,
-- or trained in a transaction that rolled back, and that this backend still held. Like
-- pgml.predictions, the two views below hand the wrapper the caller's context, and the wrapper
-- checks the uid before it explains anything or writes its SQL (pgml_fdw/store.py): a check in
-- pgml._model_explanations' own conditions could run after a caller's (it is no security barrier,
-- see 0.5.0).
-------------------------------------------------------------------------------------------------------
ALTER FOREIGN TABLE pgml._explanations ADD COLUMN context text;
CREATE OR REPLACE VIEW pgml._model_explanations AS
SELECT e.model, e.features, e.feature, e.value, e.imputed, e.contribution, e.explains, e.label
FROM pgml._explanations e
WHERE e.context = (SELECT pgml._context()) AND pgml._may_explain() = 0 AND pgml._check(e.error) = 0;

ALTER FOREIGN TABLE pgml._expressions ADD COLUMN context text;
CREATE OR REPLACE VIEW pgml._model_expressions WITH (security_barrier) AS
SELECT e.model, e.expression, e.error FROM pgml._expressions e
WHERE CASE WHEN has_table_privilege('pgml.predictions', 'SELECT') THEN 0 END = 0
  AND e.context = (SELECT pgml._context());

-------------------------------------------------------------------------------------------------------
-- Datasets loaded by one role, trained on by others (pgml.load_dataset, 0.5.0).
--   * A table is known by itself, not only by its name: pgml.dataset_tables records the table
--     (regclass: it survives pg_dump and pg_restore). A table of that name made after the loaded one
--     was dropped is not the loader's to replace.
--   * Whoever loaded a dataset may load it again only while no model of another role was trained
--     on it: a reload with a limit, say, would change what their next training of the same data
--     (pgml.train('project')) learns, and that version would auto-deploy.
-------------------------------------------------------------------------------------------------------
ALTER TABLE pgml.dataset_tables ADD COLUMN relation regclass;
COMMENT ON COLUMN pgml.dataset_tables.relation IS 'The table load_dataset made: only that table, not another of its name, may be replaced.';
UPDATE pgml.dataset_tables t SET relation = c.oid
FROM pg_class c, pg_extension e
WHERE c.oid = to_regclass(format('pgml.%I', t.name)) AND e.extname = 'pgml_fdw' AND c.relowner = e.extowner;

-- 0.5.0's pgml._load_dataset, with both rules.
CREATE OR REPLACE FUNCTION pgml._load_dataset(arguments jsonb, requester name) RETURNS jsonb
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
    SELECT c.oid, c.relkind, t.loaded_by INTO existing FROM pg_class c
    LEFT JOIN pgml.dataset_tables t ON t.name = c.relname AND t.relation = c.oid
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
        -- Models of other roles trained on it must keep their data: reloading it (with a limit, say)
        -- would change what their next training of the same data learns, and auto-deploys.
        -- (Relations as training recorded them: schema-qualified, as load_dataset's tables are named.)
        SELECT string_agg(DISTINCT n.owner, ', ') INTO depending
        FROM pgml.model_names n
        WHERE NOT pgml._may_manage(n.name, requester)  -- an owner role since dropped counts as another
          AND (EXISTS (SELECT FROM pgml.model_versions m WHERE m.name = n.name AND to_regclass(m.relation) = existing.oid)
               OR EXISTS (SELECT FROM pgml.project_names p WHERE p.model = n.name AND to_regclass(p.relation) = existing.oid));
        IF depending IS NOT NULL THEN
            RAISE EXCEPTION 'cannot load pgml.% again: models of role % were trained on it', source, depending
                USING ERRCODE = '42501',
                      HINT = 'Read it as it is, or ask the owners of those models to delete them first (pgml.models lists them).';
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
    INSERT INTO pgml.dataset_tables (name, loaded_by, rows, relation)
    VALUES (source, requester, written, format('pgml.%I', source)::regclass)
    ON CONFLICT (name) DO UPDATE SET loaded_by = EXCLUDED.loaded_by, loaded_at = now(), rows = EXCLUDED.rows,
                                     relation = EXCLUDED.relation;
    RETURN jsonb_build_object('table_name', 'pgml.' || source, 'rows', written);
END
$$;

-------------------------------------------------------------------------------------------------------
-- A project's training data (relation, y column, split and preprocessing) is for the members of its
-- model's owner: other roles learn its name, task and model, as pgml_fdw's model names (0.5.0's
-- pgml._project told anyone everything, and training someone else's project named its relation in
-- the error). pgml.projects, granted by an administrator like pgml.models, still lists them all.
-------------------------------------------------------------------------------------------------------
CREATE VIEW pgml._visible_projects WITH (security_barrier) AS
SELECT p.id, p.name, p.task, p.model,
       CASE WHEN mine THEN p.relation END AS relation,
       CASE WHEN mine THEN p.y_column END AS y_column,
       CASE WHEN mine THEN p.test_size END AS test_size,
       CASE WHEN mine THEN p.test_sampling END AS test_sampling,
       CASE WHEN mine THEN p.preprocess END AS preprocess,
       p.created_at, p.updated_at
FROM pgml.project_names p
CROSS JOIN LATERAL (SELECT pgml._may_manage(p.model, current_user) AS mine) m;  -- current_user: the reader
GRANT SELECT ON pgml._visible_projects TO PUBLIC;

-- A project as the caller may see it, or a row of NULLs.
CREATE OR REPLACE FUNCTION pgml._project(project text) RETURNS pgml.project_names
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.id, p.name, p.task, p.model, p.relation, p.y_column, p.test_size, p.test_sampling, p.preprocess,
           p.created_at, p.updated_at
    FROM pgml._visible_projects p WHERE p.name = project
$$;

-- 0.5.0's pgml._train_project, refusing another role's project before anything of its training data
-- is used (pgml._train would refuse it later, naming its relation in the error).
CREATE OR REPLACE FUNCTION pgml._train_project(
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
    IF current.id IS NOT NULL AND NOT pgml._may_manage(current.model, current_user) THEN
        RAISE EXCEPTION 'permission denied to train project "%": its model % belongs to role %',
                        project, current.model, pgml._owner(current.model)
            USING ERRCODE = '42501',
                  HINT = format('Train a project of your own under another name, or ask for GRANT %I TO %I.',
                                pgml._owner(current.model), current_user);
    END IF;
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

-------------------------------------------------------------------------------------------------------
-- PostgresML project names in the rest of pgml_fdw's functions: pgml.predict_proba with jsonb or a
-- row, pgml.score_table and pgml.score_into take them, as pgml.explain and pgml.decompose do (0.5.0).
-- pgml.score_into on a hot standby says to run it on the primary, before it resolves anything.
-------------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pgml.predict_proba(model text, features jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    ref text := pgml._reference(pgml._served_model(model));  -- a PostgresML project's name too
    answer record;
BEGIN
    SELECT p.label, p.probabilities INTO answer
    FROM pgml.predictions p WHERE p.model = ref AND p.features = predict_proba.features;
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

CREATE OR REPLACE FUNCTION pgml.score_table(model text, relation regclass, key_column text DEFAULT NULL)
RETURNS TABLE (key text, prediction double precision, label text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    resolved text := pgml._resolve(pgml._served_model(model));  -- a PostgresML project's name too
    formula text := pgml._expression(resolved);
BEGIN
    IF formula IS NOT NULL THEN
        RETURN QUERY EXECUTE format('SELECT %s, %s, NULL::text FROM %s',
                                    CASE WHEN key_column IS NULL THEN 'NULL::text' ELSE format('%I::text', key_column) END,
                                    formula, relation);
    ELSIF key_column IS NULL THEN
        RETURN QUERY SELECT NULL::text, p.prediction, p.label FROM pgml.predictions p
        WHERE p.model = resolved AND p.relation = pgml._qualified(score_table.relation);
    ELSE
        RETURN QUERY SELECT p.key, p.prediction, p.label FROM pgml.predictions p
        WHERE p.model = resolved AND p.relation = pgml._qualified(score_table.relation)
          AND p.key_column = score_table.key_column;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pgml.score_into(model text, relation regclass, key_column text, target regclass,
                                target_key text DEFAULT NULL, target_column text DEFAULT 'prediction')
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    resolved text;
    formula text;
    into_key text := coalesce(target_key, key_column);
    key_type text;
    value_category "char";
    written bigint;
BEGIN
    -- Before anything else: a standby would get as far as the INSERT, and PostgreSQL's bare error.
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'cannot score into a table on a hot standby'
            USING ERRCODE = '25006',
                  HINT = 'Run pgml.score_into on the primary; on this standby, read the predictions with pgml.score_table(model, relation, key_column).';
    END IF;
    resolved := pgml._resolve(pgml._served_model(model));  -- a PostgresML project's name too
    formula := pgml._expression(resolved);
    SELECT format_type(a.atttypid, a.atttypmod) INTO key_type FROM pg_attribute a
    WHERE a.attrelid = target AND a.attname = into_key AND a.attnum > 0 AND NOT a.attisdropped;
    SELECT t.typcategory INTO value_category FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = target AND a.attname = target_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF key_type IS NULL OR value_category IS NULL THEN
        RAISE EXCEPTION 'table % has no column "%"', target, CASE WHEN key_type IS NULL THEN into_key ELSE target_column END
            USING ERRCODE = '42703',
                  HINT = 'score_into writes the key into target_key (by default key_column''s name) and the prediction '
                         'into target_column (by default "prediction"): name the target''s columns, or add them.';
    END IF;
    IF formula IS NOT NULL THEN
        EXECUTE format('INSERT INTO %s (%I, %I) SELECT %I, %s FROM %s', target, into_key, target_column,
                       key_column, formula, relation);
    ELSE
        EXECUTE format('INSERT INTO %s (%I, %I) SELECT p.key::%s, p.%s FROM pgml.predictions p '
                       'WHERE p.model = %L AND p.relation = %L AND p.key_column = %L',
                       target, into_key, target_column, key_type,
                       CASE WHEN value_category = 'S' THEN 'label' ELSE 'prediction' END,
                       resolved, pgml._qualified(relation), key_column);
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$$;
