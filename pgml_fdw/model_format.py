"""How a trained model is stored in ``pgml.model_estimators``: plain data around a scikit-learn estimator.

A stored model is, in this order::

    b"PGMLFDW\\n"                  8 bytes: says this layout (older models are a bare pickle)
    length                       4 bytes, big-endian: the length of the header
    header                       JSON: format, versions, model id, task, columns, classes,
                                 preprocessing, probe, and the fast path's parameters
    arrays                       the fast path's arrays of numbers, little-endian, as the header lists
                                 them (format 2 on; none when the estimator has no fast path)
    estimator                    the estimator alone (scikit-learn's, or a boosting library's), pickled

Nothing but the estimator is pickled, so renaming or moving a pgml_fdw class never breaks a stored
model, and a model records the versions that made it (Python, numpy, SciPy, scikit-learn, pgml_fdw,
and the gradient boosting library of an xgboost, lightgbm or catboost model, whose estimator is the
library's own: a server without the library says which package to install).
A model with a fast path (:mod:`single_row`) is served from the header and the arrays alone: loading
it imports neither numpy nor scikit-learn, and its estimator is read and unpickled only if a query
needs it (a row with NaN or infinity, a whole relation).

The *probe* is a few rows drawn at random inside the training matrix's range (never training rows)
and the estimator's answers to them. Loaded under other versions than it was trained with, a model
must give the same answers, or loading fails with an error that names both sets of versions and
says to retrain: scikit-learn does not promise that a pickle works, or predicts the same, across
its releases. The fast path is pgml_fdw's own code: it answers the probe again when Python or
pgml_fdw changed, the estimator when any of the versions did.
"""
from __future__ import annotations

import json
import struct
from typing import Any, Callable, Dict, List, Optional

from . import errors, single_row, versions
from .columns import FeatureColumn
from .errors import PgmlError
from .model import Model

MAGIC = b"PGMLFDW\n"
# The layout; a reader refuses a format newer than its own. 1: no fast path arrays; 3: what a
# format 2 reader would get wrong, written only by the models that need it: preprocessing format 2
# lacks (target encoding, scaled or explicitly ordered categories, numbers encoded as categories,
# impute "error"), array features, and clustering and decomposition models (an older pgml_fdw then
# says it is too old instead of answering wrongly).
FORMAT = 3
_LENGTH = struct.Struct(">I")
PROBE_ROWS = 8
_PROBE_VALUES = 20_000  # at most this many numbers in a probe, however wide the matrix

# Modules that pickles of a supported scikit-learn name, but that are elsewhere in others:
# scikit-learn 1.6's wheels pickle their Cython loss objects (in every gradient boosting model)
# under the bare module name _loss.
_MOVED = {"_loss": "sklearn._loss._loss"}


def _unpickle(data: bytes) -> Any:
    """pickle.loads, finding what _MOVED says was moved (pickle is imported here: serving a model
    with a fast path unpickles nothing)."""
    import io
    import pickle
    import warnings

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return super().find_class(_MOVED.get(module, module), name)

    versions.check()  # an unsupported scikit-learn is named as such, not as a failing unpickle
    with warnings.catch_warnings():
        # InconsistentVersionWarning: the probe decides whether a model still holds.
        warnings.simplefilter("ignore")
        return _Unpickler(io.BytesIO(data)).load()


def probe_rows(X: Any) -> Any:
    """Rows drawn uniformly, with a fixed seed, inside each column's range in ``X`` (the training
    matrix): the same for the same data, and none of them a training row."""
    import warnings

    import numpy as np

    rows = max(1, min(PROBE_ROWS, _PROBE_VALUES // max(1, X.shape[1])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column that is all NaN (impute "none")
        low, high = np.nan_to_num(np.nanmin(X, axis=0)), np.nan_to_num(np.nanmax(X, axis=0))
    return np.random.default_rng(0).uniform(low, high, size=(rows, X.shape[1]))


def _answers(estimator: Any, X: Any, task: str) -> Dict[str, Any]:
    """The estimator's answers to the probe rows: predictions and probabilities, or a
    decomposition's components (as "predict")."""
    import numpy as np

    if task == "decomposition":
        return {"predict": np.asarray(estimator.transform(X), dtype=np.float64).tolist(), "proba": None}
    proba = estimator.predict_proba(X).tolist() if hasattr(estimator, "predict_proba") else None
    return {"predict": np.asarray(estimator.predict(X), dtype=np.float64).tolist(), "proba": proba}


def dump(model: Model, probe: Any) -> bytes:
    """The bytes stored for ``model``, with ``probe`` (see :func:`probe_rows`) and its answers."""
    predictor = model.predictor
    meta, arrays = predictor.to_data() if predictor is not None else (None, {})
    stored = [(name, values.typecode, single_row.array_bytes(values)) for name, values in arrays.items()]
    encoder = model.encoder.to_data()
    columns = [c.to_data() for c in model.columns]
    header = {
        "format": _format(model.task, encoder, columns),
        "versions": versions.current(model.estimator),
        "model_id": model.model_id,
        "task": model.task,
        "columns": columns,
        "classes": model.classes,
        "known": model.known,
        "has_proba": model.has_proba,
        "encoder": encoder,
        "probe": {"rows": probe.tolist(), **_answers(model.estimator, probe, model.task)},
        "predictor": meta,
        "arrays": [[name, typecode, len(data)] for name, typecode, data in stored],
    }
    import pickle

    text = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    return b"".join([MAGIC, _LENGTH.pack(len(text)), text, *(data for _, _, data in stored),
                     pickle.dumps(model.estimator, protocol=4)])


def _format(task: str, encoder: Dict[str, Any], columns: List[List[Any]]) -> int:
    """The oldest format that stores this model: 3 for clustering and decomposition, for features
    read from array columns (a column's data has a fifth element), and for an encoder with a step
    format 2 lacks (a number column encoded as categories among them: a format 2 reader would miss
    its NULL category)."""
    newer = (task in ("clustering", "decomposition") or any(len(c) > 4 for c in columns)
             or "tables" in encoder or "required" in encoder
             or any(len(p) > 4 for p in encoder["plan"].values())
             or any(encoder["columns"][text[0]][1] == "number" for text in encoder["texts"]))
    return 3 if newer else 2


# Reads ``count`` bytes of a stored model from ``offset`` (count None: to the end).
Reader = Callable[[int, Optional[int]], bytes]


def load(blob: bytes, ref: str) -> Model:
    """The model stored as ``blob``; see :func:`read`."""
    return read(lambda offset, count: blob[offset:] if count is None else blob[offset:offset + count], ref)


def read(part: Reader, ref: str) -> Model:
    """The model ``part`` reads (``ref`` names it in errors): a clear PgmlError when this server's
    versions cannot load it, or it would not predict what it did when it was trained.

    A model with a fast path is read up to its arrays; the rest, its estimator, is read and
    unpickled only when first needed."""
    start = len(MAGIC) + _LENGTH.size
    head = part(0, start)
    if not head.startswith(MAGIC):
        return _load_pickled(part(0, None), ref)
    (length,) = _LENGTH.unpack_from(head, len(MAGIC))
    header = json.loads(part(start, length))
    made_with = header["versions"]
    if header["format"] > FORMAT:
        raise _cannot_load(ref, made_with, f"it was stored in format {header['format']}, newer than this "
                           f"pgml_fdw's {FORMAT}", "Upgrade pgml_fdw on this server, or retrain the model here.")
    start += length
    sizes = [size for _, _, size in header.get("arrays", ())]
    data = part(start, sum(sizes)) if sizes else b""
    start += sum(sizes)
    columns = [FeatureColumn(*c) for c in header["columns"]]
    if header.get("predictor") is None:  # format 1, or an estimator without a fast path
        unpickled = _estimator(part(start, None), made_with, ref)
        model = Model.fitted(header["model_id"], header["task"], columns, header["encoder"], unpickled,
                             header["classes"], made_with=made_with)
        _check_estimator(model, unpickled, header["probe"], ref)
        return model

    def estimator() -> Any:
        found = _estimator(part(start, None), made_with, ref)
        _check_estimator(model, found, header["probe"], ref)
        return found

    arrays, at = {}, 0
    for (name, typecode, size) in header["arrays"]:
        arrays[name] = single_row.array_from(typecode, data[at:at + size])
        at += size
    model = Model(header["model_id"], header["task"], columns, header["encoder"], estimator, header["classes"],
                  made_with, single_row.from_data(header["predictor"], arrays), header["known"], header["has_proba"])
    if _differs(made_with, versions.serving()):
        _check_probe(model, header["probe"], ref, _predictor_answers(model, header["probe"]["rows"]))
    return model


def _estimator(pickled: bytes, made_with: Optional[Dict[str, str]], ref: str) -> Any:
    """What ``pickled`` holds (an estimator; before 0.3.0 a whole model), or the error that says this
    server cannot load it (made_with: the versions that stored it, if recorded): an optional library
    it needs and this server lacks is named, with the pip package that installs it."""
    from . import boosting

    for library in versions.OPTIONAL:
        if made_with and library in made_with:
            boosting.require(library, f'model "{ref}"', made_with[library])
    boosting.single_threaded()  # before unpickling: LightGBM runs OpenMP while it reads a model
    try:
        found = _unpickle(pickled)
        boosting.ready(found)
    except PgmlError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the unpickling of another version's objects raises
        library = (getattr(exc, "name", None) or "").split(".")[0] if isinstance(exc, ImportError) else ""
        if library in versions.OPTIONAL:
            raise boosting.missing(library, f'model "{ref}"', (made_with or {}).get(library)) from exc
        raise _cannot_load(ref, made_with, f"{type(exc).__name__}: {exc}") from exc
    return found


def _load_pickled(blob: bytes, ref: str) -> Model:
    """A model stored by pgml_fdw 0.2 or earlier: the whole Model pickled, versions unrecorded."""
    model = _estimator(blob, None, ref)
    if not isinstance(model, Model):
        raise _cannot_load(ref, None, f"it holds a {type(model).__name__}, not a model")
    return model


def _differs(made_with: Dict[str, str], now: Dict[str, str]) -> bool:
    """Whether a model may predict differently here: another version of any package in ``now``
    (pickles of numpy arrays and floats are exact across them, code paths are not)."""
    return any(made_with.get(name) != version for name, version in now.items())


def _check_estimator(model: Model, estimator: Any, probe: Dict[str, Any], ref: str) -> None:
    """Refuses an estimator unpickled under other versions than it was trained with, unless it
    answers the probe as it did then."""
    if model.made_with is not None and _differs(model.made_with, versions.current(estimator)):
        import numpy as np

        _check_probe(model, probe, ref, _answers(estimator, np.asarray(probe["rows"], dtype=np.float64), model.task))


def _predictor_answers(model: Model, rows: List[List[float]]) -> Dict[str, Any]:
    """The fast path's answers to the probe, as :func:`_answers` gives the estimator's."""
    predictor = model.predictor
    assert predictor is not None
    if model.task == "clustering":  # k-means (no probabilities)
        return {"predict": [_cluster(predictor, row) for row in rows], "proba": None}
    try:
        if model.task == "decomposition":
            return {"predict": [predictor.transform(row) for row in rows], "proba": None}
        answers = [predictor.answer(row) for row in rows]
    except single_row.NeedsEstimator:
        return {"predict": None, "proba": None}
    predict = [float(decided) for decided, _ in answers]
    proba = [p for _, p in answers] if model.has_proba else None
    if model.classes is not None:  # the estimator answers with the class indexes it knows
        predict = [float(model.known[int(i)]) for i in predict]  # type: ignore[index]
    return {"predict": predict, "proba": proba}


def _cluster(predictor: single_row.Predictor, row: List[float]) -> Optional[float]:
    """A k-means fast path's cluster for a probe row; None for a row it hands to the estimator (two
    centroids too close to call), which says nothing about the fast path."""
    try:
        return float(predictor.answer(row)[0])
    except single_row.NeedsEstimator:
        return None


def _check_probe(model: Model, probe: Dict[str, Any], ref: str, now: Dict[str, Any]) -> None:
    def close(a: Any, b: Any) -> bool:  # None in a: a row not answered (see _cluster)
        return len(a) == len(b) and all(
            x is None or (close(x, y) if isinstance(x, list) else abs(x - y) <= 1e-12 + 1e-9 * abs(y))
            for x, y in zip(a, b))

    same = now["predict"] is not None and close(now["predict"], probe["predict"]) and (
        (now["proba"] is None) == (probe["proba"] is None)
        and (now["proba"] is None or close(now["proba"], probe["proba"])))
    if not same:
        raise _cannot_load(ref, model.made_with, "it predicts differently under these versions")


def _cannot_load(ref: str, made_with: Optional[Dict[str, str]], reason: str,
                 hint: Optional[str] = None) -> PgmlError:
    here = _describe(_here(made_with))
    then = f"was trained with {_describe(made_with)}" if made_with else "was stored by pgml_fdw 0.2 or earlier"
    return PgmlError(
        f'model "{ref}" cannot be used on this server ({here}): {reason}',
        hint=hint or f"It {then}. Retrain it here: SELECT pgml.train(...) with the options in pgml.models, "
        "or install those versions into the server's Python.",
        sqlstate=errors.FEATURE_NOT_SUPPORTED,
    )


def _here(made_with: Optional[Dict[str, str]]) -> Dict[str, str]:
    """This server's versions, with those of the optional libraries ``made_with`` records (their
    modules are imported by then: the estimator was unpickled)."""
    import sys

    here = versions.current()
    for name in versions.OPTIONAL:
        if made_with and name in made_with and name in sys.modules:
            here[name] = sys.modules[name].__version__
    return here


def _describe(found: Dict[str, str]) -> str:
    names = (*versions.SUPPORTED, *(n for n in versions.OPTIONAL if n in found), "pgml_fdw")
    return ", ".join(f"{name} {found.get(name, '?')}" for name in names)
