"""pgml_fdw.datasets: the tables pgml.load_dataset makes, without a server."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import datasets as sk

from pgml_fdw import datasets
from pgml_fdw.errors import PgmlError

# PostgresML's tables: (rows, first columns, last column and its type).
EXPECTED = {
    "breast_cancer": (569, ["mean radius", "mean texture"], ("malignant", "boolean")),
    "diabetes": (442, ["age", "sex", "bmi", "bp", "s1"], ("target", "real")),
    "digits": (1797, ["image"], ("target", "smallint")),
    "iris": (150, ["sepal_length", "sepal_width", "petal_length", "petal_width"], ("target", "integer")),
    "linnerud": (20, ["chins", "situps", "jumps", "weight", "waist"], ("pulse", "real")),
    "wine": (178, ["alcohol", "malic_acid", "ash"], ("target", "integer")),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_dataset_has_postgresml_columns(name: str) -> None:
    columns, rows = datasets.load(name)
    count, first, last = EXPECTED[name]
    names = [c for c, _ in columns]
    assert len(rows) == count
    assert names[:len(first)] == first
    assert columns[-1] == last
    assert len(set(names)) == len(names)
    assert all(len(row) == len(columns) for row in rows)
    # Every value is JSON (what the foreign table hands over), with nothing lost.
    assert json.loads(json.dumps(rows, allow_nan=False)) == rows


def test_names_are_the_six_scikit_learn_ships() -> None:
    assert datasets.NAMES == tuple(sorted(EXPECTED))


def test_digits_images_are_64_pixels_as_scikit_learn_has_them() -> None:
    columns, rows = datasets.load("digits")
    assert columns[0] == ("image", "smallint[]")
    data = sk.load_digits()
    assert all(len(image) == 64 and all(type(v) is int and 0 <= v <= 16 for v in image) for image, _ in rows)
    assert np.array_equal(np.array([image for image, _ in rows]), data.data.astype(int))
    assert [t for _, t in rows] == data.target.tolist()


def test_breast_cancer_malignant_is_scikit_learns_class_0() -> None:
    _, rows = datasets.load("breast_cancer")
    data = sk.load_breast_cancer()
    assert list(data.target_names) == ["malignant", "benign"]
    assert [row[-1] for row in rows] == [t == 0 for t in data.target]
    assert sum(row[-1] for row in rows) == 212


def test_wine_lists_hue_before_color_intensity_with_their_own_values() -> None:
    columns, rows = datasets.load("wine")
    names = [c for c, _ in columns]
    assert names.index("hue") == names.index("color_intensity") - 1
    assert "od280/od315_of_diluted_wines" in names
    data = sk.load_wine()
    sk_names = list(data.feature_names)
    for name in ("hue", "color_intensity", "proline"):
        assert [row[names.index(name)] for row in rows] == data.data[:, sk_names.index(name)].tolist()


def test_diabetes_is_scikit_learns_scaled_data() -> None:
    _, rows = datasets.load("diabetes")
    data = sk.load_diabetes()
    assert np.array_equal(np.array([row[:-1] for row in rows]), data.data)
    assert [row[-1] for row in rows] == data.target.tolist()


def test_an_unknown_dataset_names_the_ones_there_are() -> None:
    for name in ("titanic", "", "digits; DROP TABLE x", "DIGITS"):
        with pytest.raises(PgmlError) as caught:
            datasets.load(name)
        assert caught.value.sqlstate == "0A000"
        assert "breast_cancer, diabetes, digits, iris, linnerud, wine" in caught.value.hint


def test_as_table_reads_in_a_worker_and_keys_rows_by_column() -> None:
    table = datasets.as_table("iris")
    assert table["columns"][0] == ["sepal_length", "real"]
    assert len(table["rows"]) == 150
    assert table["rows"][0] == {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2,
                                "target": 0}
    with pytest.raises(PgmlError, match="unknown dataset"):
        datasets.as_table("nope")
