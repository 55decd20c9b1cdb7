"""Stored models: plain data around the estimator, the versions that made them, and loading them
under other versions (the fixtures in stored/ were made under the local server's pinned versions)."""
from __future__ import annotations

import json
import pickle
import pickletools
import struct
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from pgml_fdw import model_format, versions
from pgml_fdw.errors import PgmlError
from pgml_fdw.model import Model

from stored import make  # tests/unit is on sys.path: pytest puts a test file's folder there

STORED = Path(__file__).parent / "stored"


def _close(got: List[Any], want: List[Any]) -> None:
    """predict_row's answers equal to 1e-9 relative: a different numpy may sum in another order."""
    assert (got[1], got[0] is None) == (want[1], want[0] is None)
    if got[0] is not None:
        assert got[0] == pytest.approx(want[0], rel=1e-9, abs=1e-9)
    assert (got[2] is None) == (want[2] is None)
    if got[2] is not None:
        assert got[2].keys() == want[2].keys()
        assert list(got[2].values()) == pytest.approx(list(want[2].values()), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("folder", ["current", "format1", "legacy"])
@pytest.mark.parametrize("name", [m[0] for m in make.MODELS])
def test_stored_models_load_and_predict_as_when_trained(folder: str, name: str) -> None:
    # current: stored by this pgml_fdw under scikit-learn 1.6.1; format1: by pgml_fdw 0.3.0 (no fast
    # path arrays), legacy: by pgml_fdw 0.2.0.
    expected = json.loads((STORED / folder / "expected.json").read_text())[name]
    model = model_format.load((STORED / folder / f"{name}.model").read_bytes(), f"{name}_1")
    for features, want in zip(make.FEATURES, expected):
        _close(list(model.predict_row(features)), want)
    if folder != "legacy":
        assert model.made_with is not None and model.made_with["scikit-learn"] == "1.6.1"
    else:
        assert model.made_with is None


@pytest.fixture(scope="module")
def trained() -> Any:
    return make.train("logistic", "linear", "classification", {})


def _split(blob: bytes) -> tuple:
    """The header, and what follows it: the fast path's arrays and the estimator, as one."""
    (length,) = struct.unpack_from(">I", blob, len(model_format.MAGIC))
    start = len(model_format.MAGIC) + 4
    return json.loads(blob[start:start + length]), blob[start + length:]


def _join(header: Dict[str, Any], rest: bytes) -> bytes:
    text = json.dumps(header).encode()
    return model_format.MAGIC + struct.pack(">I", len(text)) + text + rest


def _estimator(header: Dict[str, Any], rest: bytes) -> bytes:
    return rest[sum(size for _, _, size in header["arrays"]):]


def test_only_the_estimator_is_pickled_and_it_names_no_pgml_fdw_class(trained: Any) -> None:
    header, rest = _split(model_format.dump(trained.model, trained.probe))
    estimator = _estimator(header, rest)
    assert header["versions"] == versions.current()
    assert header["columns"][2] == ["city", "text", "text", "text"]
    assert header["classes"] == ["high", "low", "mid"]
    modules = {arg.split(" ")[0] for op, arg, _ in pickletools.genops(estimator)
               if op.name == "GLOBAL" and isinstance(arg, str)}
    strings = [arg for op, arg, _ in pickletools.genops(estimator) if isinstance(arg, str)]
    assert not any("pgml_fdw" in s for s in strings)
    assert all(m.split(".")[0] in ("sklearn", "numpy", "scipy", "builtins", "copyreg", "_codecs")
               for m in modules | {s for s in strings if s.startswith(("sklearn.", "numpy"))})
    assert type(pickle.loads(estimator)).__module__.startswith("sklearn.")


def test_a_round_trip_predicts_exactly_the_same(trained: Any) -> None:
    model = model_format.load(model_format.dump(trained.model, trained.probe), "logistic_1")
    for features in make.FEATURES:
        assert model.predict_row(features) == trained.model.predict_row(features)
    assert model.encoder.describe() == trained.model.encoder.describe()


def test_probe_rows_stay_inside_the_training_range_and_are_not_training_rows() -> None:
    X = np.array([[0.0, 10.0], [1.0, 20.0], [0.5, np.nan]])
    rows = model_format.probe_rows(X)
    assert rows.shape == (model_format.PROBE_ROWS, 2)
    assert (rows[:, 0] >= 0).all() and (rows[:, 0] <= 1).all() and (rows[:, 1] >= 10).all() and (rows[:, 1] <= 20).all()
    assert not any((row == X).all(axis=1).any() for row in rows)
    assert model_format.probe_rows(np.zeros((5, 100_000))).shape == (1, 100_000)


def test_other_versions_that_predict_the_same_load(trained: Any) -> None:
    header, estimator = _split(model_format.dump(trained.model, trained.probe))
    header["versions"]["scikit-learn"] = "1.6.0"
    model = model_format.load(_join(header, estimator), "logistic_1")
    assert model.made_with["scikit-learn"] == "1.6.0"


def test_other_versions_that_predict_differently_are_refused_naming_both(trained: Any) -> None:
    header, rest = _split(model_format.dump(trained.model, trained.probe))
    header["versions"]["scikit-learn"] = "1.6.0"
    header["probe"]["proba"][0][0] += 1e-6
    # The fast path is pgml_fdw's own code, unchanged: it serves; the estimator, when first needed,
    # is refused.
    model = model_format.load(_join(header, rest), "logistic_1")
    assert model.predict_row(make.FEATURES[0]) == trained.model.predict_row(make.FEATURES[0])
    with pytest.raises(PgmlError) as caught:
        assert model.estimator is None
    assert caught.value.message.startswith('model "logistic_1" cannot be used on this server (python ')
    assert f"scikit-learn {versions.current()['scikit-learn']}" in caught.value.message
    assert "predicts differently" in caught.value.message
    assert "It was trained with" in caught.value.hint and "scikit-learn 1.6.0" in caught.value.hint
    assert "Retrain it here" in caught.value.hint
    # Another pgml_fdw: the fast path answers the probe when the model loads.
    header["versions"]["pgml_fdw"] = "0.0.1"
    with pytest.raises(PgmlError, match="predicts differently") as caught:
        model_format.load(_join(header, rest), "logistic_1")
    assert "pgml_fdw 0.0.1" in caught.value.hint
    # The same versions as now: the probe is not consulted (nothing can have changed).
    header["versions"] = versions.current()
    assert model_format.load(_join(header, rest), "logistic_1").estimator is not None


def test_a_model_with_a_fast_path_reads_its_estimator_only_when_needed(trained: Any) -> None:
    blob = model_format.dump(trained.model, trained.probe)
    read: List[Any] = []

    def part(offset: int, count: Any) -> bytes:
        read.append(count)
        return blob[offset:] if count is None else blob[offset:offset + count]

    model = model_format.read(part, "logistic_1")
    for features in make.FEATURES:
        model.predict_row(features)
    assert None not in read and sum(read) < len(blob)
    many = model.predict_arrays({"size": np.array([50.0]), "rooms": np.array([2.0]),
                                 "city": np.array(["paris"], dtype=object)})
    assert read[-1] is None
    assert many[0][1] == model.predict_row(make.FEATURES[0])[1]


def test_a_newer_format_and_an_unreadable_estimator_are_clear_errors(trained: Any) -> None:
    header, rest = _split(model_format.dump(trained.model, trained.probe))
    newer = {**header, "format": model_format.FORMAT + 1}
    with pytest.raises(PgmlError, match="newer than this pgml_fdw's") as caught:
        model_format.load(_join(newer, rest), "logistic_1")
    assert "Upgrade pgml_fdw" in caught.value.hint
    # An estimator class this scikit-learn does not have, as after a removal.
    broken = model_format.load(_join(header, rest.replace(b"LogisticRegression", b"LogisticRegressioX")),
                               "logistic_1")
    with pytest.raises(PgmlError, match="cannot be used on this server .*AttributeError") as caught:
        assert broken.estimator is None
    assert caught.value.sqlstate == "0A000"
    # Without a fast path, the estimator is read when the model loads.
    header = {**header, "predictor": None, "arrays": []}
    estimator = _estimator(_split(model_format.dump(trained.model, trained.probe))[0], rest)
    with pytest.raises(PgmlError, match="cannot be used on this server .*AttributeError"):
        model_format.load(_join(header, estimator.replace(b"LogisticRegression", b"LogisticRegressioX")),
                          "logistic_1")


def test_a_legacy_blob_that_is_not_a_model_is_refused() -> None:
    with pytest.raises(PgmlError, match="it holds a dict, not a model") as caught:
        model_format.load(pickle.dumps({"a": 1}), "m_1")
    assert "pgml_fdw 0.2 or earlier" in caught.value.hint


def test_models_record_the_versions_that_trained_them(trained: Any) -> None:
    assert trained.details["versions"] == versions.current() == trained.model.made_with
    assert isinstance(trained.model, Model)
