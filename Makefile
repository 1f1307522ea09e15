# One entry point per task; README and .ci/run use exactly these.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run check test lint pytest cluster-up cluster-down demo demo-real-node images bench \
	dashboards dashboard-previews

## setup: everything a fresh machine lacks (Debian packages, Go-built tools, Python env)
setup:
	bash hack/setup.sh

## run: the main job here: the Python env if missing (seconds when present), then
## `trainop run` (the built-in quickstart; ARGS="examples/x.yaml --kill-every-steps 20")
run:
	bash hack/setup.sh python
	$(BIN)/trainop run $(ARGS)

## test: whatever is missing (make setup), then lint and every test; what .ci/run runs
test: setup
	$(MAKE) --no-print-directory check

## check: lint, types, import contracts, then every test (unit, cluster, trainer, exporter)
check: lint pytest

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

## demo: the local cluster + the operator + the quickstart job (kwok: scheduled, not run)
demo:
	bash hack/demo.sh

## demo-real-node: the same on a real node: images built, helm install, the quickstart trains
demo-real-node:
	bash hack/demo.sh --real-node

## images: both images with buildah (no daemon), on stand-in bases where the official ones cannot be pulled
images:
	bash hack/images.sh build

## dashboards: the chart's Grafana dashboards (charts/trainop/dashboards/*.json) from operator/trainop/dashboards
dashboards:
	$(BIN)/python -m trainop.dashboards

## dashboard-previews: docs/dashboards/*.png, each dashboard drawn from a live Prometheus
## (the real operator on the local control plane, real metrics sidecars, real Prometheus)
dashboard-previews:
	TRAINOP_DASHBOARD_PREVIEWS=$(CURDIR)/docs/dashboards $(BIN)/python -m pytest -q \
		tests/chart/test_panels_live.py
