-- The brief, played: define the data with a view, train with one command, predict with SQL.
-- make demo runs this file with psql, echoing each statement before its result.
\set ON_ERROR_STOP on
SET client_min_messages = warning;

-- Sample data: users and their orders.
DROP TABLE IF EXISTS demo_orders, demo_users CASCADE;
CREATE TABLE demo_users (id serial PRIMARY KEY, created_at timestamptz NOT NULL, age int, location text);
CREATE TABLE demo_orders (id serial PRIMARY KEY, user_id int REFERENCES demo_users, purchase_price numeric(10, 2));
INSERT INTO demo_users (created_at, age, location)
SELECT now() - (random() * 1000)::int * interval '1 day',
       18 + (random() * 50)::int,
       (ARRAY['Paris', 'Berlin', 'Lisbon', 'Madrid'])[1 + (random() * 3)::int]
FROM generate_series(1, 2000);
-- Loyal, older and Parisian customers buy more; a few have not bought anything yet.
INSERT INTO demo_orders (user_id, purchase_price)
SELECT u.id, round((10 + random() * 40 + CASE u.location WHEN 'Paris' THEN 15 ELSE 0 END + u.age * 0.3)::numeric, 2)
FROM demo_users u, generate_series(1, 12) n
WHERE n <= extract(epoch from now() - u.created_at) / 86400 / 90;

-- 1. Define the data with a SQL query (a view).
CREATE VIEW my_data AS
SELECT now() - created_at AS user_tenure, age, location, coalesce(total_purchases, 0) AS total_purchases
FROM demo_users
CROSS JOIN LATERAL (SELECT sum(purchase_price) AS total_purchases
                    FROM demo_orders WHERE user_id = demo_users.id) totals;
SELECT * FROM my_data LIMIT 3;

-- 2. Train with a single command (linear regression by default). It returns the model's id.
SELECT pgml.train('my_data', 'total_purchases');

-- What was trained, and how well it does on the rows held out for evaluation.
SELECT id, task, algorithm, deployed, metrics->>'r2' AS r2, train_rows, test_rows FROM pgml.models WHERE name = 'my_data';

-- 3. Serve predictions with SQL: by name (the deployed version), with the features as JSON.
SELECT pgml.score('my_data', '{"user_tenure": "2 years", "age": 35, "location": "Paris"}'::jsonb) AS likely_purchases;

-- The brief's form: a model of tenure alone, scored with an interval.
CREATE VIEW my_model AS SELECT user_tenure, total_purchases FROM my_data;
SELECT pgml.train('my_model', 'total_purchases');
SELECT pgml.score('my_model_1', '2 years'::interval) AS likely_purchase_amount_based_on_tenure;

-- One prediction per row of a table.
SELECT u.id, u.age, u.location, round(p.prediction::numeric, 2) AS predicted
FROM demo_users u
CROSS JOIN LATERAL pgml.prediction('my_data', jsonb_build_object('user_tenure', now() - u.created_at,
                                                                 'age', u.age, 'location', u.location)) p
ORDER BY u.id LIMIT 5;

-- Classification: will a customer spend more than 300? A random forest, with class probabilities.
CREATE VIEW big_spenders AS
SELECT user_tenure, age, location, total_purchases > 300 AS big_spender FROM my_data;
SELECT pgml.train('big_spenders', 'big_spender', 'random_forest');
SELECT id, metrics->>'accuracy' AS accuracy, metrics->>'f1' AS f1 FROM pgml.models WHERE name = 'big_spenders';
SELECT label, probabilities FROM pgml.predictions
WHERE model = 'big_spenders' AND features = '{"user_tenure": "900 days", "age": 60, "location": "Paris"}';
