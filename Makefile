# txmetrics: every target bootstraps what it needs (venv, Azurite from npm, PostgreSQL).
# Only Python 3.11, Node.js (npm) and make are assumed on the machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STACK ?= dev
PYTEST_ARGS ?=

.PHONY: setup test run bench lint up down migrate clean preview deploy bundle help

help:
	@echo "make run      ingest synthetic payment events through the function against local emulators"
	@echo "make test     the whole test suite against Azurite and a real PostgreSQL"
	@echo "make bench    ingest throughput benchmark (writes benchmarks/results/)"
	@echo "make lint     ruff + mypy (strict, on the core package)"
	@echo "make up|down  start/stop persistent local emulators (.local/); make migrate applies the schema"
	@echo "make preview|deploy STACK=dev   pulumi preview / up (needs the Pulumi CLI and an Azure login)"
	@echo "make clean    remove the venv, node_modules, local data and caches"

setup: $(STAMP) node_modules/.package-lock.json

$(STAMP): requirements-dev.txt functions/requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || \
	  { echo "txmetrics: Python 3.11 is required (found $$($(PYTHON) --version 2>&1)); install python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

node_modules/.package-lock.json: package.json package-lock.json
	@if [ -n "$$AZURE_STORAGE_CONNECTION_STRING" ]; then mkdir -p node_modules && touch $@; exit 0; fi; \
	command -v npm >/dev/null 2>&1 || { echo "txmetrics: Node.js and npm are required for the Azurite storage emulator: install Node.js 18+ (e.g. apt-get install nodejs npm), or set AZURE_STORAGE_CONNECTION_STRING to use an existing storage account"; exit 1; }; \
	npm ci --no-audit --no-fund --loglevel=error

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

run: setup
	$(VENV)/bin/txmetrics run $(RUN_ARGS)

bench: setup
	$(PY) -m localdev.bench $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check functions localdev txmetrics_cli infra lifecycle tests
	$(VENV)/bin/mypy

up: setup
	$(VENV)/bin/txmetrics up

down: setup
	$(VENV)/bin/txmetrics down

migrate: setup
	$(VENV)/bin/txmetrics migrate

bundle: setup
	$(PY) -m infra.bundle --out dist/function.zip

preview deploy: setup
	@command -v pulumi >/dev/null 2>&1 || { echo "txmetrics: the Pulumi CLI is not installed: see https://www.pulumi.com/docs/install/ (then pulumi login)"; exit 1; }
	@command -v az >/dev/null 2>&1 && az account show >/dev/null 2>&1 || { echo "txmetrics: no Azure login: install the Azure CLI and run 'az login' (or set ARM_CLIENT_ID/ARM_CLIENT_SECRET/ARM_TENANT_ID/ARM_SUBSCRIPTION_ID)"; exit 1; }
	@pulumi stack select $(STACK) >/dev/null 2>&1 || { echo "txmetrics: no Pulumi stack '$(STACK)': run 'pulumi stack init $(STACK)' (see README, Deployment)"; exit 1; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" pulumi $(if $(filter deploy,$@),up,preview) --stack $(STACK)

clean:
	-$(VENV)/bin/txmetrics down 2>/dev/null
	rm -rf $(VENV) node_modules .local dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
