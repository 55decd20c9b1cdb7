-- pgml_fdw 0.2.0 -> 0.3.0: models record the versions that trained them.
--
-- Run by ALTER EXTENSION pgml_fdw UPDATE, and by CREATE EXTENSION after the 0.1.0 script and the
-- 0.1.0 -> 0.2.0 update. From 0.3.0 on, a stored model is plain data (its columns, classes and
-- preprocessing, as JSON) around the scikit-learn estimator, and says which Python, numpy, SciPy,
-- scikit-learn and pgml_fdw made it (pgml_fdw/model_format.py). Models stored by 0.2.0 keep
-- loading as they are; their versions are unknown (NULL).
\echo Use "ALTER EXTENSION pgml_fdw UPDATE TO '0.3.0'" to load this file. \quit

ALTER TABLE pgml.model_versions ADD COLUMN versions jsonb;
COMMENT ON COLUMN pgml.model_versions.versions IS
    'The versions that trained it: {"python", "numpy", "scipy", "scikit-learn", "pgml_fdw"}; NULL for a model stored by pgml_fdw 0.2.0 or earlier.';
COMMENT ON COLUMN pgml.model_estimators.estimator IS
    'The stored model: an 8-byte tag, the length of a JSON header (4 bytes, big-endian), the header, then the scikit-learn estimator pickled alone. Before 0.3.0: the whole model pickled.';

-- The "versions" of a stored model's JSON header, read where model_format.py writes it; NULL for
-- a model stored before 0.3.0 (a bare pickle, without the tag).
CREATE FUNCTION pgml._stored_versions(stored bytea) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN substring(stored FROM 1 FOR 8) = '\x50474d4c4644570a'::bytea  -- 'PGMLFDW\n'
           THEN convert_from(substring(stored FROM 13 FOR (get_byte(stored, 8) << 24) | (get_byte(stored, 9) << 16)
                                                           | (get_byte(stored, 10) << 8) | get_byte(stored, 11)),
                             'UTF8')::jsonb -> 'versions'
           END
$$;

-- Every way a model is stored (a training run, a restore) fills its versions from the model itself.
CREATE FUNCTION pgml._record_versions() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    recorded jsonb := pgml._stored_versions(NEW.estimator);
BEGIN
    UPDATE pgml.model_versions m SET versions = recorded
    WHERE m.id = NEW.model_id AND m.versions IS DISTINCT FROM recorded;
    RETURN NEW;
END
$$;
CREATE TRIGGER record_versions AFTER INSERT OR UPDATE OF estimator ON pgml.model_estimators
    FOR EACH ROW EXECUTE FUNCTION pgml._record_versions();
ALTER TABLE pgml.model_estimators ENABLE ALWAYS TRIGGER record_versions;
-- Models the 0.3.0 Python package trained before this update already say their versions.
UPDATE pgml.model_versions m SET versions = s.versions
FROM pgml.model_estimators e CROSS JOIN LATERAL (SELECT pgml._stored_versions(e.estimator) AS versions) s
WHERE e.model_id = m.id AND s.versions IS NOT NULL;

-- The 0.2.0 view, and the versions each model was trained with.
CREATE OR REPLACE VIEW pgml.models AS
SELECT m.id, m.name, m.version, m.task, m.algorithm, m.relation, m.y_column,
       d.version IS NOT NULL AS deployed,
       m.metrics, m.hyperparams, m.train_rows, m.test_rows, m.duration,
       m.trained_by, m.trained_at, m.search IS NOT NULL AS searched, n.owner, m.versions
FROM pgml.model_versions m
JOIN pgml.model_names n ON n.name = m.name
LEFT JOIN pgml.deployed_models d ON d.id = m.id
ORDER BY m.name, m.version DESC;
