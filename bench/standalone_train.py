"""Scenario d's baseline: the script a user would write to train the same model outside the database.

    python3 bench/standalone_train.py DSN RELATION Y_COLUMN

It reads the relation with COPY as CSV into numpy (the faster of the usual idioms: cursor.fetchall()
into numpy.array takes about 1.6x as long on 1,000,000 rows x 21 floats), then does what
pgml.train('relation', 'y') does: the same split (train_test_split of the row numbers, a quarter
held out, seed 0), no scaling (the wrapper does not scale for linear regression), a
LinearRegression fit, the same four test metrics, and a pickle of the model. Prints a JSON line
with the phases' seconds and the metrics.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import sys
import time

import numpy as np
import psycopg2
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score, root_mean_squared_error
from sklearn.model_selection import train_test_split


def main() -> None:
    """Loads, splits, fits, evaluates and pickles, printing the JSON line."""
    dsn, relation, y_column = sys.argv[1:4]
    started = time.perf_counter()
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {relation} LIMIT 0")
        names = [column.name for column in cur.description]
        buffer = io.BytesIO()
        cur.copy_expert(f"COPY (SELECT * FROM {relation}) TO STDOUT (FORMAT csv)", buffer)
    conn.close()
    buffer.seek(0)
    table = np.loadtxt(buffer, delimiter=",", dtype=np.float64, ndmin=2)
    y_index = names.index(y_column)
    X, y = np.delete(table, y_index, axis=1), table[:, y_index]
    loaded = time.perf_counter()

    n = len(y)
    train, test = train_test_split(np.arange(n), test_size=math.ceil(n * 0.25), random_state=0)
    model = LinearRegression().fit(X[train], y[train])
    predicted = model.predict(X[test])
    metrics = {
        "r2": r2_score(y[test], predicted),
        "mean_absolute_error": mean_absolute_error(y[test], predicted),
        "mean_squared_error": mean_squared_error(y[test], predicted),
        "root_mean_squared_error": root_mean_squared_error(y[test], predicted),
    }
    saved = len(pickle.dumps(model, protocol=4))
    done = time.perf_counter()
    print(json.dumps({"rows": n, "load_seconds": loaded - started, "fit_seconds": done - loaded,
                      "pickle_bytes": saved, "metrics": metrics}))


if __name__ == "__main__":
    main()
