"""The toy datasets scikit-learn ships, as the tables PostgresML's ``pgml.load_dataset`` makes of them.

``pgml.load_dataset('digits')`` creates ``pgml.digits`` in the caller's transaction (the SQL does
that: Multicorn has no SPI); this module gives it the table's columns, with PostgresML's names and
types, and its rows. Nothing is downloaded: the data are the files in scikit-learn's package.

=============  =====  ======================================================================
dataset        rows   columns
=============  =====  ======================================================================
breast_cancer  569    30 measurements (real, named as scikit-learn does: "mean radius"...),
                      malignant boolean
diabetes       442    age, sex, bmi, bp, s1 ... s6 (real, scaled as scikit-learn does), target real
digits         1,797  image smallint[] (the 8 x 8 pixels, row by row: 64 values 0..16),
                      target smallint
iris           150    sepal_length, sepal_width, petal_length, petal_width real, target integer
linnerud       20     chins, situps, jumps, weight, waist, pulse real
wine           178    13 measurements (real), target integer
=============  =====  ======================================================================

The rows are read in a worker process (:mod:`isolation`), so the backend that loads a dataset does
not keep scikit-learn imported.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from . import errors, isolation
from .errors import PgmlError

# A dataset's columns (name, SQL type) and rows (one value per column), as load() gives them.
Columns = List[Tuple[str, str]]
Rows = List[List[Any]]

# The worker imports scikit-learn (its address space, which this limits, is several times what it
# touches) and holds at most a few megabytes of data.
_WORKER_MEMORY = 2 * 2**30


def _breast_cancer() -> Tuple[Columns, Rows]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    columns = [(str(name), "real") for name in data.feature_names] + [("malignant", "boolean")]
    # scikit-learn's class 0 is malignant (data.target_names is ["malignant", "benign"]).
    rows = [[float(v) for v in x] + [int(t) == 0] for x, t in zip(data.data, data.target)]
    return columns, rows


def _diabetes() -> Tuple[Columns, Rows]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    columns = [(str(name), "real") for name in data.feature_names] + [("target", "real")]
    return columns, [[float(v) for v in x] + [float(t)] for x, t in zip(data.data, data.target)]


def _digits() -> Tuple[Columns, Rows]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return [("image", "smallint[]"), ("target", "smallint")], [
        [[int(v) for v in x], int(t)] for x, t in zip(data.data, data.target)]


def _iris() -> Tuple[Columns, Rows]:
    from sklearn.datasets import load_iris

    data = load_iris()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]  # PostgresML's, in scikit-learn's order
    columns = [(name, "real") for name in names] + [("target", "integer")]
    return columns, [[float(v) for v in x] + [int(t)] for x, t in zip(data.data, data.target)]


def _linnerud() -> Tuple[Columns, Rows]:
    from sklearn.datasets import load_linnerud

    data = load_linnerud()
    names = [str(n).lower() for n in list(data.feature_names) + list(data.target_names)]
    return [(name, "real") for name in names], [
        [float(v) for v in x] + [float(v) for v in y] for x, y in zip(data.data, data.target)]


# PostgresML's pgml.wine lists hue before color_intensity, where scikit-learn has them the other way.
_WINE = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
         "nonflavanoid_phenols", "proanthocyanins", "hue", "color_intensity", "od280/od315_of_diluted_wines",
         "proline"]


def _wine() -> Tuple[Columns, Rows]:
    from sklearn.datasets import load_wine

    data = load_wine()
    position = {str(name): i for i, name in enumerate(data.feature_names)}
    columns = [(name, "real") for name in _WINE] + [("target", "integer")]
    return columns, [[float(x[position[name]]) for name in _WINE] + [int(t)] for x, t in zip(data.data, data.target)]


_LOADERS: Dict[str, Callable[[], Tuple[Columns, Rows]]] = {
    "breast_cancer": _breast_cancer,
    "diabetes": _diabetes,
    "digits": _digits,
    "iris": _iris,
    "linnerud": _linnerud,
    "wine": _wine,
}
NAMES = tuple(sorted(_LOADERS))


def load(name: str) -> Tuple[Columns, Rows]:
    """The columns (name, SQL type) and rows of the dataset ``name``, one of :data:`NAMES`.

    Raises PgmlError for any other name: PostgresML also loads datasets from Hugging Face, which
    pgml_fdw does not."""
    return _loader(name)()


def _loader(name: str) -> Callable[[], Tuple[Columns, Rows]]:
    loader = _LOADERS.get(name)
    if loader is None:
        raise PgmlError(f'unknown dataset "{name}"', sqlstate=errors.FEATURE_NOT_SUPPORTED,
                        hint=f"pgml.load_dataset loads the datasets scikit-learn ships: {', '.join(NAMES)}. "
                        "Load any other data with COPY or INSERT.")
    return loader


def as_table(name: str) -> Dict[str, Any]:
    """The dataset as pgml._datasets hands it to pgml.load_dataset: its columns as
    ``[[name, type], ...]`` and its rows as JSON objects keyed by column name (what
    ``jsonb_populate_recordset`` takes), both plain JSON data. Read in a worker process."""
    _loader(name)  # an unknown name is refused before a worker is forked
    columns, rows = isolation.run(load, name, memory_limit=_WORKER_MEMORY, task="loading a dataset")
    names = [column for column, _ in columns]
    return {"columns": [list(c) for c in columns], "rows": [dict(zip(names, row)) for row in rows]}
