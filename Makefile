# One entry point per task; README and .ci/run use exactly these.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test lint pytest cluster-up cluster-down demo bench

## setup: everything a fresh machine lacks (Debian packages, Go-built tools, Python env)
setup:
	bash hack/setup.sh

## test: lint, types, import contracts, then every test (unit, cluster, trainer, exporter)
test: lint pytest

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest:
	$(BIN)/python -m pytest

cluster-up:
	$(PY) hack/localcluster.py up

cluster-down:
	$(PY) hack/localcluster.py down

## demo: the local cluster + the operator + the quickstart job
demo:
	bash hack/demo.sh
