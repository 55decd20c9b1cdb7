"""One row's preprocessing, in plain Python: the serving side of :class:`preprocessing.FeatureEncoder`.

A fitted encoder stores its per-column tables as plain data (``FeatureEncoder.to_data``); this
module applies them to one row without numpy, so a connection that only predicts never imports it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import PgmlError


class RowEncoder:
    """Turns one row of raw values (in column order: float, None or NaN for number columns; str or
    None for text columns) into the estimator's input, a list of floats."""

    def __init__(self, names: Sequence[str], numbers: Sequence[Tuple[int, int, float, float, float]],
                 texts: Sequence[Tuple[int, int, Dict[Optional[str], int], bool]], n_outputs: int) -> None:
        self.names = list(names)
        # numbers: (input index, output index, offset, divisor, output for NULL)
        self.numbers = list(numbers)
        # texts: (input index, first output index, value -> category code, one-hot?)
        self.texts = list(texts)
        self.n_outputs = n_outputs

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> "RowEncoder":
        """The row encoder of the fitted encoder ``FeatureEncoder.to_data`` described."""
        numbers = [(i, o, offset, divisor, float("nan") if null_out is None else null_out)
                   for i, o, offset, divisor, null_out in data["numbers"]]
        texts = [(i, first, dict((value, code) for value, code in lookup), one_hot)
                 for i, first, lookup, one_hot in data["texts"]]
        return cls([c[0] for c in data["columns"]], numbers, texts, len(data["output_names"]))

    def encode(self, values: Sequence[Any]) -> List[float]:
        """The estimator's input for one row; equal to the row of ``FeatureEncoder.transform``."""
        if len(values) != len(self.names):
            quoted = ", ".join(f'"{name}"' for name in self.names)
            raise PgmlError(f"expected {len(self.names)} feature values, got {len(values)}",
                            hint=f"pass the features in this order: {quoted}")
        out = [0.0] * self.n_outputs
        for index, pos, offset, divisor, null_out in self.numbers:
            x = values[index]
            out[pos] = null_out if x is None or x != x else (x - offset) / divisor  # x != x: NaN
        for index, first, lookup, one_hot in self.texts:
            code = lookup.get(values[index], -1)
            if not one_hot:
                out[first] = code
            elif code >= 0:
                out[first + code] = 1.0
        return out
