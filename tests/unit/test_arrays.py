"""Array columns as features, without a server: how a model takes them in one row, and how the loader
reads and checks them."""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from pgml_fdw import loading, model_format, sql_form
from pgml_fdw.columns import (
    FeatureColumn,
    array_elements,
    array_sources,
    as_real,
    expand_preprocess,
    to_number,
)
from pgml_fdw.errors import PgmlError
from pgml_fdw.loading import ArrayColumn, ArrayShape, check_array_shapes
from pgml_fdw.model import Model
from pgml_fdw.training import TrainingOptions, train

ROWS = 120
Y = FeatureColumn("y", "double precision", "number", "float8")


def _columns() -> List[FeatureColumn]:
    """x real, v smallint[3], z double precision: an array between two scalars."""
    return ([FeatureColumn("x", "real", "number", "float4")] + array_elements("v", "smallint", "number", "int2", 3)
            + [FeatureColumn("z", "double precision", "number", "float8")])


def _trained(algorithm: str = "linear", preprocess: Any = None) -> Tuple[Model, Dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    columns = _columns()
    data = {c.name: rng.integers(0, 10, ROWS).astype(np.float64) for c in columns}
    data["x"] = np.float32(rng.uniform(0, 1, ROWS)).astype(np.float64)  # what a real column reads as
    data["v[2]"][::7] = np.nan  # NULL elements
    y = 2 * data["x"] + 3 * np.nan_to_num(data["v[2]"]) - data["v[3]"] + 0.5 * data["z"]
    options = TrainingOptions.from_row({"id": "arr_1", "name": "arr", "version": 1, "relation": "t", "y_column": "y",
                                        "trained_by": "u", "algorithm": algorithm,
                                        "preprocess": None if preprocess is None else json.dumps(preprocess)})
    result = train(options, Y, columns, dict(data), y)
    stored = model_format.dump(result.model, result.probe)
    return model_format.load(stored, "arr_1"), data


def test_array_elements_are_named_after_subscripts() -> None:
    elements = array_elements("image", "smallint", "number", "int2", 64)
    assert [e.name for e in elements[:2]] == ["image[1]", "image[2]"] and elements[-1].name == "image[64]"
    assert elements[2].array == ("image", 3) and elements[2].column == "image"
    assert elements[2].reference() == '("image")[3]'
    assert FeatureColumn('a"b', "integer", "number", "int4").reference() == '"a""b"'
    quoted = array_elements('x"y', "real", "number", "float4", 1)[0]
    assert quoted.reference() == '("x""y")[1]'


def test_a_feature_round_trips_through_its_data() -> None:
    scalar = FeatureColumn("a", "integer", "number", "int4")
    for column in [scalar, *array_elements("v", "real", "number", "float4", 2)]:
        again = FeatureColumn(*json.loads(json.dumps(column.to_data())))
        assert again == column and again.array == column.array
    # A scalar is stored as pgml_fdw 0.4 stored it, so an older reader takes it.
    assert FeatureColumn("a", "integer", "number", "int4").to_data() == ["a", "integer", "number", "int4"]


def test_array_sources_group_consecutive_elements() -> None:
    sources = array_sources(_columns())
    assert [(s.name, s.first, s.width) for s in sources] == [("v", 1, 3)]


def test_preprocess_of_an_array_column_applies_to_each_element() -> None:
    columns = _columns()
    expanded = expand_preprocess({"v": {"scale": "min_max"}, "v[2]": {"impute": "median"}, "x": {}}, columns)
    assert expanded == {"v[1]": {"scale": "min_max"}, "v[2]": {"impute": "median"}, "v[3]": {"scale": "min_max"},
                        "x": {}}
    assert expand_preprocess("not an object", columns) == "not an object"


def test_every_form_of_one_row_gives_the_same_values() -> None:
    model, data = _trained()
    flat = [0.25, 1, None, 3, 7]
    forms = [
        flat,                                             # PostgresML's array: the elements in place
        [0.25, [1, None, 3], 7],                          # the relation's columns, the array as one value
        {"x": 0.25, "v": [1, None, 3], "z": 7},           # by column name
        {"x": 0.25, "v[1]": 1, "v[2]": None, "v[3]": 3, "z": 7},  # by feature name
        json.dumps({"x": 0.25, "v": [1, None, 3], "z": 7}),       # as text, as Multicorn hands jsonb over
    ]
    expected = [0.25, 1.0, math.nan, 3.0, 7.0]
    for form in forms:
        values = model.row_values(form)
        assert len(values) == 5
        assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(values, expected)), form
    predictions = {model.predict_row(form)[0] for form in forms}
    assert len(predictions) == 1


def test_one_row_agrees_with_many_rows() -> None:
    for algorithm in ("linear", "random_forest"):
        model, data = _trained(algorithm)
        batch = [p for p, _, _ in model.predict_arrays(data)]
        for i in range(0, ROWS, 11):
            row = {"x": data["x"][i], "v": [None if math.isnan(data[f"v[{k}]"][i]) else data[f"v[{k}]"][i]
                                            for k in (1, 2, 3)], "z": data["z"][i]}
            assert model.predict_row(row)[0] == pytest.approx(batch[i], rel=1e-12, abs=1e-12)


def test_a_null_array_is_a_null_of_each_element() -> None:
    model, _ = _trained()
    for form in ({"x": 1, "v": None, "z": 2}, [1, None, 2]):  # by name, and the relation's columns by position
        values = model.row_values(form)
        assert values[0] == 1.0 and values[4] == 2.0 and all(math.isnan(v) for v in values[1:4])


@pytest.mark.parametrize("features, message", [
    ({"x": 1, "v": [1, 2], "z": 3}, 'feature "v" of model arr_1 takes an array of 3 values, not 2 values'),
    ({"x": 1, "v": [1, 2, 3, 4], "z": 3}, "takes an array of 3 values, not 4 values"),
    ({"x": 1, "v": 5, "z": 3}, "takes an array of 3 values, not 5"),
    ([1, [1, 2], 3], "takes an array of 3 values, not 2 values"),
    ([1, 2, 3, 4], "takes 5 features, not 4"),
    ({"x": 1, "v": [1, 2, 3], "v[1]": 1, "z": 3}, 'gives both "v" and its elements v[1]'),
    ({"x": 1, "v": [1, [2], 3], "z": 3}, 'feature "v[2]" (smallint) cannot take the value [2]'),
    ({"x": 1, "w": [1, 2, 3], "z": 3}, "has no feature 'w'"),
])
def test_a_wrong_array_is_a_clear_error(features: Any, message: str) -> None:
    model, _ = _trained()
    with pytest.raises(PgmlError) as caught:
        model.row_values(features)
    assert message in caught.value.message
    assert caught.value.hint


def test_the_shape_hint_shows_the_array() -> None:
    model, _ = _trained()
    with pytest.raises(PgmlError) as caught:
        model.row_values([1, 2])
    assert '"v": [3 values]' in caught.value.hint and "v (an array of 3)" in caught.value.hint


def test_a_real_column_takes_json_as_the_column_holds_it() -> None:
    real = FeatureColumn("x", "real", "number", "float4")
    assert to_number(0.1, real) == float(np.float32(0.1)) != 0.1
    assert to_number(0.1, FeatureColumn("x", "double precision", "number", "float8")) == 0.1
    assert as_real(3.0) == 3.0
    with pytest.raises(PgmlError, match="cannot take the value"):
        to_number(1e39, real)
    model, _ = _trained()
    fast = model.row_values([0.1, 1, 2, 3, 4])  # every value a JSON number: the fast path
    checked = model.row_values({"x": 0.1, "v": [1, 2, 3], "z": 4})
    assert fast[0] == checked[0] == float(np.float32(0.1))
    with pytest.raises(PgmlError, match='feature "x" \\(real\\) cannot take the value 1e\\+39'):
        model.row_values([1e39, 1, 2, 3, 4])


def test_preprocess_names_the_array_column() -> None:
    model, _ = _trained("linear", {"v": {"scale": "min_max"}})
    plan = model.encoder.describe()
    assert [plan[f"v[{k}]"]["scale"] for k in (1, 2, 3)] == ["min_max"] * 3
    assert plan["x"]["scale"] == "standard"


def test_a_linear_model_of_arrays_has_no_sql_form() -> None:
    # The relation form checks each array's length; an expression would read short arrays as NULLs.
    model, _ = _trained()
    assert sql_form.expression(model) is None


def test_read_fields_add_one_shape_per_array() -> None:
    fields = [loading.feature_field(c) for c in _columns()]
    shapes = loading.array_shapes(fields)
    assert [(s.column, s.width) for s in shapes] == [("v", 3)]
    expression = shapes[0].expression()
    assert "array_ndims" in expression and "cardinality" in expression and "'NaN'::float8" in expression
    assert loading._wire_expression(_columns()[2], loading.FLOAT) == "coalesce(((\"v\")[2])::float8, 'NaN'::float8)"


def test_array_shapes_are_checked() -> None:
    shape = ArrayShape("image", 64)
    check_array_shapes(shape, np.array([64.0, np.nan, 64.0]), "t")  # NULL arrays are imputed
    with pytest.raises(PgmlError) as caught:
        check_array_shapes(shape, np.array([64.0, 63.0, 63.0, 0.0, 64.0]), "pgml.digits")
    assert caught.value.message == ('array column "image" must hold arrays of 64 elements, and pgml.digits has '
                                    "arrays of other lengths: 1 array(s) of 0, 2 array(s) of 63 element(s)")
    with pytest.raises(PgmlError) as caught:
        check_array_shapes(shape, np.array([64.0, -1.0, -1.0]), "t")
    assert "not flat" in caught.value.message and "in 2 row(s) of t" in caught.value.message
    assert 'ARRAY(SELECT unnest("image"))' in caught.value.hint


def test_array_columns_of_text_are_refused() -> None:
    text = loading.RelationColumn("tags", "text[]", "_text", "A", "text", "text", "S")
    with pytest.raises(PgmlError, match="cannot be a feature") as caught:
        loading._array_column(text, "t")
    assert caught.value.sqlstate == "42804"
    numbers = loading._array_column(loading.RelationColumn("v", "real[]", "_float4", "A", "real", "float4", "N"), "t")
    assert isinstance(numbers, ArrayColumn)
    assert [c.name for c in numbers.elements(2)] == ["v[1]", "v[2]"] and numbers.elements(2)[0].base_type == "float4"
