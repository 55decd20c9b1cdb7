"""PostgresML's preprocessing and training options, without a server: target encoding, explicit
ordinal orders, numbers encoded as categories, impute min/max/zero/error, scale max_abs/robust,
PostgresML's spellings, test_sampling first and search_args. Every step must give the same numbers
in a batch (FeatureEncoder.transform), for one row (RowEncoder, plain Python) and once stored."""
from __future__ import annotations

import json
import math
import pickle
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pytest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, RobustScaler

from pgml_fdw import model_format, training
from pgml_fdw.columns import FeatureColumn
from pgml_fdw.errors import PgmlError
from pgml_fdw.preprocessing import Column, FeatureEncoder, Preprocess, plan_preprocessing, refuse_nulls
from pgml_fdw.row_encoder import RowEncoder
from pgml_fdw.sql_form import expression
from pgml_fdw.training import TrainingOptions

NAN = math.nan
AGE = Column("age", "number", "integer")
CITY = Column("city", "text", "text")
SIZE = Column("size", "text", "text")


def num(*values: Optional[float]) -> np.ndarray:
    return np.array([NAN if v is None else v for v in values], dtype=np.float64)


def txt(*values: Optional[str]) -> np.ndarray:
    return np.array(values, dtype=object)


def plan(column: Column, options: Optional[Mapping[str, Any]], needs_scaling: bool = False) -> Preprocess:
    return plan_preprocessing([column], {column.name: options} if options else None, needs_scaling)[column.name]


def fitted(column: Column, train: np.ndarray, options: Optional[Mapping[str, Any]] = None,
           target: Optional[Sequence[float]] = None, classes: Optional[List[str]] = None) -> FeatureEncoder:
    encoder = FeatureEncoder([column], plan_preprocessing([column], {column.name: options} if options else None,
                                                          False))
    return encoder.fit({column.name: train}, None if target is None else np.asarray(target), classes)


def both(encoder: FeatureEncoder, values: np.ndarray) -> np.ndarray:
    """The batch transform of one column, checked equal, row by row, to the row encoder's (with
    NULL given as None and as NaN) and to the stored encoder's."""
    name = encoder.columns[0].name
    batch = encoder.transform({name: values})
    row = encoder.row_encoder()
    stored = RowEncoder.from_data(json.loads(json.dumps(encoder.to_data(), allow_nan=False)))
    for i, value in enumerate(values):
        value = float(value) if isinstance(value, np.floating) else value
        spellings = [None, NAN] if value is None or (isinstance(value, float) and math.isnan(value)) else [value]
        for spelled in spellings:
            assert row.encode([spelled]) == batch[i].tolist()
            assert stored.encode([spelled]) == batch[i].tolist()
    return batch


# --- planning: PostgresML's spellings and the new options ---------------------------------------

def test_postgresml_spellings_become_ours() -> None:
    assert plan(AGE, {"impute": "mode", "scale": "preserve"}, needs_scaling=True) == Preprocess(
        impute="most_frequent", scale="none", encode="none")
    assert plan(AGE, {"encode": "native"}) == plan(AGE, {"encode": "none"}) == plan(AGE, None)
    assert plan(CITY, {"encode": "native"}).encode == "ordinal"
    assert plan(CITY, {"encode": "none"}).encode == "ordinal"
    assert plan(CITY, {"impute": "mode"}).impute == "most_frequent"


def test_postgresml_documented_example_plans() -> None:
    # pgml.train's preprocessing page, with its clouds an integer column.
    columns = [Column("month", "text", "text"), Column("clouds", "number", "integer"),
               Column("humidity", "number", "real"), Column("temp", "number", "integer")]
    months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    planned = plan_preprocessing(columns, {
        "month": {"encode": {"ordinal": months}},
        "clouds": {"encode": "target", "scale": "standard"},
        "humidity": {"impute": "mean", "scale": "standard"},
        "temp": {"scale": "standard"},
    }, needs_scaling=False)
    assert planned["month"] == Preprocess("none", "none", "ordinal", order=tuple(months))
    assert planned["clouds"] == Preprocess("none", "standard", "target", smoothing=1.0)
    assert planned["clouds"].categorical and not planned["temp"].categorical


def test_numbers_in_an_ordinal_order_may_be_written_as_strings() -> None:
    assert plan(AGE, {"encode": {"ordinal": ["3", 1, 2.5, None]}}).order == (3.0, 1.0, 2.5, None)


@pytest.mark.parametrize(
    "column, options, message_parts, hint_parts",
    [
        (CITY, {"encode": {"ordinal": []}}, ['ordinal order of column "city"', "non-empty JSON array"],
         ['"ordinal": ["low", "medium", "high"]']),
        (CITY, {"encode": {"ordinal": "low, high"}}, ["non-empty JSON array"], ["ordinal"]),
        (CITY, {"encode": {"ordinal": ["low", 2]}}, ['text column "city" holds 2'], ["strings"]),
        (AGE, {"encode": {"ordinal": [1, "two"]}}, ['"two"', "not a number"], ["[1, 2, 3]"]),
        (AGE, {"encode": {"ordinal": [1, True]}}, ["holds true"], ["numbers"]),
        (CITY, {"encode": {"ordinal": ["a", "b", "a"]}}, ['lists "a" more than once'], ["once"]),
        (CITY, {"encode": {"ordinal": ["a"], "extra": 1}}, ["is not an encoding"], ['{"ordinal": ']),
        (CITY, {"encode": {"ordinal": ["a", None]}, "impute": "most_frequent"}, ["places null"],
         ['remove null']),
        (CITY, {"encode": {"ordinal": ["a", "b"]}, "impute": "constant", "fill_value": "c"},
         ['"fill_value" "c"', "not one of its ordinal values"], ['"a", "b"']),
        (CITY, {"encode": "hash"}, ['"encode": "hash"'], ['"one_hot"', '"ordinal"', '"target"', '"native"']),
        (CITY, {"scale": "robust"}, ['"scale" applies only to number columns', "one-hot"], ['"target"']),
        (CITY, {"encode": "one_hot", "scale": [1]}, ['"scale" applies only'], ['"ordinal"']),
        (CITY, {"encode": "ordinal", "scale": "unit"}, ['"scale": "unit"', 'text column "city"'],
         ['"max_abs"', '"robust"', "\"preserve\""]),
        (CITY, {"encode": "one_hot", "impute": "mean"}, ['"impute": "mean"', 'text column "city"'],
         ['"most_frequent"', '"error"', "\"mode\""]),
        (AGE, {"encode": "one_hot", "impute": "median"}, ['categorical number column "age"'], ['"error"']),
        (AGE, {"impute": "average"}, ['"impute": "average"'], ['"min"', '"max"', '"zero"', '"error"', '"mode"']),
        (AGE, {"scale": "unit"}, ['"scale": "unit"'], ['"max_abs"', '"robust"', '"preserve"']),
        (CITY, {"smoothing": 2}, ['"smoothing"', "only with", '"target"'], ['"encode": "target"']),
        (CITY, {"encode": "target", "smoothing": -1}, ['"smoothing"', "at least 0", "-1"], ["0 for the plain mean"]),
        (CITY, {"encode": "target", "smoothing": "1"}, ['"smoothing"', '"1"'], ["by default"]),
    ],
)
def test_invalid_new_options_are_explained(column: Column, options: Any, message_parts: Sequence[str],
                                           hint_parts: Sequence[str]) -> None:
    with pytest.raises(PgmlError) as info:
        plan(column, options)
    for part in message_parts:
        assert part in info.value.message
    assert info.value.hint is not None
    for part in hint_parts:
        assert part in info.value.hint


# --- numbers: impute min, max, zero, error; scale max_abs, robust --------------------------------

@pytest.mark.parametrize("impute, fill", [("min", -2.0), ("max", 7.0), ("zero", 0.0)])
def test_impute_min_max_zero(impute: str, fill: float) -> None:
    encoder = fitted(AGE, num(-2, None, 7, 4), {"impute": impute})
    np.testing.assert_array_equal(both(encoder, num(None, 5)), [[fill], [5.0]])
    assert encoder.describe()["age"]["impute_value"] == fill


@pytest.mark.parametrize("impute", ["min", "max"])
def test_impute_min_max_of_an_all_null_column_names_it(impute: str) -> None:
    with pytest.raises(PgmlError, match=f'"age" is NULL in every training row, so "impute": "{impute}"'):
        fitted(AGE, num(None, None), {"impute": impute})


@pytest.mark.parametrize("scaler, scale", [(MaxAbsScaler, "max_abs"), (RobustScaler, "robust")])
@pytest.mark.parametrize("impute", ["mean", "median", "min"])
def test_max_abs_and_robust_equal_scikit_learn(scaler: type, scale: str, impute: str) -> None:
    rng = np.random.default_rng(3)
    train = rng.normal(-20, 30, 501)
    train[::7] = NAN
    score = np.concatenate([rng.normal(-20, 60, 300), [NAN, 0.0, -1e6]])
    ours = both(fitted(AGE, train, {"impute": impute, "scale": scale}), score)
    strategy = "constant" if impute == "min" else impute
    reference = make_pipeline(SimpleImputer(strategy=strategy, fill_value=np.nanmin(train)), scaler())
    expected = reference.fit(train.reshape(-1, 1)).transform(score.reshape(-1, 1))
    if impute == "mean":  # SimpleImputer's mean is summed in another order: the last bit may differ
        np.testing.assert_allclose(ours, expected, rtol=1e-13, atol=1e-15)
    else:
        np.testing.assert_array_equal(ours, expected)


def test_robust_describes_median_and_iqr_and_a_zero_iqr_only_shifts() -> None:
    encoder = fitted(AGE, num(1, 2, 3, 4, 5), {"scale": "robust"})
    described = encoder.describe()["age"]
    assert (described["median"], described["iqr"]) == (3.0, 2.0)
    # Mostly one value: the quartiles are equal, so values are only shifted (RobustScaler divides by 1).
    spiky = num(5, 5, 5, 5, 5, 5, 5, 100)
    np.testing.assert_array_equal(both(fitted(AGE, spiky, {"scale": "robust"}), num(5, 100, 7)), [[0.0], [95.0], [2.0]])
    np.testing.assert_array_equal(RobustScaler().fit(spiky.reshape(-1, 1)).transform([[5], [100], [7]]),
                                  [[0.0], [95.0], [2.0]])


def test_max_abs_of_zeros_only_shifts_and_of_a_constant_divides() -> None:
    np.testing.assert_array_equal(both(fitted(AGE, num(0, 0, 0), {"scale": "max_abs"}), num(3)), [[3.0]])
    np.testing.assert_array_equal(both(fitted(AGE, num(-4, -4), {"scale": "max_abs"}), num(2)), [[0.5]])


def test_impute_error_refuses_nulls_in_training_with_the_column_and_count() -> None:
    with pytest.raises(PgmlError) as info:
        fitted(AGE, num(1, None, 3, None), {"impute": "error"})
    assert info.value.message == ('column "age" is NULL in 2 of the 4 training rows, and its preprocess says '
                                  '"impute": "error"')
    assert '"impute": "mean"' in info.value.hint and info.value.sqlstate == "22004"
    planned = plan_preprocessing([AGE, CITY], {"age": {"impute": "error"}, "city": {"impute": "error"}}, False)
    with pytest.raises(PgmlError) as info:
        refuse_nulls(planned, {"age": num(1, 2), "city": txt("a", None)}, "public.users")
    assert info.value.message.startswith('column "city" is NULL in 1 of the 2 rows of public.users')
    assert '"impute": "most_frequent"' in info.value.hint


@pytest.mark.parametrize("column, train, missing", [(AGE, num(1, 2, 3), NAN), (AGE, num(1, 2, 3), None),
                                                    (CITY, txt("a", "b"), None)])
def test_impute_error_refuses_a_null_at_prediction(column: Column, train: np.ndarray, missing: Any) -> None:
    encoder = fitted(column, train, {"impute": "error"})
    good = train[:1]
    assert encoder.row_encoder().encode([good[0]]) == encoder.transform({column.name: good})[0].tolist()
    with pytest.raises(PgmlError) as info:
        encoder.row_encoder().encode([missing])
    assert info.value.message.startswith(f'feature "{column.name}" is NULL, and the model was trained with')
    assert info.value.sqlstate == "22004"
    batch = np.array([good[0], missing], dtype=train.dtype)
    with pytest.raises(PgmlError, match=f'feature "{column.name}" is NULL in 1 row'):
        encoder.transform({column.name: batch})


# --- explicit ordinal orders ------------------------------------------------------------------------

def test_ordinal_order_gives_positions_and_unseen_values_minus_one() -> None:
    encoder = fitted(SIZE, txt("low", "high", "low"), {"encode": {"ordinal": ["low", "medium", "high"]}})
    # "medium" was never seen in training, but the order gives it its place; "huge" is unknown.
    out = both(encoder, txt("high", "medium", "low", "huge", None))
    np.testing.assert_array_equal(out[:, 0], [2, 1, 0, -1, -1])
    assert encoder.describe()["size"]["order"] == ["low", "medium", "high"]


def test_ordinal_order_missing_a_training_value_names_it() -> None:
    with pytest.raises(PgmlError) as info:
        fitted(SIZE, txt("low", "huge", "tiny", "low"), {"encode": {"ordinal": ["low", "high"]}})
    assert info.value.message == 'column "size" holds 2 value(s) that its ordinal order does not list: "huge", "tiny"'
    assert '"low", "high"' in info.value.hint


def test_ordinal_order_places_null_where_listed_or_last() -> None:
    listed = fitted(SIZE, txt("low", None), {"encode": {"ordinal": [None, "low", "high"]}})
    np.testing.assert_array_equal(both(listed, txt(None, "low", "high"))[:, 0], [0, 1, 2])
    unlisted = fitted(SIZE, txt("low", None), {"encode": {"ordinal": ["low", "high"]}})
    np.testing.assert_array_equal(both(unlisted, txt(None, "low", "high"))[:, 0], [2, 0, 1])


def test_scaled_ordinal_is_scaled_from_the_training_codes() -> None:
    encoder = fitted(SIZE, txt("low", "high", "high", "medium"),
                     {"encode": {"ordinal": ["low", "medium", "high"]}, "scale": "standard"})
    codes = np.array([0.0, 2.0, 2.0, 1.0])
    expected = (np.array([0.0, 1.0, 2.0, -1.0]) - codes.mean()) / codes.std()
    np.testing.assert_array_equal(both(encoder, txt("low", "medium", "high", "huge"))[:, 0], expected)


# --- target encoding ------------------------------------------------------------------------------

def test_target_encoding_is_the_smoothed_mean_and_unseen_values_get_the_prior() -> None:
    y = [10.0, 20.0, 30.0, 100.0, 50.0]
    train = txt("a", "a", "b", None, "b")
    prior = sum(y) / 5
    encoder = fitted(CITY, train, {"encode": "target"}, target=y)
    expected = [(10 + 20 + prior) / 3, (30 + 50 + prior) / 3, (100 + prior) / 2, prior]
    np.testing.assert_allclose(both(encoder, txt("a", "b", None, "zz"))[:, 0], expected, rtol=1e-15)
    described = encoder.describe()["city"]
    assert (described["prior"], described["smoothing"], described["categories"]) == (prior, 1.0, 3)
    plain = fitted(CITY, train, {"encode": "target", "smoothing": 0}, target=y)
    np.testing.assert_allclose(both(plain, txt("a", "b", None))[:, 0], [15.0, 40.0, 100.0], rtol=1e-15)


def test_target_encoding_with_impute_mean_gives_null_the_prior() -> None:
    y = [1.0, 3.0, 8.0]
    encoder = fitted(CITY, txt("a", "a", None), {"encode": "target", "impute": "mean", "smoothing": 0}, target=y)
    np.testing.assert_allclose(both(encoder, txt(None, "a"))[:, 0], [4.0, 2.0], rtol=1e-15)
    assert encoder.describe()["city"]["categories"] == 1


def test_target_encoding_of_a_binary_class_is_the_share_of_the_second_class() -> None:
    encoder = fitted(CITY, txt("a", "a", "a", "b"), {"encode": "target", "smoothing": 0}, target=[1, 1, 0, 0],
                     classes=["no", "yes"])
    np.testing.assert_array_equal(both(encoder, txt("a", "b")), [[2 / 3], [0.0]])
    assert encoder.output_names == ["city"]


def test_target_encoding_of_many_classes_is_one_share_per_class() -> None:
    encoder = fitted(CITY, txt("a", "a", "b", "b"), {"encode": "target", "smoothing": 0}, target=[0, 2, 1, 1],
                     classes=["lo", "mid", "hi"])
    assert encoder.output_names == ["city:lo", "city:mid", "city:hi"]
    assert encoder.output_sources == ["city"] * 3
    np.testing.assert_array_equal(both(encoder, txt("a", "b", "c")),
                                  [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.25, 0.5, 0.25]])
    assert encoder.describe()["city"]["prior"] == [0.25, 0.5, 0.25]


def test_target_encoding_scaled_per_output() -> None:
    y = [1.0, 2.0, 6.0, 7.0]
    encoder = fitted(CITY, txt("a", "a", "b", "b"), {"encode": "target", "smoothing": 0, "scale": "min_max"},
                     target=y)
    np.testing.assert_array_equal(both(encoder, txt("a", "b", "c"))[:, 0], [0.0, 1.0, 0.5])


def test_target_encoding_without_a_target_says_so() -> None:
    with pytest.raises(PgmlError, match='"encode": "target" for column "city" needs the values of y_column'):
        fitted(CITY, txt("a"), {"encode": "target"})


# --- numbers encoded as categories ------------------------------------------------------------------

def test_a_number_column_one_hot_encoded_has_a_category_per_value() -> None:
    encoder = fitted(AGE, num(3, 1, None, 3, 2.5), {"encode": "one_hot"})
    assert encoder.output_names == ["age=1", "age=2.5", "age=3", "age IS NULL"]
    np.testing.assert_array_equal(both(encoder, num(3, None, 7)),
                                  [[0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])


def test_a_number_column_target_encoded() -> None:
    encoder = fitted(AGE, num(1, 1, 2, None), {"encode": "target", "smoothing": 0}, target=[2.0, 4.0, 9.0, 5.0])
    np.testing.assert_array_equal(both(encoder, num(1, 2, None, 3))[:, 0], [3.0, 9.0, 5.0, 5.0])


# --- everything at once: batch, single row and stored agree exactly ---------------------------------

MIXED = [AGE, CITY, SIZE, Column("score", "number", "real"), Column("clouds", "number", "integer"),
         Column("band", "text", "text")]
MIXED_OPTIONS = {
    "age": {"impute": "max", "scale": "robust"},
    "city": {"encode": "target", "scale": "standard"},
    "size": {"encode": {"ordinal": ["s", "m", "l", None]}, "scale": "max_abs"},
    "score": {"impute": "zero", "scale": "max_abs"},
    "clouds": {"encode": "one_hot", "impute": "mode"},
    "band": {"encode": "target", "impute": "mean", "smoothing": 3},
}


def mixed_data(rng: np.random.Generator, rows: int, cities: Sequence[str]) -> Dict[str, np.ndarray]:
    def nulls(values: np.ndarray) -> np.ndarray:
        values[rng.random(rows) < 0.1] = None if values.dtype == object else NAN
        return values

    return {
        "age": nulls(rng.normal(40, 12, rows)),
        "city": nulls(np.array([cities[i] for i in rng.integers(0, len(cities), rows)], dtype=object)),
        "size": nulls(np.array([["s", "m", "l"][i] for i in rng.integers(0, 3, rows)], dtype=object)),
        "score": nulls(rng.uniform(-5, 3, rows)),
        "clouds": nulls(rng.integers(0, 4, rows).astype(np.float64)),
        "band": nulls(np.array([["x", "y"][i] for i in rng.integers(0, 2, rows)], dtype=object)),
    }


@pytest.mark.parametrize("classes", [None, ["a", "b"], ["a", "b", "c"]])
def test_batch_single_row_and_stored_encoders_agree_exactly(classes: Optional[List[str]]) -> None:
    rng = np.random.default_rng(5)
    train = mixed_data(rng, 1500, ["paris", "rome", "oslo"])
    target = rng.integers(0, len(classes), 1500) if classes else rng.normal(0, 10, 1500)
    encoder = FeatureEncoder(MIXED, plan_preprocessing(MIXED, MIXED_OPTIONS, needs_scaling=True))
    encoder.fit(train, target, classes)
    scoring = mixed_data(rng, 800, ["paris", "rome", "oslo", "lima"])  # lima: never seen
    scoring["clouds"][:5] = 9.0  # a number category never seen
    batch = encoder.transform(scoring)
    restored = FeatureEncoder.from_data(json.loads(json.dumps(encoder.to_data(), allow_nan=False)))
    unpickled = pickle.loads(pickle.dumps(encoder))
    np.testing.assert_array_equal(restored.transform(scoring), batch)
    np.testing.assert_array_equal(unpickled.transform(scoring), batch)
    rows = [restored.row_encoder(), encoder.row_encoder()]
    for i in range(batch.shape[0]):
        row = [None if v is None or (isinstance(v, float) and math.isnan(v) and i % 2) else
               (float(v) if isinstance(v, np.floating) else v) for v in (scoring[c.name][i] for c in MIXED)]
        for encode in rows:
            assert encode.encode(row) == batch[i].tolist()
    assert restored.describe() == encoder.describe()
    json.dumps(encoder.describe(), allow_nan=False)
    assert not np.isnan(batch).any()


def test_a_legacy_pickled_encoder_without_tables_still_encodes() -> None:
    encoder = fitted(CITY, txt("a", "b"))
    state = dict(encoder.__dict__)
    del state["_tables"], state["_required"]  # as pickled by pgml_fdw 0.2
    old = FeatureEncoder.__new__(FeatureEncoder)
    old.__setstate__(state)
    assert old.row_encoder().encode(["b"]) == [0.0, 1.0]


def test_an_encoder_of_the_earlier_steps_is_stored_as_before() -> None:
    data = fitted(CITY, txt("a", "b"), {"encode": "ordinal"}).to_data()
    assert "tables" not in data and "required" not in data
    assert data["plan"] == {"city": ["none", "none", "ordinal", None]}


# --- whole training runs: the model format, the SQL form, sampling and search_args --------------------

FEATURES = [FeatureColumn("x", "double precision", "number", "float8"),
            FeatureColumn("city", "text", "text", "text"),
            FeatureColumn("clouds", "integer", "number", "int4")]


def run(task: str = "regression", rows: int = 300, **options: Any) -> training.TrainingResult:
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 10, rows)
    city = np.array([["a", "b", "c", None][i] for i in rng.integers(0, 4, rows)], dtype=object)
    clouds = rng.integers(0, 3, rows).astype(np.float64)
    clouds[::9] = NAN
    y = 2 * x + np.array([{"a": 1.0, "b": 5.0, "c": -3.0}.get(c, 0.0) for c in city]) + rng.normal(0, 0.1, rows)
    y_column = FeatureColumn("y", "double precision", "number", "float8")
    if task == "classification":
        y = np.array(["lo", "mid", "hi"], dtype=object)[np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))]
        y_column = FeatureColumn("y", "text", "text", "text")
    row = {"id": "m_1", "name": "m", "version": 1, "relation": "public.t", "y_column": "y", "trained_by": "app",
           "task": task, **{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in options.items()}}
    return training.train(TrainingOptions.from_row(row), y_column, FEATURES,
                          {"x": x, "city": city, "clouds": clouds}, y)


def _header(stored: bytes) -> Dict[str, Any]:
    """The JSON header of a stored model (model_format's layout: tag, length, header)."""
    length = int.from_bytes(stored[8:12], "big")
    return json.loads(stored[12:12 + length])


PREPROCESS = {"x": {"impute": "error", "scale": "robust"}, "city": {"encode": "target"},
              "clouds": {"encode": {"ordinal": [0, 1, 2]}, "scale": "max_abs"}}


def test_a_model_with_the_new_steps_is_stored_in_format_3_and_answers_the_same() -> None:
    result = run(preprocess=PREPROCESS)
    stored = model_format.dump(result.model, result.probe)
    assert _header(stored)["format"] == 3
    loaded = model_format.load(stored, "m_1")
    for features in ({"x": 1.5, "city": "b", "clouds": 2}, {"x": 9, "city": None, "clouds": None},
                     {"x": 0, "city": "zz", "clouds": 7}):
        assert loaded.predict_row(features) == result.model.predict_row(features)
    with pytest.raises(PgmlError, match='feature "x" is NULL'):
        loaded.predict_row({"x": None, "city": "a", "clouds": 1})
    old = run()
    assert _header(model_format.dump(old.model, old.probe))["format"] == 2


def test_the_sql_form_of_the_new_steps_raises_for_a_null_where_impute_is_error() -> None:
    sql = expression(run(preprocess=PREPROCESS).model)
    assert sql is not None
    assert sql.count("pgml._raise(") == 1 and 'feature \\"x\\" is NULL' in sql
    assert "= '7.0'::float8" not in sql and "= '2.0'::float8" in sql  # clouds compared as numbers
    assert expression(run(preprocess={"x": {"impute": "none"}}).model) is None  # NaN to the estimator


def test_test_sampling_first_holds_out_the_first_rows() -> None:
    train, test = training.split(10, 0.25, "first")
    assert test.tolist() == [0, 1, 2] and train.tolist() == list(range(3, 10))
    train, test = training.split(10, 0.25, "last")
    assert test.tolist() == [7, 8, 9]
    y = np.array([0, 1] * 10)
    stratified, shuffled = training.split(20, 0.25, "stratified", y), training.split(20, 0.25, "random", y)
    np.testing.assert_array_equal(stratified[1], shuffled[1])
    with pytest.raises(PgmlError) as info:
        TrainingOptions.from_row({"id": "m_1", "name": "m", "version": 1, "relation": "t", "y_column": "y",
                                  "trained_by": "app", "test_sampling": "middle"})
    assert "first or last" in info.value.hint


def test_search_args_n_iter_limits_the_candidates_and_cv_sets_the_folds() -> None:
    result = run(algorithm="ridge", search="random", search_params={"alpha": [0.01, 0.1, 1, 10, 100]},
                 search_args={"n_iter": 2, "cv": 4})
    found = result.details["search"]
    assert len(found["candidates"]) == 2
    assert (found["folds"], found["n_iter"], found["args"]) == (4, 2, {"n_iter": 2, "cv": 4})
    default = run(algorithm="ridge", search="grid", search_params={"alpha": [0.1, 1]}, search_args={})
    assert default.details["search"]["args"] is None and "n_iter" not in default.details["search"]
    assert default.details["search"]["folds"] == 3


@pytest.mark.parametrize(
    "options, message, hint",
    [
        ({"search": "random", "search_params": '{"alpha": [1]}', "search_args": '{"n_iters": 3}'},
         'unknown search_args "n_iters"', '"n_iter", "cv"'),
        ({"search": "grid", "search_params": '{"alpha": [1]}', "search_args": '{"n_iter": 3}'},
         "n_iter applies only to search => 'random'", "search => 'random'"),
        ({"search": "random", "search_params": '{"alpha": [1]}', "search_args": '{"n_iter": 0}'},
         "n_iter must be a whole number of at least 1, got 0", "10 by default"),
        ({"search": "random", "search_params": '{"alpha": [1]}', "search_args": '{"n_iter": 2.5}'},
         "got 2.5", "random combinations"),
        ({"search": "grid", "search_params": '{"alpha": [1]}', "search_args": '{"cv": 1}'},
         "cv must be a whole number of at least 2, got 1", "folds"),
        ({"search_args": '{"n_iter": 3}'}, "this run has none", "search => 'random'"),
        ({"search": "grid", "search_params": '{"alpha": [1]}', "search_args": '[3]'},
         "search_args must be a JSON object, not [3]", '"n_iter": 20'),
        ({"search": "grid", "search_params": '{"alpha": [1]}', "search_args": '{"cv": 5}', "search_folds": 4},
         "search_folds is 4 and search_args cv is 5", "once"),
        ({"search": "grid", "search_params": '{"alpha": [1]}', "search_args": '{"cv": '},
         "search_args is not valid JSON", '"n_iter": 20'),
    ],
)
def test_bad_search_args_are_explained(options: Dict[str, Any], message: str, hint: str) -> None:
    with pytest.raises(PgmlError) as info:
        TrainingOptions.from_row({"id": "m_1", "name": "m", "version": 1, "relation": "t", "y_column": "y",
                                  "trained_by": "app", "algorithm": "ridge", **options})
    assert message in info.value.message
    assert hint in (info.value.hint or "")


def test_search_args_empty_or_cv_alone_are_fine() -> None:
    base = {"id": "m_1", "name": "m", "version": 1, "relation": "t", "y_column": "y", "trained_by": "app"}
    assert TrainingOptions.from_row({**base, "search_args": "{}"}).search_args == {}
    options = TrainingOptions.from_row({**base, "search": "grid", "search_params": '{"alpha": [1]}',
                                        "search_args": '{"cv": 5}', "search_folds": 5})
    assert (options.search_folds, options.n_iter) == (5, 10)


def test_target_encoding_in_a_multiclass_run_learns_from_the_training_rows_only() -> None:
    result = run("classification", preprocess={"city": {"encode": "target", "smoothing": 0}})
    encoder = result.model.encoder
    assert encoder.output_names[1:4] == ["city:hi", "city:lo", "city:mid"]
    # The shares of each class among the training rows of a city sum to one.
    shares = encoder.transform({"x": num(1, 1), "city": txt("a", "b"), "clouds": num(1, 1)})[:, 1:4]
    np.testing.assert_allclose(shares.sum(axis=1), [1.0, 1.0], rtol=1e-12)
    assert result.details["features"][1]["preprocess"]["encode"] == "target"


def test_training_with_impute_error_and_nulls_names_the_relation() -> None:
    with pytest.raises(PgmlError) as info:
        run(preprocess={"clouds": {"impute": "error"}})
    assert info.value.message.startswith('column "clouds" is NULL in 34 of the 300 rows of public.t')
