# txmetrics: every target bootstraps what it needs (venv, Azurite from npm, PostgreSQL).
# Only Python 3.11, Node.js (npm) and make are assumed on the machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STACK ?= dev
PYTEST_ARGS ?=

.PHONY: help setup browser test run bench lint up down status migrate bundle preview deploy clean

# `make help` lists every target that has a "## " comment on its rule line (tests/test_makefile.py
# checks that every target has one).
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z -]*:.*## / {printf "make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(STAMP) node_modules/.package-lock.json ## the virtual environment (.venv/) and Azurite (node_modules/), once

# The setup steps write their output to stderr (>&2): `eval "$(make -s up)"` on a fresh clone
# runs them first, and its stdout must hold only the export lines (npm's "added 453 packages"
# was run as a command). tests/test_makefile.py checks it.
$(STAMP): requirements-dev.txt functions/requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || \
	  { echo "txmetrics: Python 3.11 is required (found $$($(PYTHON) --version 2>&1)); install python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) >&2
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt >&2
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e . >&2
	@touch $@

node_modules/.package-lock.json: package.json package-lock.json
	@if [ -n "$$AZURE_STORAGE_CONNECTION_STRING" ]; then mkdir -p node_modules && touch $@; exit 0; fi; \
	command -v npm >/dev/null 2>&1 || { echo "txmetrics: Node.js and npm are required for the Azurite storage emulator: install Node.js 18+ (e.g. apt-get install nodejs npm), or set AZURE_STORAGE_CONNECTION_STRING to use an existing storage account" >&2; exit 1; }; \
	npm ci --no-audit --no-fund --loglevel=error >&2

# Debian's chromium for the report's browser test (Playwright's own browser download cannot work
# here). Installed with apt-get when missing and root; otherwise this says how, and the browser
# test then fails with the same message (it never skips).
browser: setup ## Chromium for the report's browser test (apt-get install chromium when missing, as root)
	@$(PY) -m localdev.browser --ensure

test: setup browser ## the whole suite against Azurite and a real PostgreSQL (PYTEST_ARGS="tests/test_x.py -q")
	$(PY) -m pytest $(PYTEST_ARGS)

# Ctrl-C: only txmetrics reports it (one line). The shell ignores SIGINT so that it waits
# for txmetrics, which handles it (stops its workers and the services it started) and exits
# 130; that exit is made 0 so that make adds no "Error 130" line of its own (make, which
# got the same SIGINT, then ends itself by it: the caller still sees an interruption).
run: setup ## synthetic payment events through the function, against the local services (RUN_ARGS="--events 200000")
	@trap '' INT; $(VENV)/bin/txmetrics run $(RUN_ARGS); status=$$?; [ $$status -eq 130 ] && exit 0; exit $$status

bench: setup ## ingest throughput benchmark (writes benchmarks/results/; BENCH_ARGS=...)
	$(PY) -m localdev.bench $(BENCH_ARGS)

lint: setup ## ruff + mypy (strict)
	$(VENV)/bin/ruff check functions localdev txmetrics_cli infra lifecycle tests
	$(VENV)/bin/mypy

up: setup ## start the local services under .local/ and print their settings: eval "$(make -s up)"
	@$(VENV)/bin/txmetrics up

down: setup ## stop the local services (data stays under .local/)
	@$(VENV)/bin/txmetrics down

status: setup ## what runs where (the local services, and what the commands use)
	@$(VENV)/bin/txmetrics status

migrate: setup ## apply the schema migrations (DATABASE_URL, else the local services)
	@$(VENV)/bin/txmetrics migrate

bundle: setup ## build the function's deployment zip (dist/function.zip)
	$(PY) -m infra.bundle --out dist/function.zip

# Azure credentials: a service principal in ARM_CLIENT_ID / ARM_CLIENT_SECRET / ARM_TENANT_ID /
# ARM_SUBSCRIPTION_ID (as the azure-native provider reads them, see
# https://www.pulumi.com/registry/packages/azure-native/installation-configuration/; also
# OIDC or managed identity: ARM_USE_OIDC / ARM_USE_MSI), or an `az login`. The deploy-time
# steps that call Azure from Python (infra/providers.py, DefaultAzureCredential) read
# AZURE_CLIENT_ID / AZURE_CLIENT_SECRET / AZURE_TENANT_ID: they get the ARM_* values when unset.
preview deploy: setup ## pulumi preview / up for STACK=dev (Pulumi CLI; az login or ARM_* service principal)
	@command -v pulumi >/dev/null 2>&1 || { echo "txmetrics: the Pulumi CLI is not installed: see https://www.pulumi.com/docs/install/ (then pulumi login)"; exit 1; }
	@sp="ARM_CLIENT_ID ARM_CLIENT_SECRET ARM_TENANT_ID ARM_SUBSCRIPTION_ID"; missing=""; given=""; \
	for v in $$sp; do if [ -n "$${!v}" ]; then given=1; else missing="$$missing $$v"; fi; done; \
	if [ "$$ARM_USE_OIDC" = true ] || [ "$$ARM_USE_MSI" = true ]; then :; \
	elif [ -z "$$missing" ] || [ "$$missing" = " ARM_CLIENT_SECRET" -a -n "$$ARM_CLIENT_CERTIFICATE_PATH" ]; then :; \
	elif [ -n "$$given" ]; then echo "txmetrics: incomplete service principal: set also$$missing"; exit 1; \
	elif command -v az >/dev/null 2>&1 && az account show >/dev/null 2>&1; then :; \
	else echo "txmetrics: no Azure credentials: run 'az login', or set ARM_CLIENT_ID, ARM_CLIENT_SECRET, ARM_TENANT_ID and ARM_SUBSCRIPTION_ID (a service principal)"; exit 1; fi
	@pulumi stack select $(STACK) >/dev/null 2>&1 || { echo "txmetrics: no Pulumi stack '$(STACK)': run 'pulumi stack init $(STACK)' (see README, Deployment)"; exit 1; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
	  AZURE_CLIENT_ID="$${AZURE_CLIENT_ID:-$$ARM_CLIENT_ID}" AZURE_CLIENT_SECRET="$${AZURE_CLIENT_SECRET:-$$ARM_CLIENT_SECRET}" \
	  AZURE_TENANT_ID="$${AZURE_TENANT_ID:-$$ARM_TENANT_ID}" \
	  pulumi $(if $(filter deploy,$@),up,preview) --stack $(STACK)

clean: ## stop the local services; remove the venv, node_modules, local data, bundles, build metadata, caches
	-$(VENV)/bin/txmetrics down 2>/dev/null
	rm -rf $(VENV) node_modules .local dist .bundle build *.egg-info functions/*.egg-info \
	  .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
