#!/usr/bin/env bash
# The newest end of the supported range, on this machine rather than in the local server's root:
# a venv of the newest Python here (3.12 or later: what the newest numpy needs) with the newest
# numpy, SciPy, scikit-learn, psycopg2 and gradient boosting libraries that pyproject.toml allows,
# from PyPI. In it, the linters (ruff, mypy) and the server-free tests (tests/unit) run; the local
# server covers the oldest end.
#
#   local/newest.sh          make the venv when pyproject.toml changed or it is a week old, then check
#
# The venv lives in .pgml/newest; PGML_NEWEST_PYTHON names the Python to use instead of the newest found.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PGML_HOME:-$REPO/.pgml}/newest

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'newest.sh: %s\n' "$*" >&2; exit 1; }

# The newest CPython 3.12+ on PATH or under pyenv (a pyenv shim on PATH may not run: each is tried).
newest_python() {
    local v candidate
    for v in 3.14 3.13 3.12; do
        for candidate in "$(command -v "python$v" || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/"python$v"; do
            if [ -n "$candidate" ] && "$candidate" -c '' 2>/dev/null; then
                echo "$candidate"
                return
            fi
        done
    done
    die "no Python 3.12 or later here: install one (e.g. pyenv install 3.13) or set PGML_NEWEST_PYTHON"
}

PYTHON=${PGML_NEWEST_PYTHON:-$(newest_python)}
STAMP="$("$PYTHON" --version) $(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
if [ "$(cat "$VENV/stamp" 2>/dev/null)" != "$STAMP" ] || [ -n "$(find "$VENV/stamp" -mtime +7 2>/dev/null)" ]; then
    say "making $VENV: $("$PYTHON" --version) with the newest packages pyproject.toml allows"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # The project's dependencies, test and lint tools as pyproject.toml states them; the package
    # itself is imported from the checkout.
    "$VENV/bin/python" - "$REPO/pyproject.toml" >"$VENV/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
print("\n".join(project["dependencies"] + extras["boosting"] + extras["test"] + extras["lint"]))
PY
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade -r "$VENV/requirements.txt" \
        || die "pip install failed (see above)"
    echo "$STAMP" >"$VENV/stamp"
fi
"$VENV/bin/python" - <<'PY'
import platform, numpy, scipy, sklearn, psycopg2, xgboost, lightgbm, catboost
print(f"==> newest: Python {platform.python_version()}, numpy {numpy.__version__}, SciPy {scipy.__version__}, "
      f"scikit-learn {sklearn.__version__}, psycopg2 {psycopg2.__version__.split()[0]}, xgboost {xgboost.__version__}, "
      f"LightGBM {lightgbm.__version__}, CatBoost {catboost.__version__}")
PY

cd "$REPO"
say "ruff"
"$VENV/bin/ruff" check --quiet pgml_fdw tests bench
say "mypy"
"$VENV/bin/mypy" --no-error-summary
say "server-free tests (tests/unit)"
PYTHONPATH=$REPO "$VENV/bin/python" -m pytest -q -p no:cacheprovider --confcutdir=tests/unit tests/unit "$@"
