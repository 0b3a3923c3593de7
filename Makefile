# KAP-TRD-01 data platform. `make demo` and `make test` do all the set-up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
DEMO_INBOX ?= demo/inbox
WAREHOUSE ?= warehouse
PARTICIPANTS ?= 30
# The demo's unblinded key: a demo value, said so when used. A real trial's key lives in a secret store.
DEMO_KEY ?= demo-key-not-secret

# Offline hygiene: no telemetry, Prefect's home inside the project, patient server start-up.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export UV_COMPILE_BYTECODE := 1
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

.PHONY: env demo test lint bench clean-demo server server-stop

env: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv sync --frozen --python $(BIN)/python
	@touch $@

demo: env
	$(BIN)/kaptrial generate --out $(DEMO_INBOX) --participants-per-site $(PARTICIPANTS)
	@test -n "$$KAP_UNBLINDED_KEY" || echo "Using the demo unblinded key KAP_UNBLINDED_KEY=$(DEMO_KEY) (not a secret)."
	KAP_UNBLINDED_KEY="$${KAP_UNBLINDED_KEY:-$(DEMO_KEY)}" $(BIN)/kaptrial ingest --inbox $(DEMO_INBOX) --warehouse $(WAREHOUSE)
	@echo "Next: $(BIN)/kaptrial status --warehouse $(WAREHOUSE)"

# A local Prefect server (127.0.0.1, PREFECT_PORT or 4200) and a process worker in the
# background, with the deployments of prefect.yaml for this checkout's inbox and warehouse.
server: env
	@test -n "$$KAP_UNBLINDED_KEY" || echo "Using the demo unblinded key KAP_UNBLINDED_KEY=$(DEMO_KEY) (not a secret)."
	KAP_UNBLINDED_KEY="$${KAP_UNBLINDED_KEY:-$(DEMO_KEY)}" KAP_INBOX="$${KAP_INBOX:-$(CURDIR)/$(DEMO_INBOX)}" \
		KAP_WAREHOUSE="$${KAP_WAREHOUSE:-$(CURDIR)/$(WAREHOUSE)}" $(BIN)/python -m flows.server start

server-stop: env
	$(BIN)/python -m flows.server stop

test: env
	$(BIN)/python -m pytest -q

lint: env
	$(BIN)/ruff check flows schemas tests bench

bench: env
	$(BIN)/python bench/run.py

clean-demo:
	rm -rf demo
