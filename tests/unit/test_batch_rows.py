"""Tests for pgml_fdw.batch.as_rows: the batch form's rows in the foreign table's column order."""
from __future__ import annotations

import json

from pgml_fdw.batch import as_rows

ORDER = ["model", "features", "prediction", "label", "probabilities", "version", "relation", "key_column", "key"]
CONSTANT = {"model": "m", "relation": "houses", "key_column": "id", "version": 3}


def test_rows_follow_the_column_order_with_constants_repeated() -> None:
    rows = list(as_rows(ORDER, CONSTANT, [10, 11], [(1.5, None, None), (2.5, None, None)]))
    assert rows == [("m", None, 1.5, None, None, 3, "houses", "id", 10),
                    ("m", None, 2.5, None, None, 3, "houses", "id", 11)]


def test_every_column_is_filled_for_whole_row_references() -> None:
    predictions = [(None, "apple", {"apple": 0.9, "pear": 0.1})]
    named = dict(zip(ORDER, next(as_rows(ORDER, CONSTANT, [7], predictions))))
    assert (named["label"], named["key"], named["version"]) == ("apple", 7, 3)
    assert named["model"] == "m" and named["relation"] == "houses" and named["features"] is None


def test_probabilities_are_json_text() -> None:
    predictions = [(1.0, "true", {"false": 0.25, "true": 0.75})]
    row = next(as_rows(ORDER, CONSTANT, None, predictions))
    named = dict(zip(ORDER, row))
    assert json.loads(named["probabilities"]) == {"false": 0.25, "true": 0.75}
    assert named["label"] == "true" and named["key"] is None  # no key_column given


def test_no_rows() -> None:
    assert list(as_rows(ORDER, CONSTANT, [], [])) == []
