# Herald: `make run` serves on 127.0.0.1:8080; `make test` installs what the tests
# need (Python packages, SecantusDB, Redis, nginx, Chromium) and runs them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-worker test lint loadtest bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,loadtest]'
	touch $(STAMP)

# The server and, beside it, the example workers serving the dashboard's demos.
run: $(STAMP)
	PY=$(BIN)/python bash scripts/run.sh

# Beside `make run`: the example diagnosis worker (QUEUE=demo for the dashboard's demo).
QUEUE ?= diagnosis
run-worker: $(STAMP)
	$(BIN)/python examples/diagnosis_worker.py --queue $(QUEUE)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core

test: $(STAMP)
	bash scripts/test-services.sh
	$(MAKE) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

loadtest: $(STAMP)
	$(BIN)/python loadtests/run.py floor

bench: $(STAMP)
	$(BIN)/python loadtests/bench.py

clean:
	rm -rf $(VENV) .herald .pytest_cache .mypy_cache .ruff_cache
