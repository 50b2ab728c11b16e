# defectloop: `make demo` runs the closed-loop demo, `make test` runs the tests.
# Both set everything up first (idempotent): uv, the workspace venv, Java/Maven/PostgreSQL,
# Kafka's jars, Label Studio in its own virtualenv.

SHELL := /bin/bash
UV := $(shell scripts/ensure-uv.sh)
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint schemas up down clean help

help:
	@echo "make demo   - set up, start Kafka + the five services, run the demo"
	@echo "make test   - set up, lint, and run every test (unit, integration on real Kafka, slow)"
	@echo "make setup  - only install (uv, .venv from uv.lock, Java/Maven/PostgreSQL, Kafka jars, Label Studio)"

setup:
	@scripts/ensure-system-deps.sh
	@$(UV) sync --all-packages --frozen --quiet
	@scripts/install-labelstudio.sh >/dev/null
	@$(PY) -c "from defectloop.cli.kafka_local import ensure_jars; print('kafka jars:', ensure_jars())"

demo: setup
	.venv/bin/defectloop demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy  # strict, every package: [tool.mypy] in pyproject.toml
	$(PY) scripts/check_deps.py  # each pyproject declares exactly what it imports (deptry + members)
	$(PY) -m defectloop.common.schemas --check
	.venv/bin/lint-imports  # the rooms and their doors: .importlinter, docs/architecture.md

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

schemas: setup
	$(PY) -m defectloop.common.schemas

up: setup
	.venv/bin/defectloop up

down:
	.venv/bin/defectloop down

clean: down
	rm -rf .defectloop
