# pgml_fdw developer commands. Everything runs against the local server (local/server.sh), as root.
SERVER := local/server.sh
PYTEST_ARGS ?=
FUZZ_CASES ?= 20000

.PHONY: up down psql demo test bench fuzz

up:
	@$(SERVER) up

down:
	@$(SERVER) down

psql: up
	@$(SERVER) psql

demo: up
	@$(SERVER) run sh -c 'psql -X -q -e -h 127.0.0.1 -p $$PGML_PORT -U postgres -d pgml -f demo/demo.sql'

test: up
	@$(SERVER) run python3 -m pytest -q tests $(PYTEST_ARGS)

bench: up
	@$(SERVER) run python3 bench/run.py $(BENCH_ARGS)

fuzz: up
	@$(SERVER) run python3 tests/fuzz.py --cases $(FUZZ_CASES)
