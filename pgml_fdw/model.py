"""A trained model: its features, preprocessing, estimator and classes, and how it predicts.

It knows how to turn the JSON a query gives into the feature vector training saw, and the
estimator's answer back into SQL values. :mod:`model_format` stores it.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .columns import FeatureColumn, array_sources, as_real, to_number, to_text
from . import errors
from .errors import PgmlError
from .row_encoder import RowEncoder
from .single_row import NeedsEstimator, Predictor, fast_predictor

# JSON numbers as json.loads gives them (bool, a subclass of int, is not one of them).
_PLAIN_NUMBERS = frozenset((int, float))

Prediction = Tuple[Optional[float], Optional[str], Optional[Dict[str, float]]]


class Model:
    """A fitted pipeline that answers one row of JSON features, or arrays of many rows.

    One row is answered in plain Python (:mod:`row_encoder`, :mod:`single_row`), so serving a model
    with a fast path imports neither numpy nor scikit-learn. The scikit-learn estimator is loaded
    only when it is needed: for an estimator without a fast path, a row the fast path hands over
    (NaN, infinity), or many rows at once.
    """

    def __init__(
        self,
        model_id: str,
        task: str,
        columns: Sequence[FeatureColumn],
        encoder: Any,
        estimator: Callable[[], Any],
        classes: Optional[List[Any]] = None,
        made_with: Optional[Dict[str, str]] = None,
        predictor: Optional[Predictor] = None,
        known: Optional[List[int]] = None,
        has_proba: bool = False,
    ) -> None:
        """``encoder`` is a fitted FeatureEncoder or its ``to_data()``; ``estimator`` returns the
        fitted estimator (called once, when first needed); ``predictor`` is its fast path, if any;
        for classification, ``known`` lists the class indexes the estimator knows (its
        ``classes_``: the classes of its training split) and ``has_proba`` whether it gives
        probabilities. :meth:`fitted` works them out from an estimator at hand."""
        self.model_id = model_id
        self.task = task
        self.columns = list(columns)
        # Classification: the labels in their original form (str, bool or number), and as text.
        self.classes = classes
        # The versions of Python and its packages it was trained with (None: not recorded, 0.2).
        self.made_with = made_with
        self._encoder = encoder
        self._load_estimator: Optional[Callable[[], Any]] = estimator
        self._estimator: Any = None
        self._predictor = predictor
        self._known = known
        self._has_proba = has_proba
        self._version = int(model_id.rsplit("_", 1)[1])
        self._positions = {c.name: i for i, c in enumerate(self.columns)}
        self._names = [c.name for c in self.columns]
        self._all_numbers = all(c.kind == "number" for c in self.columns)
        # The relation's columns, in order: (name, first feature, its array's width or None for a
        # scalar); a query may give an array column's value as one JSON array.
        self._arrays = {a.name: a for a in array_sources(self.columns)}
        self._groups: List[Tuple[str, int, Optional[int]]] = []
        for i, c in enumerate(self.columns):
            if c.array is None:
                self._groups.append((c.name, i, None))
            elif c.array[1] == 1:
                self._groups.append((c.array[0], i, self._arrays[c.array[0]].width))
        # Features of real (float4) columns: a value given in JSON is rounded as the column holds it.
        self._reals = [i for i, c in enumerate(self.columns) if c.base_type == "float4"]
        self._row = RowEncoder.from_data(encoder) if isinstance(encoder, Mapping) else encoder.row_encoder()
        if classes is not None:
            self.labels = [label_text(c) for c in classes]

    @classmethod
    def fitted(cls, model_id: str, task: str, columns: Sequence[FeatureColumn], encoder: Any, estimator: Any,
               classes: Optional[List[Any]] = None, made_with: Optional[Dict[str, str]] = None) -> "Model":
        """The model of a fitted FeatureEncoder and estimator."""
        known = [int(c) for c in estimator.classes_] if classes is not None else None
        model = cls(model_id, task, columns, encoder, lambda: estimator, classes, made_with,
                    fast_predictor(estimator), known, hasattr(estimator, "predict_proba"))
        model._estimator, model._load_estimator = estimator, None
        return model

    @property
    def estimator(self) -> Any:
        """The fitted scikit-learn estimator, loaded on first use."""
        return self.load_estimator()

    def load_estimator(self) -> Any:
        """Reads and unpickles the estimator now, unless it is loaded already; returns it."""
        if self._load_estimator is not None:
            self._estimator = self._load_estimator()
            self._load_estimator = None
        return self._estimator

    @property
    def encoder(self) -> Any:
        """The fitted FeatureEncoder (preprocessing of many rows; it needs numpy)."""
        if isinstance(self._encoder, Mapping):
            from .preprocessing import FeatureEncoder

            self._encoder = FeatureEncoder.from_data(self._encoder)
        return self._encoder

    @property
    def row_encoder(self) -> RowEncoder:
        """The preprocessing of one row, in plain Python."""
        return self._row

    @property
    def predictor(self) -> Optional[Predictor]:
        """The plain-Python single-row predictor, None when the estimator has no fast path."""
        return self._predictor

    @property
    def known(self) -> Optional[List[int]]:
        """Classification: the class indexes the estimator knows, in the order of its answers."""
        return self._known

    @property
    def has_proba(self) -> bool:
        """Whether the estimator gives class probabilities."""
        return self._has_proba

    @property
    def version(self) -> int:
        """The version number, the last part of the id (name_version)."""
        return self._version

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """A model pickled whole by pgml_fdw 0.2 or earlier (model_format reads those too)."""
        fitted = Model.fitted(state["model_id"], state["task"], state["columns"], state["encoder"],
                              state["estimator"], state.get("classes"))
        self.__dict__.update(fitted.__dict__)

    # -- one row -----------------------------------------------------------------------------------

    def row_values(self, features: Any) -> List[Any]:
        """The JSON features as the raw values training saw: numbers (NaN for null) for numeric
        kinds, str or None for text. ``features`` is an object by feature name, or an array of the
        features in training order; an array column's value may be given as one JSON array, by its
        column's name in an object, or in its column's place in an array of the relation's columns."""
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
                    values = [float(v) for v in ordered]
                    for i in self._reals:
                        values[i] = as_real(values[i])
                    return values
                except OverflowError:
                    pass  # beyond float (or real) range: the checked path says which feature
        features = self._expanded(features)
        if isinstance(features, Mapping):
            unknown = [k for k in features if k not in self._positions]
            if unknown:
                raise PgmlError(
                    f"model {self.model_id} has no feature {', '.join(map(repr, unknown))}",
                    hint=f"Its features are: {self._describe_columns()}.",
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

    def given_values(self, features: Any) -> List[Any]:
        """The JSON value given for each feature, in training order (an array column's value as its
        elements), as :meth:`row_values` read them before converting them: for ``features`` that
        row_values accepted, parsed."""
        features = self._expanded(features)
        if isinstance(features, Mapping):
            return [features.get(c.name) for c in self.columns]
        return list(features)

    def _expanded(self, features: Any) -> Any:
        """Parsed features with an array column's value given as one JSON array turned into its
        elements: by feature name in an object, or in its column's place in an array of the
        relation's columns."""
        if not self._arrays:
            return features
        if isinstance(features, Mapping):
            return self._expand_object(features)
        if isinstance(features, list) and len(features) == len(self._groups) and (
                len(features) != len(self.columns)
                or any(width is not None and isinstance(features[g], list)
                       for g, (_, _, width) in enumerate(self._groups))):
            return self._expand_list(features)
        return features

    def _elements(self, name: str, value: Any) -> List[Any]:
        """The values of an array column's elements, given as one JSON array (or null)."""
        width = self._arrays[name].width
        if value is None:
            return [None] * width
        if not isinstance(value, list) or len(value) != width:
            given = f"{len(value)} values" if isinstance(value, list) else json.dumps(value)
            raise PgmlError(f'feature "{name}" of model {self.model_id} takes an array of {width} values, not {given}',
                            hint=f"Give the array of {width} elements it was trained on (null for an unknown "
                            "element, or for the whole array).")
        return value

    def _expand_object(self, features: Mapping[str, Any]) -> Dict[str, Any]:
        """An object by column name with an array column's value as one array: by feature name."""
        expanded: Dict[str, Any] = {}
        for key, value in features.items():
            if key in self._arrays and key not in self._positions:
                first = self._arrays[key].first
                names = self._names[first:first + self._arrays[key].width]
                both = [n for n in names if n in features]
                if both:
                    raise PgmlError(f'features gives both "{key}" and its elements {", ".join(both)}',
                                    hint=f'Give "{key}" as one array, or its elements one by one, not both.')
                expanded.update(zip(names, self._elements(key, value)))
            else:
                expanded[key] = value
        return expanded

    def _expand_list(self, features: List[Any]) -> List[Any]:
        """An array of the relation's columns, an array column's value as one array: of features."""
        expanded: List[Any] = []
        for (name, _, width), value in zip(self._groups, features):
            if width is None:
                expanded.append(value)
            else:
                expanded.extend(self._elements(name, value))
        return expanded

    def _describe_columns(self) -> str:
        return ", ".join(name if width is None else f"{name} (an array of {width})" for name, _, width in self._groups)

    def _shape_hint(self) -> str:
        def example(name: str, width: Optional[int]) -> str:
            return f'"{name}": ...' if width is None else f'"{name}": [{width} values]'

        shown = ", ".join(example(name, width) for name, _, width in self._groups[:4])
        more = ", ..." if len(self._groups) > 4 else ""
        hint = (f"Pass an object keyed by feature name, '{{{shown}{more}}}', or an array of "
                f"{len(self.columns)} values in this order: ")
        if not self._arrays:
            return hint + ", ".join(c.name for c in self.columns) + "."
        return hint + self._describe_columns() + ", the arrays' elements in place of each."

    def predict_row(self, features: Any) -> Prediction:
        """(prediction, label, probabilities) for one row of JSON features. A clustering model's
        prediction is the cluster's number, its label the same as text, its probabilities (a
        gaussian_mixture's) by cluster; a decomposition model has none (see :meth:`decompose_row`)."""
        if self.task == "decomposition":
            raise self.not_a_prediction()
        x = self._row.encode(self.row_values(features))
        try:
            return self._predict_encoded(x)
        except ValueError as exc:  # scikit-learn's refusal of a value, e.g. beyond float32 for trees
            raise self._unscorable(exc) from exc

    def decompose_row(self, features: Any) -> List[float]:
        """A decomposition model's components for one row of JSON features."""
        x = self._row.encode(self.row_values(features))
        try:
            if self._predictor is not None:
                try:
                    return self._predictor.transform(x)
                except NeedsEstimator:
                    pass  # NaN or infinity: scikit-learn's own answer, or its own refusal
            import numpy as np

            return [float(v) for v in self.estimator.transform(np.array([x], dtype=np.float64))[0]]
        except ValueError as exc:
            raise self._unscorable(exc) from exc

    def not_a_prediction(self) -> PgmlError:
        """The error of asking a decomposition model for a prediction."""
        return PgmlError(f"model {self.model_id} is a decomposition model: it answers an array of components, "
                         "not a prediction", sqlstate=errors.INVALID_PARAMETER,
                         hint=f"Use pgml.decompose('{self.model_id}', features), or SELECT components FROM "
                         "pgml.predictions WHERE model = ... (AND relation = ... for a whole table).")

    def _predict_encoded(self, x: List[float]) -> Prediction:
        if self._predictor is not None:
            try:
                decided, proba = self._predictor.answer(x)
                if self.task == "clustering":
                    return self._cluster(int(decided), proba)
                if self.classes is None:
                    return float(decided), None, None
                assert self._known is not None
                return self._answer(self._known[int(decided)], proba)
            except NeedsEstimator:
                pass  # NaN or infinity: scikit-learn's own answer, or its own refusal
        import numpy as np

        X = np.array([x], dtype=np.float64)
        if self.task == "clustering":
            proba = self.estimator.predict_proba(X)[0] if self._has_proba else None
            return self._cluster(int(self.estimator.predict(X)[0]), proba)
        if self.classes is None:
            return float(self.estimator.predict(X)[0]), None, None
        index = int(self.estimator.predict(X)[0])  # trained on class indices
        proba = self.estimator.predict_proba(X)[0] if self._has_proba else None
        return self._answer(index, proba)

    def _unscorable(self, exc: ValueError) -> PgmlError:
        return PgmlError(f"model {self.model_id} cannot score these features: {exc}",
                         sqlstate=errors.NUMERIC_OUT_OF_RANGE,
                         hint="Give values in the range of the ones it was trained on (a tree model "
                         "takes numbers up to about 3.4e38).")

    def _answer(self, index: int, known_proba: Optional[Sequence[float]]) -> Prediction:
        label = self.classes[index]  # type: ignore[index]
        number = float(label) if isinstance(label, (bool, int, float)) else None
        probabilities = None
        if known_proba is not None:
            probabilities = {lbl: 0.0 for lbl in self.labels}
            for k, p in zip(self._known or (), known_proba):
                probabilities[self.labels[k]] = float(p)
        return number, self.labels[index], probabilities

    @staticmethod
    def _cluster(cluster: int, proba: Optional[Sequence[float]]) -> Prediction:
        probabilities = None if proba is None else {str(k): float(p) for k, p in enumerate(proba)}
        return float(cluster), str(cluster), probabilities

    # -- many rows ---------------------------------------------------------------------------------

    def predict_arrays(self, data: Mapping[str, Any]) -> List[Prediction]:
        """Predictions for columns of many rows (as the training loader reads them), in one pass."""
        if self.task == "decomposition":
            raise self.not_a_prediction()
        X = self._encode_arrays(data)
        try:
            if self.task == "clustering":
                clusters = self.estimator.predict(X)
                probas = self.estimator.predict_proba(X) if self._has_proba else None
                return [self._cluster(int(c), None if probas is None else probas[r]) for r, c in enumerate(clusters)]
            if self.classes is None:
                return [(float(v), None, None) for v in self.estimator.predict(X)]
            import numpy as np

            indices = np.asarray(self.estimator.predict(X), dtype=np.int64)  # trained on class indices
            proba = self.estimator.predict_proba(X) if self._has_proba else None
        except ValueError as exc:  # infinity in the relation, or a value beyond float32 for trees
            raise self._unscorable(exc) from exc
        return [self._answer(int(i), None if proba is None else proba[r]) for r, i in enumerate(indices)]

    def decompose_arrays(self, data: Mapping[str, Any]) -> List[List[float]]:
        """A decomposition model's components for columns of many rows, in one pass."""
        X = self._encode_arrays(data)
        try:
            return self.estimator.transform(X).tolist()  # type: ignore[no-any-return]
        except ValueError as exc:
            raise self._unscorable(exc) from exc

    def _encode_arrays(self, data: Mapping[str, Any]) -> Any:
        missing = [c.name for c in self.columns if c.name not in data]
        if missing:
            raise PgmlError(f"the relation lacks the features {', '.join(missing)} of model {self.model_id}",
                            hint="Score a relation with the same columns as the one the model was trained on.",
                            sqlstate=errors.UNDEFINED_COLUMN)
        return self.encoder.transform(data)


def label_text(label: Any) -> str:
    """A class label as PostgreSQL would print it as text."""
    if isinstance(label, bool):
        return "true" if label else "false"
    return str(label)
