"""A trained model: its features, preprocessing, estimator and classes, and how it predicts.

It knows how to turn the JSON a query gives into the feature vector training saw, and the
estimator's answer back into SQL values. :mod:`model_format` stores it.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .columns import FeatureColumn, to_number, to_text
from . import errors
from .errors import PgmlError
from .single_row import fast_predictor

# JSON numbers as json.loads gives them (bool, a subclass of int, is not one of them).
_PLAIN_NUMBERS = frozenset((int, float))

Prediction = Tuple[Optional[float], Optional[str], Optional[Dict[str, float]]]


class Model:
    """A fitted pipeline that answers one row of JSON features, or arrays of many rows."""

    def __init__(
        self,
        model_id: str,
        task: str,
        columns: Sequence[FeatureColumn],
        encoder: Any,
        estimator: Any,
        classes: Optional[List[Any]] = None,
        made_with: Optional[Dict[str, str]] = None,
    ) -> None:
        self.model_id = model_id
        self.task = task
        self.columns = list(columns)
        self.encoder = encoder
        self.estimator = estimator
        # Classification: the labels in their original form (str, bool or number), and as text.
        self.classes = classes
        # The versions of Python and its packages it was trained with (None: not recorded, 0.2).
        self.made_with = made_with
        self._setup()

    def _setup(self) -> None:
        self._positions = {c.name: i for i, c in enumerate(self.columns)}
        self._names = [c.name for c in self.columns]
        self._all_numbers = all(c.kind == "number" for c in self.columns)
        self._fast = fast_predictor(self.estimator)
        if self.classes is not None:
            self.labels = [label_text(c) for c in self.classes]
            # The estimator only knows the classes present in its training split.
            self._known = np.asarray(self.estimator.classes_, dtype=np.int64)
            self._has_proba = hasattr(self.estimator, "predict_proba")

    @property
    def version(self) -> int:
        """The version number, the last part of the id (name_version)."""
        return int(self.model_id.rsplit("_", 1)[1])

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """A model pickled whole by pgml_fdw 0.2 or earlier (model_format reads those too)."""
        self.__dict__.update(state)
        self.made_with = None
        self._setup()

    # -- one row -----------------------------------------------------------------------------------

    def row_values(self, features: Any) -> List[Any]:
        """The JSON features (an object by column name, or an array in training order) as the raw
        values training saw: numbers (NaN for null) for numeric kinds, str or None for text."""
        if isinstance(features, str):
            try:
                features = json.loads(features)
            except ValueError as exc:
                raise PgmlError(f"features is not valid JSON: {exc}", hint=self._shape_hint(),
                                sqlstate=errors.INVALID_TEXT) from exc
            except RecursionError as exc:
                raise PgmlError("features is nested too deeply", hint=self._shape_hint()) from exc
        if self._all_numbers:
            # The common case, kept to a few operations per feature: every feature a number column
            # and every value a JSON number. Anything else takes the checked path below.
            ordered = None
            if type(features) is dict and len(features) == len(self._names):
                try:
                    ordered = [features[name] for name in self._names]
                except KeyError:
                    pass
            elif type(features) is list and len(features) == len(self._names):
                ordered = features
            if ordered is not None and all(type(v) in _PLAIN_NUMBERS for v in ordered):
                try:
                    return [float(v) for v in ordered]
                except OverflowError:
                    pass  # an integer beyond float range: the checked path says which feature
        if isinstance(features, Mapping):
            unknown = [k for k in features if k not in self._positions]
            if unknown:
                raise PgmlError(
                    f"model {self.model_id} has no feature {', '.join(map(repr, unknown))}",
                    hint=f"Its features are: {', '.join(c.name for c in self.columns)}.",
                )
            missing = [c.name for c in self.columns if c.name not in features]
            if missing:
                raise PgmlError(
                    f"features lacks {', '.join(map(repr, missing))} for model {self.model_id}",
                    hint="Give every feature; write null for an unknown value.",
                )
            ordered = [features[c.name] for c in self.columns]
        elif isinstance(features, list):
            if len(features) != len(self.columns):
                raise PgmlError(
                    f"model {self.model_id} takes {len(self.columns)} features, not {len(features)}",
                    hint=self._shape_hint(),
                )
            ordered = features
        else:
            raise PgmlError(f"features must be a JSON object or array, not {json.dumps(features)}",
                            hint=self._shape_hint())
        return [to_text(v, c) if c.is_text else to_number(v, c) for v, c in zip(ordered, self.columns)]

    def _shape_hint(self) -> str:
        example = ", ".join(f'"{c.name}": ...' for c in self.columns[:4])
        more = ", ..." if len(self.columns) > 4 else ""
        return (f"Pass an object keyed by feature name, '{{{example}{more}}}', or an array of "
                f"{len(self.columns)} values in this order: {', '.join(c.name for c in self.columns)}.")

    def predict_row(self, features: Any) -> Prediction:
        """(prediction, label, probabilities) for one row of JSON features."""
        x = self.encoder.transform_row(self.row_values(features))
        try:
            return self._predict_encoded(x)
        except ValueError as exc:  # scikit-learn's refusal of a value, e.g. beyond float32 for trees
            raise self._unscorable(exc) from exc

    def _predict_encoded(self, x: np.ndarray) -> Prediction:
        if self.classes is None:
            value = self._fast.predict(x) if self._fast else self.estimator.predict(x.reshape(1, -1))[0]
            return float(value), None, None
        if self._fast:
            index = self._known[int(self._fast.predict(x))]
            proba = self._fast.predict_proba(x)
        else:
            index = int(self.estimator.predict(x.reshape(1, -1))[0])
            proba = self.estimator.predict_proba(x.reshape(1, -1))[0] if self._has_proba else None
        return self._answer(int(index), proba)

    def _unscorable(self, exc: ValueError) -> PgmlError:
        return PgmlError(f"model {self.model_id} cannot score these features: {exc}",
                         sqlstate=errors.NUMERIC_OUT_OF_RANGE,
                         hint="Give values in the range of the ones it was trained on (a tree model "
                         "takes numbers up to about 3.4e38).")

    def _answer(self, index: int, known_proba: Optional[np.ndarray]) -> Prediction:
        label = self.classes[index]  # type: ignore[index]
        number = float(label) if isinstance(label, (bool, int, float)) else None
        probabilities = None
        if known_proba is not None:
            probabilities = {lbl: 0.0 for lbl in self.labels}
            for k, p in zip(self._known, known_proba):
                probabilities[self.labels[k]] = float(p)
        return number, self.labels[index], probabilities

    # -- many rows ---------------------------------------------------------------------------------

    def predict_arrays(self, data: Mapping[str, np.ndarray]) -> List[Prediction]:
        """Predictions for columns of many rows (as the training loader reads them), in one pass."""
        missing = [c.name for c in self.columns if c.name not in data]
        if missing:
            raise PgmlError(f"the relation lacks the features {', '.join(missing)} of model {self.model_id}",
                            hint="Score a relation with the same columns as the one the model was trained on.",
                            sqlstate=errors.UNDEFINED_COLUMN)
        X = self.encoder.transform(data)
        try:
            if self.classes is None:
                return [(float(v), None, None) for v in self.estimator.predict(X)]
            indices = np.asarray(self.estimator.predict(X), dtype=np.int64)  # trained on class indices
            proba = self.estimator.predict_proba(X) if self._has_proba else None
        except ValueError as exc:  # infinity in the relation, or a value beyond float32 for trees
            raise self._unscorable(exc) from exc
        return [self._answer(int(i), None if proba is None else proba[r]) for r, i in enumerate(indices)]


def label_text(label: Any) -> str:
    """A class label as PostgreSQL would print it as text."""
    if isinstance(label, bool):
        return "true" if label else "false"
    return str(label)
