# Everything runs from the project's own virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install system-deps test demo worker flower beat bench lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

system-deps:
	@scripts/system-deps.sh

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python scripts/demo.py

worker: install
	$(BIN)/celery -A worker worker -Q high,normal --loglevel=INFO

flower: install
	$(BIN)/celery -A worker flower

beat: install
	@mkdir -p var
	$(BIN)/celery -A worker beat --loglevel=INFO

bench: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
