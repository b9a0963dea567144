# One interface for people and CI. `make test` builds .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The dev/CI environment is pinned (requirements/dev.lock) so an upstream release cannot
# turn CI red without a change of ours; `make lock` updates the pins deliberately.
LOCK := requirements/dev.lock
OLDEST_VENV ?= .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: install lock test test-fast test-oldest docs docs-serve lint format typecheck check bench bench-cart bench-http bench-outage bench-near bench-herd bench-penetration bench-consistency bench-fanout bench-scaleout loadtest conformance demo clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lock: $(STAMP)  ## re-resolve the pinned dev environment and the oldest-supported one
	$(BIN)/python -m pip install $(PIP_QUIET) uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-header \
		--quiet --upgrade -o $(LOCK)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-header \
		--quiet --upgrade -c requirements/oldest.txt -o requirements/oldest.lock

$(OLDEST_STAMP): pyproject.toml requirements/oldest.lock
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install $(PIP_QUIET) -c requirements/oldest.lock -e '.[dev]'
	touch $(OLDEST_STAMP)

test-oldest: $(OLDEST_STAMP)  ## the suite (scenarios excluded) on the oldest supported redis-py, SQLAlchemy, Starlette
	$(OLDEST_VENV)/bin/python -m pytest -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)

test: $(STAMP)  ## every test, slow scenarios included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## skip the slow scenario tests
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

docs: $(STAMP)  ## the documentation site, into site/ (broken links and references fail)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)  ## the documentation site at http://127.0.0.1:8001, rebuilt on save
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)  ## the hit-path benchmark; see README "Benchmarks"
	$(BIN)/python -m loadtests hitpath $(BENCH_ARGS)

bench-cart: $(STAMP)  ## cart get/add vs a SQL-only cart, and the cost of a session read
	$(BIN)/python -m loadtests cart $(BENCH_ARGS)

bench-http: $(STAMP)  ## the response cache under uvicorn + wrk (apt-get install wrk)
	$(BIN)/python -m loadtests http $(BENCH_ARGS)

bench-outage: $(STAMP)  ## throughput, p99 and DB load before, during and after a Redis kill
	$(BIN)/python -m loadtests outage $(BENCH_ARGS)

bench-near: $(STAMP)  ## a near-cache hit against a Redis GET
	$(BIN)/python -m loadtests near $(BENCH_ARGS)

bench-scaleout: $(STAMP)  ## the near cache on a 3-primary Cluster: hits on/off, invalidation delay
	$(BIN)/python -m loadtests scaleout $(BENCH_ARGS)

bench-herd: $(STAMP)  ## 4 processes x 100 callers on one cold or expired key, commands counted
	$(BIN)/python -m loadtests herd $(BENCH_ARGS)

bench-penetration: $(STAMP)  ## 100,000 distinct absent ids against Bloom gates; contains cost
	$(BIN)/python -m loadtests penetration $(BENCH_ARGS)

bench-consistency: $(STAMP)  ## write paths on PostgreSQL rows in 4 processes (DATABASE_URL)
	$(BIN)/python -m loadtests consistency $(BENCH_ARGS)

bench-fanout: $(STAMP)  ## what a fill costs Redis with 50/100/200 notification listeners
	$(BIN)/python -m loadtests fanout $(BENCH_ARGS)

loadtest: $(STAMP)  ## every load-test scenario, on/off/peer; writes loadtests/results/REPORT.md
	$(BIN)/python -m loadtests $(LOADTEST_ARGS)

demo: $(STAMP)  ## the demo shop; prints its URL (PORT, REDIS_URL, DATABASE_URL, DB_LATENCY_MS, SEED_PRODUCTS)
	$(BIN)/python -m demo_app

clean:
	rm -rf $(VENV) $(OLDEST_VENV) site .mypy_cache .ruff_cache .pytest_cache .hypothesis

conformance: $(STAMP)  ## the response cache on the HTTP caching test suite (node, npm; CACHE_TESTS_DIR)
	$(BIN)/python loadtests/conformance/runner.py $(CONFORMANCE_ARGS)
