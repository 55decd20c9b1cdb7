"""The Python, numpy, SciPy and scikit-learn versions pgml_fdw supports, checked when they are imported.

The ranges are the ones the test suite runs at both ends (``make test``: the local server's pinned
versions, and the newest from PyPI); pyproject.toml states the same ranges, and a unit test keeps
the two equal. scikit-learn is capped below the next release because pgml_fdw reproduces its
single-row predictions exactly (single_row.py) and passes parameters it has deprecated (algorithms.py).

The modules that need numpy, SciPy and scikit-learn call :func:`check` first (algorithms.py when
it is imported, model_format.py before it unpickles an estimator): a server whose Python has an
unsupported version fails on the first training, or on the first prediction that needs
scikit-learn, with an error that says which package to change, instead of a wrong answer or a
traceback. Serving a model through its plain-Python fast path imports none of them.
"""
from __future__ import annotations

import re
import sys
from typing import Any, Dict, Optional, Tuple

from . import __version__, errors
from .errors import PgmlError

Version = Tuple[int, ...]

# name -> (lowest supported, first unsupported or None), as pip spells the distribution.
SUPPORTED: Dict[str, Tuple[Version, Optional[Version]]] = {
    "python": ((3, 9), None),
    "numpy": ((2, 0), (3, 0)),
    "scipy": ((1, 13), (2, 0)),
    "scikit-learn": ((1, 6), (1, 10)),
}

# The optional gradient boosting libraries (pyproject.toml's extra "boosting"), by module name ->
# (the pip package that installs it, lowest supported, first unsupported). pgml_fdw checks one when
# it imports it (boosting.py), and a model trained with one records its version besides the above.
# xgboost-cpu is xgboost without its CUDA libraries; the package xgboost installs the same module.
OPTIONAL: Dict[str, Tuple[str, Version, Optional[Version]]] = {
    "xgboost": ("xgboost-cpu", (2, 1), (4, 0)),
    "lightgbm": ("lightgbm", (4, 0), (5, 0)),
    "catboost": ("catboost", (1, 2), (2, 0)),
}


def parse(text: str) -> Version:
    """The leading numeric parts of a version string: '1.6.1' -> (1, 6, 1), '2.5.0rc1' -> (2, 5, 0)."""
    parts = []
    for piece in text.split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() < len(piece):
            break
    return tuple(parts)


def spec(name: str) -> str:
    """The supported range as a pip requirement, e.g. "scikit-learn>=1.6,<1.10" (for an optional
    library, by the name of its pip package: "xgboost-cpu>=2.1,<4.0")."""
    if name in OPTIONAL:
        package, low, high = OPTIONAL[name]
        name = package
    else:
        low, high = SUPPORTED[name]
    text = f"{name}>={'.'.join(map(str, low))}"
    return text if high is None else f"{text},<{'.'.join(map(str, high))}"


def library(estimator: Any) -> Optional[str]:
    """The optional library (a key of OPTIONAL) whose estimator ``estimator`` is, by the modules of
    its classes; None for scikit-learn's. Imports nothing."""
    for cls in type(estimator).__mro__:
        root = cls.__module__.split(".")[0]
        if root in OPTIONAL:
            return root
    return None


def current(estimator: Any = None) -> Dict[str, str]:
    """The versions this process runs, as recorded with every model it trains (this imports
    numpy, SciPy and scikit-learn); with an ``estimator`` of an optional library, that library's
    version too (under its module name: {"xgboost": "2.1.4"})."""
    import numpy
    import scipy
    import sklearn

    found = {**serving(), "numpy": numpy.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__}
    name = library(estimator)
    if name is not None:
        found[name] = sys.modules[name].__version__
    return found


def serving() -> Dict[str, str]:
    """The versions a model's plain-Python fast path depends on: Python's and pgml_fdw's."""
    return {"python": sys.version.split()[0], "pgml_fdw": __version__}  # platform.python_version(), unimported


def check(found: Optional[Dict[str, str]] = None) -> None:
    """Raises PgmlError naming the first package of ``found`` (by default :func:`current`) outside
    its supported range."""
    found = current() if found is None else found
    for name, (low, high) in SUPPORTED.items():
        version = parse(found[name])
        if version[:len(low)] < low or (high is not None and version[:len(high)] >= high):
            python = f"python{sys.version_info.major}.{sys.version_info.minor}"
            # sys.executable is PostgreSQL's own binary inside a backend: name the Python by its prefix.
            where = "" if name == "python" else f" (in the Python at {sys.prefix})"
            fix = ("Run PostgreSQL's Multicorn with a supported Python." if name == "python" else
                   f"Install a supported version into that Python: {python} -m pip install '{spec(name)}', "
                   "then reconnect.")
            raise PgmlError(f"pgml_fdw {__version__} does not support {name} {found[name]}{where}: "
                            f"it needs {spec(name)}",
                            hint=fix, sqlstate=errors.FEATURE_NOT_SUPPORTED)



def check_library(name: str, version: str) -> None:
    """Raises PgmlError when ``version`` of the optional library ``name`` is outside its supported range."""
    _, low, high = OPTIONAL[name]
    found = parse(version)
    if found[:len(low)] < low or (high is not None and found[:len(high)] >= high):
        python = f"python{sys.version_info.major}.{sys.version_info.minor}"
        raise PgmlError(f"pgml_fdw {__version__} does not support {name} {version} (in the Python at {sys.prefix}): "
                        f"it needs {spec(name)}",
                        hint=f"Install a supported version into that Python: {python} -m pip install '{spec(name)}', "
                        "then reconnect.", sqlstate=errors.FEATURE_NOT_SUPPORTED)
