"""One row's preprocessing, in plain Python: the serving side of :class:`preprocessing.FeatureEncoder`.

A fitted encoder stores its per-column tables as plain data (``FeatureEncoder.to_data``); this
module applies them to one row without numpy, so a connection that only predicts never imports it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from .errors import NULL_VALUE_NOT_ALLOWED, PgmlError

# A category: a text value, a number (of a number column encoded as categories), or None for NULL.
Category = Union[str, float, None]


class RowEncoder:
    """Turns one row of raw values (in column order: float, None or NaN for number columns; str or
    None for text columns) into the estimator's input, a list of floats."""

    def __init__(self, names: Sequence[str], numbers: Sequence[Tuple[int, int, float, float, float]],
                 texts: Sequence[Tuple[int, int, Dict[Category, int], bool]], n_outputs: int,
                 tables: Sequence[Tuple[int, int, Dict[Category, Tuple[float, ...]], Tuple[float, ...]]] = (),
                 required: Sequence[int] = ()) -> None:
        self.names = list(names)
        # numbers: (input index, output index, offset, divisor, output for NULL)
        self.numbers = list(numbers)
        # texts: (input index, first output index, value -> category code, one-hot?)
        self.texts = list(texts)
        # tables: (input index, first output index, value -> outputs, outputs of a value not in it)
        self.tables = list(tables)
        # required: input indexes whose value may not be NULL (impute 'error')
        self.required = list(required)
        self.n_outputs = n_outputs

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> "RowEncoder":
        """The row encoder of the fitted encoder ``FeatureEncoder.to_data`` described (``tables`` and
        ``required`` are absent from models stored before them)."""
        numbers = [(i, o, offset, divisor, float("nan") if null_out is None else null_out)
                   for i, o, offset, divisor, null_out in data["numbers"]]
        texts = [(i, first, dict((value, code) for value, code in lookup), one_hot)
                 for i, first, lookup, one_hot in data["texts"]]
        tables = [(i, first, dict((value, tuple(outputs)) for value, outputs in table), tuple(unseen))
                  for i, first, table, unseen in data.get("tables", ())]
        return cls([c[0] for c in data["columns"]], numbers, texts, len(data["output_names"]), tables,
                   data.get("required", ()))

    @staticmethod
    def null_error(name: str, where: str = "") -> PgmlError:
        """The error of a NULL given for a feature trained with impute 'error'."""
        return PgmlError(f'feature "{name}" is NULL{" " + where if where else ""}, and the model was trained with '
                         'its preprocess "impute": "error"',
                         hint=f'Give "{name}" a value, or retrain with another "impute" for it, '
                         f'for example \'{{"{name}": {{"impute": "mean"}}}}\'.', sqlstate=NULL_VALUE_NOT_ALLOWED)

    def encode(self, values: Sequence[Any]) -> List[float]:
        """The estimator's input for one row; equal to the row of ``FeatureEncoder.transform``."""
        if len(values) != len(self.names):
            quoted = ", ".join(f'"{name}"' for name in self.names)
            raise PgmlError(f"expected {len(self.names)} feature values, got {len(values)}",
                            hint=f"pass the features in this order: {quoted}")
        for index in self.required:
            x = values[index]
            if x is None or x != x:  # x != x: NaN
                raise self.null_error(self.names[index])
        out = [0.0] * self.n_outputs
        for index, pos, offset, divisor, null_out in self.numbers:
            x = values[index]
            out[pos] = null_out if x is None or x != x else (x - offset) / divisor
        for index, first, lookup, one_hot in self.texts:
            x = values[index]
            code = lookup.get(None if x != x else x, -1)  # NaN of a number column encoded as categories: NULL
            if not one_hot:
                out[first] = code
            elif code >= 0:
                out[first + code] = 1.0
        for index, first, table, unseen in self.tables:
            x = values[index]
            outputs: Tuple[float, ...] = table.get(None if x != x else x, unseen)
            out[first:first + len(outputs)] = outputs
        return out
