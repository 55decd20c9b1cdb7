-- pgml_fdw 0.3.0 -> 0.4.0: whole tables scored in one statement, into a query or into a table.
--
-- Run by ALTER EXTENSION pgml_fdw UPDATE, and by CREATE EXTENSION after the earlier scripts. From
-- 0.4.0 on, a stored model with a fast path carries that path's parameters beside the estimator
-- (model format 2, pgml_fdw/model_format.py), so a backend serves it without importing numpy or
-- scikit-learn; models stored by 0.3.0 keep loading as they are.
\echo Use "ALTER EXTENSION pgml_fdw UPDATE TO '0.4.0'" to load this file. \quit

COMMENT ON COLUMN pgml.model_estimators.estimator IS
    'The stored model: an 8-byte tag, the length of a JSON header (4 bytes, big-endian), the header, the fast path''s arrays (format 2), then the scikit-learn estimator pickled alone. Before 0.3.0: the whole model pickled.';

-- A model's prediction as a SQL expression over its feature columns (pgml_fdw/sql_form.py), for the
-- models that have one (linear regression); a NULL expression for the others.
CREATE FOREIGN TABLE pgml._expressions (
    model       text,
    expression  text,
    error       jsonb
) SERVER pgml OPTIONS (table 'expressions');
CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE OR DELETE ON pgml._expressions
    FOR EACH STATEMENT EXECUTE FUNCTION pgml._refuse_writes();

-- What the scoring functions below read it through: a role that may predict (SELECT on
-- pgml.predictions) may read a model's expression, which says no more than its predictions do. A
-- security barrier, so that no condition of the caller's sees a row before that check.
CREATE VIEW pgml._model_expressions WITH (security_barrier) AS
SELECT e.model, e.expression, e.error FROM pgml._expressions e
WHERE has_table_privilege('pgml.predictions', 'SELECT');
GRANT SELECT ON pgml._model_expressions TO PUBLIC;

-- The expression of the model a uid stands for; NULL when it has none, or the caller may not predict.
CREATE FUNCTION pgml._expression(uid text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT e.expression FROM pgml._model_expressions e WHERE e.model = uid AND pgml._check(e.error) = 0
$$;

-- The schema-qualified name of a relation, as the wrapper's own connection finds it whatever the
-- caller's search_path.
CREATE FUNCTION pgml._qualified(relation regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = relation
$$;

-------------------------------------------------------------------------------------------------------
-- Scoring a whole relation. A linear regression is computed by PostgreSQL itself, as an expression
-- over the relation's columns: in the caller's transaction, with the caller's privileges, at the
-- speed of a plain SELECT (it agrees with the single-row prediction to about 1e-15 of its largest
-- term: only the order of the final sum differs). Any other model goes through pgml.predictions'
-- relation form, which scores the rows in one vectorized pass in a worker process. Either way the
-- caller needs SELECT on pgml.predictions, like any prediction, and on the relation.
-------------------------------------------------------------------------------------------------------

-- Every row of a relation scored: its key_column value as text (NULL without key_column), the
-- prediction and, for classification, the class as text.
--   SELECT key::bigint AS user_id, prediction FROM pgml.score_table('churn', 'users', 'id');
CREATE FUNCTION pgml.score_table(model text, relation regclass, key_column text DEFAULT NULL)
RETURNS TABLE (key text, prediction double precision, label text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    resolved text := pgml._resolve(model);
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

-- Scores every row of a relation into a table: INSERTs (key_column's value, the prediction) into
-- target's columns target_key (by default key_column's name) and target_column, and returns how many
-- rows it wrote. The recommended form for nightly scoring, in one transaction with whatever else the
-- job does:
--   BEGIN; TRUNCATE churn_scores;
--   SELECT pgml.score_into('churn', 'users', 'id', 'churn_scores', target_column => 'score');
--   COMMIT;
-- A text target_column receives the class of a classification model, any other its prediction.
CREATE FUNCTION pgml.score_into(model text, relation regclass, key_column text, target regclass,
                                target_key text DEFAULT NULL, target_column text DEFAULT 'prediction')
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    resolved text := pgml._resolve(model);
    formula text := pgml._expression(resolved);
    into_key text := coalesce(target_key, key_column);
    key_type text;
    value_category "char";
    written bigint;
BEGIN
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

-------------------------------------------------------------------------------------------------------
-- The scoring functions pass the model's name on to pgml.predictions, which resolves it in the
-- caller's snapshot (its context), instead of resolving it in SQL first: a third of their time per
-- row. Only a transaction that changed too many models for the context to list them (pgml.changed
-- ends in '!') still resolves the name here.
-------------------------------------------------------------------------------------------------------

-- The model reference to hand pgml.predictions: the name or id itself, or, in a transaction whose
-- changes the context cannot list, the uid it stands for in the caller's snapshot.
CREATE FUNCTION pgml._reference(model text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN right(current_setting('pgml.changed', true), 1) = '!' THEN pgml._resolve(model) ELSE model END
$$;

CREATE OR REPLACE FUNCTION pgml.prediction(model text, features jsonb)
RETURNS TABLE (prediction double precision, label text, probabilities jsonb, version integer)
LANGUAGE plpgsql STABLE ROWS 1 COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    ref text := pgml._reference(model);  -- once: as a condition of the query it would run twice
BEGIN
    RETURN QUERY
    SELECT p.prediction, p.label, p.probabilities, p.version
    FROM pgml.predictions p WHERE p.model = ref AND p.features = prediction.features;
END
$$;

CREATE OR REPLACE FUNCTION pgml.score(model text, features jsonb) RETURNS double precision
LANGUAGE plpgsql STABLE COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    ref text := pgml._reference(model);
    answer record;
BEGIN
    SELECT p.prediction, p.label INTO answer
    FROM pgml.predictions p WHERE p.model = ref AND p.features = score.features;
    IF answer.prediction IS NULL AND answer.label IS NOT NULL THEN
        RAISE EXCEPTION 'model "%" predicts text classes, which pgml.score cannot return as a number', model
            USING ERRCODE = '22023', HINT = 'Use pgml.classify(model, features) for the class as text.';
    END IF;
    RETURN answer.prediction;
END
$$;

CREATE OR REPLACE FUNCTION pgml.classify(model text, features jsonb) RETURNS text
LANGUAGE plpgsql STABLE COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    ref text := pgml._reference(model);
    answer record;
BEGIN
    SELECT p.prediction, p.label INTO answer
    FROM pgml.predictions p WHERE p.model = ref AND p.features = classify.features;
    IF answer.label IS NULL THEN
        RAISE EXCEPTION 'model "%" is a regression model', model
            USING ERRCODE = '22023', HINT = 'Use pgml.score(model, features) for its prediction.';
    END IF;
    RETURN answer.label;
END
$$;

CREATE OR REPLACE FUNCTION pgml.predict_proba(model text, features jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE COST 10 SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    ref text := pgml._reference(model);
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
