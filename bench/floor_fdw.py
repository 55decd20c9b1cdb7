"""The floor of scenario a: a Multicorn wrapper with pgml.predictions' columns and planning hooks
that answers the single-row query with a constant, so its latency is Multicorn's own cost (planning,
scan, conversions) without any model. Loaded inside the server as ``bench.floor_fdw`` (the checkout
is on the server's Python path); see Fixtures.floor_table.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from multicorn import ForeignDataWrapper


class ConstantPrediction(ForeignDataWrapper):
    """Echoes the query's conditions back with a prediction of 0.0."""

    def execute(self, quals: List[Any], columns: Any, sortkeys: Any = None) -> List[Dict[str, Any]]:
        """One row: the ``column = value`` conditions, and the constant prediction."""
        row = {q.field_name: q.value for q in quals if q.operator == "="}
        row["prediction"] = 0.0
        return [row]

    def get_rel_size(self, quals: List[Any], columns: Any) -> Tuple[int, int]:
        """The estimate pgml.predictions gives a single row (pgml_fdw.fdw.Predictions.rel_size)."""
        return 1, 64 if any(q.field_name == "features" for q in quals) else 128

    def get_path_keys(self) -> List[Tuple[Tuple[str, ...], int]]:
        """None, like pgml.predictions."""
        return []
