"""The supported versions: one range in pyproject.toml and pgml_fdw.versions, checked at import."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from pgml_fdw import __version__, versions
from pgml_fdw.errors import PgmlError

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11's (the host venv of make test runs it)")
def test_pyproject_states_the_ranges_the_import_check_enforces() -> None:
    import tomllib

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["requires-python"] == ">=" + ".".join(map(str, versions.SUPPORTED["python"][0]))
    stated = {re.split(r"[<>=]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
    for name in ("numpy", "scipy", "scikit-learn"):
        assert stated[name] == versions.spec(name)


def test_the_running_versions_are_supported_and_recorded() -> None:
    found = versions.current()
    versions.check(found)
    assert found["pgml_fdw"] == __version__
    assert set(found) == {"python", "numpy", "scipy", "scikit-learn", "pgml_fdw"}


@pytest.mark.parametrize("name, version", [("scikit-learn", "1.5.2"), ("scikit-learn", "1.10.0"),
                                           ("numpy", "1.26.4"), ("scipy", "1.12.0"), ("python", "3.8.18")])
def test_a_version_outside_the_range_is_named_with_the_fix(name: str, version: str) -> None:
    with pytest.raises(PgmlError) as caught:
        versions.check({**versions.current(), name: version})
    assert caught.value.message.startswith(f"pgml_fdw {__version__} does not support {name} {version}")
    assert caught.value.message.endswith(f"it needs {versions.spec(name)}")
    assert caught.value.sqlstate == "0A000"
    if name != "python":
        assert f"-m pip install '{versions.spec(name)}'" in caught.value.hint


def test_versions_parse_as_pip_orders_them() -> None:
    assert versions.parse("1.10.0") > versions.parse("1.9.1")
    assert versions.parse("2.5.0rc1") == (2, 5, 0)
    assert versions.parse("1.6.dev0") == (1, 6)
