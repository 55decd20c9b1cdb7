"""How a trained model is stored in ``pgml.model_estimators``: plain data around a scikit-learn estimator.

A stored model is, in this order::

    b"PGMLFDW\\n"                  8 bytes: says this layout (older models are a bare pickle)
    length                       4 bytes, big-endian: the length of the header
    header                       JSON: format, versions, model id, task, columns, classes,
                                 preprocessing, probe
    estimator                    the scikit-learn estimator alone, pickled

Nothing but the estimator is pickled, so renaming or moving a pgml_fdw class never breaks a stored
model, and a model records the versions that made it (Python, numpy, SciPy, scikit-learn, pgml_fdw).

The *probe* is a few rows drawn at random inside the training matrix's range (never training rows)
and the estimator's answers to them. Loaded under other versions than it was trained with, a model
must give the same answers, or loading fails with an error that names both sets of versions and
says to retrain: scikit-learn does not promise that a pickle works, or predicts the same, across
its releases.
"""
from __future__ import annotations

import io
import json
import pickle
import struct
import warnings
from typing import Any, Dict, Optional

import numpy as np

from . import errors, versions
from .columns import FeatureColumn
from .errors import PgmlError
from .model import Model
from .preprocessing import FeatureEncoder

MAGIC = b"PGMLFDW\n"
FORMAT = 1  # the header's layout; a reader refuses a format newer than its own
_LENGTH = struct.Struct(">I")
PROBE_ROWS = 8
_PROBE_VALUES = 20_000  # at most this many numbers in a probe, however wide the matrix

# Modules that pickles of a supported scikit-learn name, but that are elsewhere in others:
# scikit-learn 1.6's wheels pickle their Cython loss objects (in every gradient boosting model)
# under the bare module name _loss.
_MOVED = {"_loss": "sklearn._loss._loss"}


class _Unpickler(pickle.Unpickler):
    """pickle.loads, finding what _MOVED says was moved."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(_MOVED.get(module, module), name)


def _unpickle(data: bytes) -> Any:
    with warnings.catch_warnings():
        # InconsistentVersionWarning: the probe decides whether a model still holds.
        warnings.simplefilter("ignore")
        return _Unpickler(io.BytesIO(data)).load()


def probe_rows(X: np.ndarray) -> np.ndarray:
    """Rows drawn uniformly, with a fixed seed, inside each column's range in ``X`` (the training
    matrix): the same for the same data, and none of them a training row."""
    rows = max(1, min(PROBE_ROWS, _PROBE_VALUES // max(1, X.shape[1])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column that is all NaN (impute "none")
        low, high = np.nan_to_num(np.nanmin(X, axis=0)), np.nan_to_num(np.nanmax(X, axis=0))
    return np.random.default_rng(0).uniform(low, high, size=(rows, X.shape[1]))


def _answers(estimator: Any, X: np.ndarray) -> Dict[str, Any]:
    proba = estimator.predict_proba(X).tolist() if hasattr(estimator, "predict_proba") else None
    return {"predict": np.asarray(estimator.predict(X), dtype=np.float64).tolist(), "proba": proba}


def dump(model: Model, probe: np.ndarray) -> bytes:
    """The bytes stored for ``model``, with ``probe`` (see :func:`probe_rows`) and its answers."""
    header = {
        "format": FORMAT,
        "versions": versions.current(),
        "model_id": model.model_id,
        "task": model.task,
        "columns": [[c.name, c.sql_type, c.kind, c.base_type] for c in model.columns],
        "classes": model.classes,
        "encoder": model.encoder.to_data(),
        "probe": {"rows": probe.tolist(), **_answers(model.estimator, probe)},
    }
    text = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    return MAGIC + _LENGTH.pack(len(text)) + text + pickle.dumps(model.estimator, protocol=4)


def load(blob: bytes, ref: str) -> Model:
    """The model stored as ``blob`` (``ref`` names it in errors): a clear PgmlError when this
    server's versions cannot load it, or it would not predict what it did when it was trained."""
    if not blob.startswith(MAGIC):
        return _load_pickled(blob, ref)
    (length,) = _LENGTH.unpack_from(blob, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    header = json.loads(blob[start:start + length])
    made_with = header["versions"]
    if header["format"] > FORMAT:
        raise _cannot_load(ref, made_with, f"it was stored in format {header['format']}, newer than this "
                           f"pgml_fdw's {FORMAT}", "Upgrade pgml_fdw on this server, or retrain the model here.")
    try:
        estimator = _unpickle(blob[start + length:])
    except Exception as exc:  # noqa: BLE001 - whatever the unpickling of another version's objects raises
        raise _cannot_load(ref, made_with, f"{type(exc).__name__}: {exc}") from exc
    columns = [FeatureColumn(*c) for c in header["columns"]]
    encoder = FeatureEncoder.from_data(header["encoder"])
    model = Model(header["model_id"], header["task"], columns, encoder, estimator, header["classes"],
                  made_with=made_with)
    if _differs(made_with, versions.current()):
        _check_probe(model, header["probe"], ref)
    return model


def _load_pickled(blob: bytes, ref: str) -> Model:
    """A model stored by pgml_fdw 0.2 or earlier: the whole Model pickled, versions unrecorded."""
    try:
        model = _unpickle(blob)
    except Exception as exc:  # noqa: BLE001 - as in load
        raise _cannot_load(ref, None, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, Model):
        raise _cannot_load(ref, None, f"it holds a {type(model).__name__}, not a model")
    return model


def _differs(made_with: Dict[str, str], now: Dict[str, str]) -> bool:
    """Whether a model may predict differently here: another numpy, SciPy or scikit-learn, or
    another Python (pickles of numpy arrays and floats are exact across them, code paths are not)."""
    return any(made_with.get(name) != now[name] for name in versions.SUPPORTED)


def _check_probe(model: Model, probe: Dict[str, Any], ref: str) -> None:
    rows = np.asarray(probe["rows"], dtype=np.float64)
    try:
        now = _answers(model.estimator, rows)
    except Exception as exc:  # noqa: BLE001 - an estimator of another version failing to predict
        raise _cannot_load(ref, model.made_with, f"it fails to predict: {type(exc).__name__}: {exc}") from exc
    same = np.allclose(now["predict"], probe["predict"], rtol=1e-9, atol=1e-12) and (
        (now["proba"] is None) == (probe["proba"] is None)
        and (now["proba"] is None or np.allclose(now["proba"], probe["proba"], rtol=1e-9, atol=1e-12)))
    if not same:
        raise _cannot_load(ref, model.made_with, "it predicts differently under these versions")


def _cannot_load(ref: str, made_with: Optional[Dict[str, str]], reason: str,
                 hint: Optional[str] = None) -> PgmlError:
    here = _describe(versions.current())
    then = f"was trained with {_describe(made_with)}" if made_with else "was stored by pgml_fdw 0.2 or earlier"
    return PgmlError(
        f'model "{ref}" cannot be used on this server ({here}): {reason}',
        hint=hint or f"It {then}. Retrain it here: SELECT pgml.train(...) with the options in pgml.models, "
        "or install those versions into the server's Python.",
        sqlstate=errors.FEATURE_NOT_SUPPORTED,
    )


def _describe(found: Dict[str, str]) -> str:
    return ", ".join(f"{name} {found.get(name, '?')}" for name in (*versions.SUPPORTED, "pgml_fdw"))
