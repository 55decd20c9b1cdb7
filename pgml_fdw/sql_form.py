"""A model's prediction as a SQL expression over its feature columns, for PostgreSQL to compute.

Scoring a whole relation through the wrapper moves every row out of the database and back through
Multicorn, which costs several times what PostgreSQL takes to compute a simple expression over the
same rows. A linear regression with its preprocessing (imputation, scaling, one-hot or ordinal
categories) *is* a simple expression, so ``pgml.score_table`` and ``pgml.score_into`` hand it to
PostgreSQL: it runs in the caller's transaction, with the caller's privileges, at the speed of a
plain SELECT.

The expression does in float8 what the fast path does in Python's floats, step by step: the same
values read from each column (``columns.load_expression``), the same ``(x - offset) / divisor``,
the same category codes. Only the final sum's rounding can differ: the fast path rounds the exact
sum once (``math.fsum``), PostgreSQL adds term by term, so the two agree to about 1e-15 of the
largest term.
"""
from __future__ import annotations

import math
from typing import List, Optional

from .columns import load_expression
from .model import Model
from .single_row import LinearPredictor


def identifier(name: str) -> str:
    """A column name quoted as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _number(value: float) -> str:
    return f"{_literal(repr(float(value)))}::float8"


def expression(model: Model) -> Optional[str]:
    """The SQL expression of the model's prediction over its feature columns (by name, unqualified),
    or None when it has none: classification, a model other than linear, or preprocessing that
    hands NaN to the estimator (which scikit-learn would refuse), or features read from arrays."""
    predictor = model.predictor
    if model.classes is not None or not isinstance(predictor, LinearPredictor):
        return None
    if any(c.array is not None for c in model.columns):
        return None  # array features: the relation form checks each array's length, an expression could not
    meta, arrays = predictor.to_data()
    if meta["classifier"]:
        return None
    coef, intercept = list(arrays["coef"]), arrays["intercept"][0]
    row = model.row_encoder
    terms: List[str] = []
    for index, out, offset, divisor, null_out in row.numbers:
        if math.isnan(null_out):
            return None
        column = model.columns[index]
        value = load_expression(identifier(column.name), column.kind, column.base_type)
        encoded = (f"coalesce((nullif({value}, 'NaN'::float8) - {_number(offset)}) / {_number(divisor)}, "
                   f"{_number(null_out)})")
        terms.append(f"{_number(coef[out])} * {encoded}")
    for index, first, lookup, one_hot in row.texts:
        text = f"{load_expression(identifier(model.columns[index].name), 'text', '')} COLLATE \"C\""
        cases = []
        for category, code in lookup.items():
            weight = coef[first + code] if one_hot else coef[first] * code
            test = f"{text} IS NULL" if category is None else f"{text} = {_literal(category)}"
            cases.append(f"WHEN {test} THEN {_number(weight)}")
        unseen = 0.0 if one_hot else -coef[first]  # a category training never saw: all zeros, or code -1
        terms.append(f"(CASE {' '.join(cases)} ELSE {_number(unseen)} END)")
    return f"({' + '.join(terms) or _number(0.0)} + {_number(intercept)})"
