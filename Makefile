# pgml_fdw developer commands. Everything runs against the local server (local/server.sh), as root.
SERVER := local/server.sh
PYTEST_ARGS ?=
FUZZ_CASES ?= 20000

.PHONY: up standby down psql demo test newest bench fuzz install uninstall

up:
	@$(SERVER) up

# A streaming hot standby of the local server on port PGML_PORT+1 (not started by up).
standby: up
	@$(SERVER) standby

down:
	@$(SERVER) down

psql: up
	@$(SERVER) psql

demo: up
	@$(SERVER) run sh -c 'psql -X -q -e -h 127.0.0.1 -p $$PGML_PORT -U postgres -d pgml -f demo/demo.sql'

NEWEST := $(or $(PGML_HOME),$(CURDIR)/.pgml)/newest

# Both ends of the supported versions: the newest (a venv on this machine: linters, server-free
# tests), then the local server's pinned ones (every test; the standby for tests/test_standby.py).
# With PGML_TEST_DSN, every test runs in that venv against the server it names instead, and the
# local server is not built (tests that need it are skipped).
ifdef PGML_TEST_DSN
test: newest
	@PYTHONPATH=$(CURDIR) $(NEWEST)/bin/python -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)
else
test: newest up standby
	@$(SERVER) run python3 -m pytest -q tests $(PYTEST_ARGS)
endif

newest:
	@local/newest.sh

bench: up
	@$(SERVER) run python3 bench/run.py $(BENCH_ARGS)

fuzz: up
	@$(SERVER) run python3 tests/fuzz.py --cases $(FUZZ_CASES)

# Install the extension's control file and SQL scripts into a PostgreSQL server (PGXS, sql/Makefile):
#   make install PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
# The Python package goes separately into the Python the server's Multicorn embeds (pip install .).
PG_CONFIG ?= pg_config

install:
	$(MAKE) -C sql install PG_CONFIG=$(PG_CONFIG)

uninstall:
	$(MAKE) -C sql uninstall PG_CONFIG=$(PG_CONFIG)
