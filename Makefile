# Everything runs from the project's own virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Settings come from the environment; a .env in this checkout is read when present.
# (The installed package never reads a .env from the working directory.)
ifneq ($(wildcard .env),)
export EMAILQ_ENV_FILE ?= $(CURDIR)/.env
endif

.PHONY: install system-deps test faults demo worker flower beat bench lint

install: $(VENV)/.installed

# Re-run when the system packages change too: a checkout installed before keeps up.
$(VENV)/.installed: pyproject.toml scripts/system-deps.sh
	@scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

system-deps:
	@scripts/system-deps.sh

test: install
	$(BIN)/ruff check .  # includes the rule against bare config/core/producer/worker imports
	$(BIN)/python -m pytest

# The fault suite's long form (bigger batches, longer outages; 4.5 min on 2 cores, plus the
# Hypothesis test of tests/faults/test_hostile_input.py). `make test`
# runs its short form. Each test prints a FAULT line: the figures in docs/RELIABILITY.md.
faults: install
	FAULTS_LONG=1 $(BIN)/python -m pytest tests/faults -v -s

demo: install
	$(BIN)/python scripts/demo.py

# One Celery worker process per core, threads in each, sharing SMTP_MAX_CONNECTIONS
# (emailq.worker.supervisor): the layout benchmarks/RESULTS.md measures fastest.
worker: install
	$(BIN)/emailq worker -Q high,normal --loglevel=INFO

flower: install
	$(BIN)/celery -A emailq.worker flower

beat: install
	$(BIN)/celery -A emailq.worker beat --loglevel=INFO

bench: install
	@scripts/bench-deps.sh  # Postfix, for the run against a real MTA
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
