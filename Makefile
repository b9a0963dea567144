# One interface for people and CI. `make test` builds .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint format typecheck check bench bench-cart bench-http bench-outage bench-near loadtest conformance demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)  ## every test, slow scenarios included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## skip the slow scenario tests
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

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
	$(BIN)/python loadtests/bench_hitpath.py $(BENCH_ARGS)

bench-cart: $(STAMP)  ## cart get/add vs a SQL-only cart, and the cost of a session read
	$(BIN)/python loadtests/bench_cart.py $(BENCH_ARGS)

bench-http: $(STAMP)  ## the response cache under uvicorn + wrk (apt-get install wrk)
	$(BIN)/python loadtests/bench_response_cache.py $(BENCH_ARGS)

bench-outage: $(STAMP)  ## throughput, p99 and DB load before, during and after a Redis kill
	$(BIN)/python loadtests/bench_outage.py $(BENCH_ARGS)

bench-near: $(STAMP)  ## a near-cache hit against a Redis GET
	$(BIN)/python loadtests/bench_near.py $(BENCH_ARGS)

loadtest: $(STAMP)  ## every load-test scenario, on/off/peer; writes loadtests/results/REPORT.md
	$(BIN)/python -m loadtests $(LOADTEST_ARGS)

demo: $(STAMP)  ## the demo shop; prints its URL (PORT, REDIS_URL, DATABASE_URL, DB_LATENCY_MS, SEED_PRODUCTS)
	$(BIN)/python -m demo_app

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

conformance: $(STAMP)  ## the response cache on the HTTP caching test suite (node, npm; CACHE_TESTS_DIR)
	$(BIN)/python loadtests/conformance/runner.py $(CONFORMANCE_ARGS)
