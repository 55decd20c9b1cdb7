"""Tests for pgml_fdw.training's guard on the size of the feature matrix, without a server."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pgml_fdw import training
from pgml_fdw.columns import FeatureColumn
from pgml_fdw.errors import PgmlError
from pgml_fdw.preprocessing import Column, FeatureEncoder, plan_preprocessing
from pgml_fdw.training import TrainingOptions, check_matrix_size

ROWS = 200
COLUMNS = [Column("age", "number", "integer"), Column("email", "text", "text")]


def _fitted(columns=COLUMNS) -> FeatureEncoder:
    data = {"age": np.arange(ROWS, dtype=np.float64),
            "email": np.array([f"u{i}@x.io" for i in range(ROWS)], dtype=object)}
    encoder = FeatureEncoder(columns, plan_preprocessing(columns, None, needs_scaling=False))
    return encoder.fit({c.name: data[c.name] for c in columns})


def test_the_memory_limit_is_at_most_the_physical_memory() -> None:
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < training.memory_limit() <= physical


def test_a_matrix_within_the_limit_passes() -> None:
    encoder = _fitted()
    check_matrix_size(encoder, ROWS, budget=ROWS * 201 * 8 * training.PEAK_FACTOR)  # age + 200 one-hot features


def test_an_identifier_column_is_named_with_the_fix() -> None:
    with pytest.raises(PgmlError) as caught:
        check_matrix_size(_fitted(), ROWS, budget=ROWS * 200 * 8 * training.PEAK_FACTOR)
    assert f"({ROWS:,} rows x 201 features)" in caught.value.message
    assert 'Column "email" alone becomes 200 features' in caught.value.hint
    assert '"encode": "ordinal"' in caught.value.hint


def test_too_many_rows_of_numbers_suggests_fewer_rows() -> None:
    with pytest.raises(PgmlError) as caught:
        check_matrix_size(_fitted([COLUMNS[0]]), ROWS, budget=100)
    assert "fewer rows" in caught.value.hint


def test_training_stops_before_making_the_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default budget (a quarter of this) is room for 100 features at the peak factor; the 150
    # training rows give email 150 categories.
    monkeypatch.setattr(training, "memory_limit", lambda: 4 * ROWS * 100 * 8 * training.PEAK_FACTOR)
    transformed = []
    monkeypatch.setattr(FeatureEncoder, "transform", lambda self, data: transformed.append(1))
    options = TrainingOptions.from_row({"id": "m_1", "name": "m", "version": 1, "relation": "users",
                                        "y_column": "y", "trained_by": "app"})
    columns = [FeatureColumn("age", "integer", "number", "int4"), FeatureColumn("email", "text", "text", "text")]
    data = {"age": np.arange(ROWS, dtype=np.float64), "email": np.array([f"u{i}" for i in range(ROWS)], dtype=object)}
    with pytest.raises(PgmlError, match="the feature matrix would take"):
        training.train(options, FeatureColumn("y", "double precision", "number", "float8"), columns, data,
                       np.arange(ROWS, dtype=np.float64))
    assert transformed == []


def test_the_training_budget_defaults_to_a_quarter_and_refuses_over_half(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "memory_limit", lambda: 8 * 2**30)
    assert training.training_budget(0) == 2 * 2**30
    assert training.training_budget(3 * 2**30) == 3 * 2**30
    with pytest.raises(PgmlError) as caught:
        training.training_budget(5 * 2**30)
    assert "more than half" in caught.value.message and "4.0 GB" in caught.value.hint


def test_a_relation_estimated_too_big_is_refused_before_reading() -> None:
    columns = [FeatureColumn("age", "integer", "number", "int4")]
    training.check_estimated_size(1000, columns, budget=1000 * 2 * 8 * training.PEAK_FACTOR)
    with pytest.raises(PgmlError) as caught:
        training.check_estimated_size(10**9, columns, budget=2**30)
    assert caught.value.sqlstate == "53200" and "pgml.training_memory" in caught.value.hint


def test_linear_regression_is_exact_whatever_the_feature_scales() -> None:
    # The demo's shape: an interval in seconds (up to about 6e7) beside small numbers. scikit-learn
    # 1.9's least squares cutoff made the small ones' coefficients zero (r2 0.74) unless scaled.
    rng = np.random.default_rng(0)
    seconds, small = rng.uniform(0, 6e7, ROWS), rng.uniform(0, 10, ROWS)
    y = 3 * small + seconds / 8.64e6 + rng.normal(0, 0.01, ROWS)
    options = TrainingOptions.from_row({"id": "m_1", "name": "m", "version": 1, "relation": "t",
                                        "y_column": "y", "trained_by": "app"})
    columns = [FeatureColumn("seconds", "interval", "number", "interval"),
               FeatureColumn("small", "double precision", "number", "float8")]
    result = training.train(options, FeatureColumn("y", "double precision", "number", "float8"), columns,
                            {"seconds": seconds, "small": small}, y)
    assert result.metrics["r2"] > 0.999
