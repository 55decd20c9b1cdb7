-- pgml_fdw 0.4.0 -> 0.5.0: explanations of single predictions.
--
-- Run by ALTER EXTENSION pgml_fdw UPDATE, and by CREATE EXTENSION after the earlier scripts.
\echo Use "ALTER EXTENSION pgml_fdw UPDATE TO '0.5.0'" to load this file. \quit

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
