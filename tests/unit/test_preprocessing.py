"""Tests for pgml_fdw.preprocessing: planning, fitting, batch and single-row transforms."""
from __future__ import annotations

import json
import math
import pickle
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import pytest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from pgml_fdw.errors import PgmlError
from pgml_fdw.preprocessing import (
    ENCODE_CHOICES,
    IMPUTE_CHOICES,
    PREPROCESS_KEYS,
    SCALE_CHOICES,
    Column,
    FeatureEncoder,
    Preprocess,
    plan_preprocessing,
)

NAN = math.nan
AGE = Column("age", "number", "integer")
CITY = Column("city", "text", "text")


def num(*values: Optional[float]) -> np.ndarray:
    return np.array([NAN if v is None else v for v in values], dtype=np.float64)


def txt(*values: Optional[str]) -> np.ndarray:
    return np.array(values, dtype=object)


def fitted(column: Column, train: np.ndarray, options: Optional[Mapping[str, Any]] = None,
           needs_scaling: bool = False) -> FeatureEncoder:
    plan = plan_preprocessing([column], {column.name: options} if options else None, needs_scaling)
    return FeatureEncoder([column], plan).fit({column.name: train})


def encode(column: Column, train: np.ndarray, score: np.ndarray, options: Optional[Mapping[str, Any]] = None,
           needs_scaling: bool = False) -> np.ndarray:
    return fitted(column, train, options, needs_scaling).transform({column.name: score})


# --- planning -------------------------------------------------------------------------------------

def test_defaults_without_scaling() -> None:
    plan = plan_preprocessing([AGE, CITY], None, needs_scaling=False)
    assert list(plan) == ["age", "city"]
    assert plan["age"] == Preprocess(impute="mean", scale="none", encode="none")
    assert plan["city"] == Preprocess(impute="none", scale="none", encode="one_hot")


def test_defaults_with_scaling_only_scale_numbers() -> None:
    plan = plan_preprocessing([AGE, CITY], {}, needs_scaling=True)
    assert plan["age"] == Preprocess(impute="mean", scale="standard", encode="none")
    assert plan["city"] == Preprocess(impute="none", scale="none", encode="one_hot")


def test_options_override_defaults_and_fill_value_becomes_float() -> None:
    plan = plan_preprocessing(
        [AGE, CITY],
        {"age": {"impute": "constant", "fill_value": 3, "scale": "min_max"},
         "city": {"impute": "constant", "fill_value": "unknown", "encode": "ordinal"}},
        needs_scaling=False,
    )
    assert plan["age"] == Preprocess(impute="constant", scale="min_max", encode="none", fill_value=3.0)
    assert isinstance(plan["age"].fill_value, float)
    assert plan["city"] == Preprocess(impute="constant", scale="none", encode="ordinal", fill_value="unknown")


def test_exported_choices_match_what_plan_accepts() -> None:
    assert PREPROCESS_KEYS == ("impute", "scale", "encode", "fill_value", "smoothing")
    for impute in IMPUTE_CHOICES["number"]:
        for scale in SCALE_CHOICES:
            options: Dict[str, Any] = {"impute": impute, "scale": scale}
            if impute == "constant":
                options["fill_value"] = 1.5
            assert plan_preprocessing([AGE], {"age": options}, False)["age"].scale == scale
    for impute in IMPUTE_CHOICES["text"]:
        for enc in ENCODE_CHOICES:
            options = {"impute": impute, "encode": enc}
            if impute == "constant":
                options["fill_value"] = "x"
            assert plan_preprocessing([CITY], {"city": options}, False)["city"].impute == impute


@pytest.mark.parametrize(
    "options, message_parts, hint_parts",
    [
        (["age"], ["preprocess must be a JSON object"], ['"impute"']),
        ({"agee": {}}, ['"agee"', "not a feature column"], ['"age"', '"city"']),
        ({"age": "median"}, ['column "age"', "JSON object"], ['"impute"']),
        ({"age": {"imput": "mean"}}, ['"imput"', '"age"'], ['"impute"', '"scale"', '"encode"', '"fill_value"']),
        ({"age": {"impute": "average"}}, ['"impute": "average"', '"age"'],
         ['"mean"', '"median"', '"most_frequent"', '"constant"', '"none"']),
        ({"age": {"scale": None}}, ['"scale": null'], ['"standard"', '"min_max"', '"none"']),
        ({"city": {"impute": "mean"}}, ['"impute": "mean"', 'text column "city"'],
         ['"most_frequent"', '"constant"', '"none"']),
        ({"city": {"encode": "hash"}}, ['"encode": "hash"'], ['"one_hot"', '"ordinal"']),
        ({"city": {"scale": "standard"}}, ['"scale" applies only to number columns', '"city"'], ['"encode"']),
        ({"age": {"encode": "hash"}}, ['"encode": "hash"', 'number column "age"'], ['"target"', '"native"']),
        ({"age": {"impute": "constant"}}, ['numeric "fill_value"', '"age"'], ['"fill_value": 0']),
        ({"age": {"impute": "constant", "fill_value": "0"}}, ['numeric "fill_value"'], ['"fill_value": 0']),
        ({"age": {"impute": "constant", "fill_value": True}}, ['numeric "fill_value"'], ['"fill_value": 0']),
        ({"age": {"impute": "constant", "fill_value": math.inf}}, ['numeric "fill_value"'], ['"fill_value": 0']),
        ({"city": {"impute": "constant", "fill_value": 1}}, ['string "fill_value"', '"city"'],
         ['"fill_value": "unknown"']),
        ({"age": {"fill_value": 0}}, ['"fill_value"', "only with", '"impute": "constant"'],
         ['add "impute": "constant"']),
    ],
)
def test_invalid_options_are_explained(options: Any, message_parts: Sequence[str], hint_parts: Sequence[str]) -> None:
    with pytest.raises(PgmlError) as info:
        plan_preprocessing([AGE, CITY], options, needs_scaling=True)
    for part in message_parts:
        assert part in info.value.message
    assert info.value.hint is not None
    for part in hint_parts:
        assert part in info.value.hint


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="kind"):
        Column("x", "float", "real")


# --- number columns -------------------------------------------------------------------------------

def test_mean_impute_then_standard_scale() -> None:
    # Imputed training values are [1, 2, 3, 2]: mean 2, std sqrt(0.5).
    out = encode(AGE, num(1, 2, 3, None), num(2, 4, None), needs_scaling=True)
    std = math.sqrt(0.5)
    np.testing.assert_allclose(out, [[0.0], [2 / std], [0.0]], rtol=0, atol=1e-15)


def test_median_impute_without_scaling() -> None:
    out = encode(AGE, num(1, 2, 10, None), num(None, 5), {"impute": "median"})
    np.testing.assert_array_equal(out, [[2.0], [5.0]])


def test_most_frequent_impute_breaks_ties_towards_smallest() -> None:
    out = encode(AGE, num(7, 7, 3, 3, 9, None), num(None), {"impute": "most_frequent"})
    np.testing.assert_array_equal(out, [[3.0]])


def test_constant_impute_then_min_max_scale() -> None:
    # Imputed training values are [0, 10, -10]: min -10, max 10.
    out = encode(AGE, num(0, 10, None), num(None, 5, 20), {"impute": "constant", "fill_value": -10, "scale": "min_max"})
    np.testing.assert_array_equal(out, [[0.0], [0.75], [1.5]])


def test_impute_none_keeps_nan_and_scales_from_non_null_values() -> None:
    enc = fitted(AGE, num(1, 3, None), {"impute": "none", "scale": "standard"})
    out = enc.transform({"age": num(None, 3)})
    assert math.isnan(out[0, 0])
    assert out[1, 0] == 1.0  # mean 2, std 1 from [1, 3]
    assert enc.describe()["age"]["impute_value"] is None


@pytest.mark.parametrize("scale", ["standard", "min_max"])
def test_constant_column_is_shifted_not_divided(scale: str) -> None:
    enc = fitted(AGE, num(0.1, 0.1, 0.1, None), {"scale": scale})
    out = enc.transform({"age": num(0.1, 1.1)})
    assert np.all(np.isfinite(out))
    assert abs(out[0, 0]) < 1e-15
    assert out[1, 0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("impute", ["mean", "median"])
@pytest.mark.parametrize("scaler", [StandardScaler, MinMaxScaler])
def test_numbers_match_scikit_learn_pipeline(impute: str, scaler: type) -> None:
    rng = np.random.default_rng(7)
    train = rng.normal(50, 20, size=500)
    train[rng.random(500) < 0.2] = NAN
    score = rng.normal(50, 40, size=200)
    score[rng.random(200) < 0.2] = NAN
    scale = "standard" if scaler is StandardScaler else "min_max"
    out = encode(AGE, train, score, {"impute": impute, "scale": scale})
    expected = make_pipeline(SimpleImputer(strategy=impute), scaler()).fit(train[:, None]).transform(score[:, None])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impute", ["mean", "median", "most_frequent"])
def test_all_null_number_column_with_learned_impute_names_the_column(impute: str) -> None:
    with pytest.raises(PgmlError) as info:
        fitted(AGE, num(None, None), {"impute": impute})
    assert '"age"' in info.value.message and "NULL in every training row" in info.value.message
    assert '"impute": "constant"' in info.value.hint and "drop" in info.value.hint


def test_all_null_number_column_with_constant_impute_is_fine() -> None:
    out = encode(AGE, num(None, None), num(None, 4), {"impute": "constant", "fill_value": 1, "scale": "standard"})
    np.testing.assert_array_equal(out, [[0.0], [3.0]])


def test_infinite_training_value_is_rejected() -> None:
    with pytest.raises(PgmlError) as info:
        fitted(AGE, num(1, math.inf, 2))
    assert '"age"' in info.value.message and "infinite" in info.value.message
    assert "NULLIF" in info.value.hint


# --- text columns ---------------------------------------------------------------------------------

def test_one_hot_default_null_is_its_own_last_category_and_unseen_is_all_zeros() -> None:
    enc = fitted(CITY, txt("Paris", "Berlin", None, "Paris"))
    assert enc.output_names == ["city=Berlin", "city=Paris", "city IS NULL"]
    assert enc.output_sources == ["city", "city", "city"]
    out = enc.transform({"city": txt("Paris", None, "Berlin", "Rome")})
    np.testing.assert_array_equal(out, [[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]])


def test_null_never_seen_in_training_is_treated_as_unseen() -> None:
    enc = fitted(CITY, txt("b", "a"))
    assert enc.output_names == ["city=a", "city=b"]
    np.testing.assert_array_equal(enc.transform({"city": txt(None)}), [[0, 0]])
    ordinal = fitted(CITY, txt("b", "a"), {"encode": "ordinal"})
    np.testing.assert_array_equal(ordinal.transform({"city": txt(None)}), [[-1]])


def test_ordinal_sorted_codes_null_last_unseen_minus_one() -> None:
    enc = fitted(CITY, txt("c", "a", None, "b", "a"), {"encode": "ordinal"})
    assert enc.output_names == ["city"]
    out = enc.transform({"city": txt("a", "b", "c", None, "zzz")})
    np.testing.assert_array_equal(out, [[0], [1], [2], [3], [-1]])


def test_text_most_frequent_impute_breaks_ties_towards_smallest() -> None:
    enc = fitted(CITY, txt("y", "x", "y", "x", None), {"impute": "most_frequent", "encode": "ordinal"})
    np.testing.assert_array_equal(enc.transform({"city": txt(None, "y")}), [[0], [1]])
    assert enc.describe()["city"]["impute_value"] == "x"
    assert enc.describe()["city"]["categories"] == 2


def test_text_constant_fill_becomes_a_category_when_training_has_nulls() -> None:
    enc = fitted(CITY, txt("b", None), {"impute": "constant", "fill_value": "?"})
    assert enc.output_names == ["city=?", "city=b"]
    np.testing.assert_array_equal(enc.transform({"city": txt(None, "?", "b")}), [[1, 0], [1, 0], [0, 1]])


def test_text_constant_fill_not_seen_in_training_is_unseen() -> None:
    enc = fitted(CITY, txt("b", "a"), {"impute": "constant", "fill_value": "?"})
    assert enc.output_names == ["city=a", "city=b"]
    np.testing.assert_array_equal(enc.transform({"city": txt(None)}), [[0, 0]])


def test_all_null_text_column_with_most_frequent_names_the_column() -> None:
    with pytest.raises(PgmlError) as info:
        fitted(CITY, txt(None, None), {"impute": "most_frequent"})
    assert '"city"' in info.value.message and "NULL in every training row" in info.value.message
    assert "drop" in info.value.hint


# --- the encoder as a whole -----------------------------------------------------------------------

COLUMNS = [
    Column("a", "number", "double precision"),
    Column("color", "text", "text"),
    Column("b", "number", "interval"),
    Column("size", "text", "varchar"),
    Column("c", "number", "integer"),
    Column("d", "number", "date"),
    Column("shape", "text", "text"),
    Column("e", "number", "boolean"),
]
OPTIONS = {
    "b": {"impute": "median", "scale": "min_max"},
    "size": {"encode": "ordinal"},
    "c": {"impute": "none"},
    "d": {"impute": "constant", "fill_value": -1.5, "scale": "standard"},
    "shape": {"impute": "most_frequent"},
    "e": {"impute": "most_frequent", "scale": "none"},
}


def random_data(rng: np.random.Generator, rows: int, categories: Sequence[str]) -> Dict[str, np.ndarray]:
    data: Dict[str, np.ndarray] = {}
    for column in COLUMNS:
        nulls = rng.random(rows) < 0.15
        if column.kind == "number":
            values = rng.normal(rng.uniform(-100, 100), rng.uniform(0.1, 50), size=rows)
            if column.name == "e":
                values = rng.integers(0, 2, size=rows).astype(np.float64)
            values[nulls] = NAN
        else:
            values = np.array([categories[i] for i in rng.integers(0, len(categories), size=rows)], dtype=object)
            values[nulls] = None
        data[column.name] = values
    return data


@pytest.fixture(scope="module")
def encoder() -> FeatureEncoder:
    plan = plan_preprocessing(COLUMNS, OPTIONS, needs_scaling=True)
    return FeatureEncoder(COLUMNS, plan).fit(random_data(np.random.default_rng(1), 2000, ["red", "green", "blue"]))


@pytest.fixture(scope="module")
def scoring_data() -> Dict[str, np.ndarray]:
    # 'purple' and 'grey' were never seen in training.
    return random_data(np.random.default_rng(2), 3000, ["red", "green", "blue", "purple", "grey"])


def test_transform_shape_dtype_layout(encoder: FeatureEncoder, scoring_data: Dict[str, np.ndarray]) -> None:
    out = encoder.transform(scoring_data)
    assert out.dtype == np.float64 and out.flags.c_contiguous
    assert out.shape == (3000, len(encoder.output_names))
    assert encoder.output_names == [
        "a", "color=blue", "color=green", "color=red", "color IS NULL", "b", "size", "c", "d",
        "shape=blue", "shape=green", "shape=red", "e",
    ]
    assert encoder.output_sources == [
        "a", "color", "color", "color", "color", "b", "size", "c", "d", "shape", "shape", "shape", "e",
    ]


def test_transform_row_equals_transform(encoder: FeatureEncoder, scoring_data: Dict[str, np.ndarray]) -> None:
    batch = encoder.transform(scoring_data)
    names = [c.name for c in COLUMNS]
    for i in range(batch.shape[0]):
        # Rows arrive as Python floats / None for numbers, str / None for text.
        row = []
        for name in names:
            value = scoring_data[name][i]
            if isinstance(value, float) and math.isnan(value):
                value = None if i % 2 else NAN  # both spellings of NULL
            row.append(float(value) if isinstance(value, np.floating) else value)
        single = encoder.transform_row(row)
        assert single.dtype == np.float64 and single.shape == (batch.shape[1],)
        np.testing.assert_array_equal(single, batch[i])
    # The data exercised NULLs, NaN outputs (impute 'none') and unseen categories.
    assert np.isnan(batch[:, encoder.output_names.index("c")]).any()
    assert (batch[:, 1:5].sum(axis=1) == 0).any()
    assert (batch[:, 6] == -1).any()


def test_describe_is_json_safe_and_reports_learned_statistics(encoder: FeatureEncoder) -> None:
    described = encoder.describe()
    json.dumps(described, allow_nan=False)
    assert list(described) == [c.name for c in COLUMNS]
    b = described["b"]
    assert (b["kind"], b["sql_type"], b["impute"], b["scale"], b["outputs"]) == (
        "number", "interval", "median", "min_max", 1)
    assert b["min"] < b["max"] and isinstance(b["impute_value"], float)
    d = described["d"]
    assert d["impute_value"] == -1.5 and d["std"] > 0 and "mean" in d
    c = described["c"]
    assert c["impute"] == "none" and c["impute_value"] is None and c["std"] > 0
    assert "min" not in c and "mean" not in described["e"]
    color = described["color"]
    assert (color["kind"], color["encode"], color["impute"], color["categories"], color["outputs"]) == (
        "text", "one_hot", "none", 4, 4)
    assert described["size"]["outputs"] == 1 and described["size"]["categories"] == 4


def test_pickle_round_trip(encoder: FeatureEncoder, scoring_data: Dict[str, np.ndarray]) -> None:
    blob = pickle.dumps(encoder)
    assert len(blob) < 5000  # statistics and lookups only, no training data
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(restored.transform(scoring_data), encoder.transform(scoring_data))
    row = [scoring_data[c.name][0] for c in COLUMNS]
    np.testing.assert_array_equal(restored.transform_row(row), encoder.transform_row(row))
    assert restored.output_names == encoder.output_names
    assert restored.describe() == encoder.describe()


def test_missing_column_at_scoring(encoder: FeatureEncoder, scoring_data: Dict[str, np.ndarray]) -> None:
    partial = {k: v for k, v in scoring_data.items() if k not in ("b", "shape")}
    with pytest.raises(PgmlError) as info:
        encoder.transform(partial)
    assert '"b", "shape"' in info.value.message
    assert '"a", "color", "b"' in info.value.hint


def test_wrong_row_length(encoder: FeatureEncoder) -> None:
    with pytest.raises(PgmlError) as info:
        encoder.transform_row([1.0, "red"])
    assert "expected 8 feature values, got 2" in info.value.message
    assert '"a", "color", "b", "size"' in info.value.hint


def test_use_before_fit_is_a_programming_error() -> None:
    enc = FeatureEncoder([AGE], plan_preprocessing([AGE], None, False))
    with pytest.raises(RuntimeError):
        enc.transform({"age": num(1)})
    with pytest.raises(RuntimeError):
        enc.transform_row([1.0])


def test_small_spread_on_a_large_magnitude_is_still_scaled() -> None:
    # Epoch seconds one second apart are not a constant column.
    out = encode(AGE, num(1.7e9, 1.7e9 + 1), num(1.7e9 + 1), {"scale": "min_max"})
    np.testing.assert_array_equal(out, [[1.0]])
