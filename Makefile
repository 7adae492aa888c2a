# The few commands everyone types. Each one makes the virtual environment it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test check lint format bench clean

run: $(VENV)/.installed-run  ## serve on SQLite at ./data/ (no configuration needed)
	SHUTDOWN_GRACE_SECONDS=$${SHUTDOWN_GRACE_SECONDS:-0} $(BIN)/python -m service

test: $(VENV)/.installed-test  ## the whole test suite (PostgreSQL too when TEST_DATABASE_URL is set)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: lint  ## the quick loop: lint, then the tests that need nothing but SQLite (no servers, no image)
	env -u TEST_DATABASE_URL -u REQUIRE_POSTGRES $(BIN)/python -m pytest -q -m "not slow" -rfE --durations=10 $(PYTEST_ARGS)

lint: $(VENV)/.installed-test  ## ruff and mypy, as CI runs them
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/mypy

bench: $(VENV)/.installed-bench  ## both databases, every scenario, beside the limit app (BENCH_ARGS=...)
	$(BIN)/python -m service bench $(BENCH_ARGS)

format: $(VENV)/.installed-test
	$(BIN)/ruff format service tests bench
	$(BIN)/ruff check --fix service tests bench

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (set PYTHON=python3.x)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-bench: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed-run

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
