# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint typecheck migrate worker web clean bench lock

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever the pins change. requirements.lock pins what a
# deployment installs; requirements-dev.lock pins that plus the test and lint
# tools (the same versions), and is what a checkout installs.
$(VENV)/.installed: pyproject.toml requirements.lock requirements-dev.lock | $(BIN)/activate
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.lock
	touch $@

install: $(VENV)/.installed

# The embedded demo: SQLite, in-memory channel layer, evaluation in-process.
run: install
	DEBUG=1 $(PY) manage.py migrate --noinput
	DEBUG=1 $(PY) manage.py seed_demo
	DEBUG=1 $(PY) manage.py collectstatic --noinput --verbosity 0
	@echo "Serving on http://$(HOST):$(PORT)/  (Ctrl-C to stop)"
	DEBUG=1 $(PY) manage.py runserver $(HOST):$(PORT)

# On CI (CI=true) the services are started and Chromium installed when
# missing, and the whole suite runs on PostgreSQL; the tests that need a
# service then fail instead of skipping.
CI_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/accolade

test: install lint typecheck
	@if [ "$$CI" = "true" ]; then \
		bash .ci/services.sh && \
		DATABASE_URL="$${DATABASE_URL:-$(CI_DATABASE_URL)}" $(BIN)/pytest; \
	else \
		$(BIN)/pytest; \
	fi

# After changing pyproject.toml's dependencies: pin what they need, keeping
# every pin that still fits (add --upgrade to move them on).
LOCK := $(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links
lock: install
	$(LOCK) --output-file requirements.lock pyproject.toml
	$(LOCK) --extra dev --constraint requirements.lock --output-file requirements-dev.lock pyproject.toml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy .

# The performance suite (not part of `make test`): each script starts what it
# needs on PostgreSQL and Redis, prints a table and writes bench/results-*.json;
# bench/collect.py gathers them into bench/results.json with the machine.
bench: install
	bash .ci/services.sh --bench
	$(PY) bench/request_cost.py
	$(PY) bench/ingestion.py
	$(PY) bench/ingestion.py --handlers
	$(PY) bench/throughput.py
	$(PY) bench/connections.py
	$(PY) bench/latency.py
	$(PY) bench/evaluation.py
	$(PY) bench/holding.py
	$(PY) bench/reports.py
	$(PY) bench/replay.py
	$(PY) bench/reevaluation_impact.py
	$(PY) bench/webhooks.py
	$(PY) bench/stream.py
	$(PY) bench/feed.py
	$(PY) bench/collect.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
