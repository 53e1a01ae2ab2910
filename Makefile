# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# The store's home and the Dagster instance beside it, as the CLI resolves them. Passed to
# `dagster` commands only: tests make their own homes and instances.
EXPORT_PIPELINE_HOME ?= .export_pipeline
DAGSTER_HOME ?= $(abspath $(EXPORT_PIPELINE_HOME))/dagster
DEV_PORT ?= 3000

.PHONY: install instance demo dev validate test test-quick test-ui bench lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The bundled pip backtracks for minutes over the Dagster family; a current one does not.
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/export-pipeline demo

# The Dagster UI on http://127.0.0.1:$(DEV_PORT), with the demo collection in place.
dev: $(STAMP)
	$(BIN)/export-pipeline demo > /dev/null
	DAGSTER_HOME="$(DAGSTER_HOME)" $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DEV_PORT)

# The instance folder, with this repository's dagster.yaml unless it has its own (made as the
# CLI makes it: the template with the folder's path written in).
instance: $(STAMP)
	DAGSTER_HOME="$(DAGSTER_HOME)" $(BIN)/python -c "from export_pipeline.orchestration.launch import local_instance; from export_pipeline.settings import Settings; local_instance(Settings())"

validate: $(STAMP) instance
	DAGSTER_HOME="$(DAGSTER_HOME)" $(BIN)/dagster definitions validate -w workspace.yaml

# Includes the launchpad's browser test (tests/ui), which needs Debian's chromium package.
# Whole files per worker (--dist loadfile): a module's server or pool starts once.
test: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile -p no:cacheprovider

# Quick feedback: no servers (moto, PostgreSQL, Redis), no case of about a second or more.
# Tests spread one by one (--dist load): the few module fixtures are cheap here.
test-quick: $(STAMP)
	$(BIN)/pytest -n 2 -m "not slow" -p no:cacheprovider

# Only that browser test: `dagster dev` over a fresh demo, driven in headless Chromium.
test-ui: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider -m ui tests/ui

# Ours against a hand-written DuckDB COPY, 1M docs x 384 dims; options: `python -m benchmarks -h`.
# Then messy collections (100k distinct keys, 32 levels) against tidy twins of the same bytes.
bench: $(STAMP)
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.messy

# ruff over the repository, then mypy over export_pipeline/ ([tool.mypy] in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .export_pipeline build
