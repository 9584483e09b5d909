# Herald: `make run` serves on 127.0.0.1:8080; `make test` installs what the tests
# need (Python packages, SecantusDB, Redis, nginx, Chromium) and runs them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What `make run` needs (Herald itself, editable: the server, client, worker SDK, the
# example workers and the `herald` command) and, on top, what `make test` needs (the
# [test] and [loadtest] extras: pytest, playwright, ruff, mypy, SecantusDB, Locust).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-test

.PHONY: run run-worker test soak lint loadtest bench bench-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUN_STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install -q -e '.[test,loadtest]'
	touch $(STAMP)

# The server and, beside it, the example workers serving the dashboard's demos.
run: $(RUN_STAMP)
	PY=$(BIN)/python bash scripts/run.sh

# Beside `make run`: the example diagnosis worker (QUEUE=demo for the dashboard's demo).
QUEUE ?= diagnosis
run-worker: $(RUN_STAMP)
	$(BIN)/herald worker --queue $(QUEUE) examples.diagnosis_worker

# Type-checks everything that ships: the server, the Python client and the worker SDK
# (check_untyped_defs, setup.cfg), and the domain core with --strict.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict core
	$(BIN)/mypy core transports handlers server.py herald_cli.py client worker

# Line coverage of the server code is printed at the end; under 85 % (setup.cfg's
# [coverage:report] fail_under) the run fails.
test: $(STAMP)
	bash scripts/test-services.sh
	$(MAKE) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not soak" --cov --cov-report=term

# About 10 minutes of reconnecting subscribers and publishers against server.py: a second
# churn must leave RSS where the first left it, once what the server keeps on purpose
# has passed its horizon (tests/test_hostile_soak.py; figures in docs/performance.md).
soak: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m soak -s

loadtest: $(STAMP)
	$(BIN)/python loadtests/run.py floor

bench: $(STAMP)
	$(BIN)/python loadtests/bench.py

# The benchmark regression gate (about a minute, two quiet cores): ws, sse and lp at
# 1,000, Herald's ratios to plain Tornado against loadtests/bench-baseline.json; exits
# non-zero when one is more than 25 % worse. Not part of `make test`: CI is too noisy.
bench-check: $(STAMP)
	$(BIN)/python loadtests/bench.py --check

clean:
	rm -rf $(VENV) .herald .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
