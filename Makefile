# The commands the README gives. `make study` and `make test` each set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# DVC stages call `digits` and `python`: the ones in the virtual environment.
export PATH := $(abspath $(BIN)):$(PATH)
# Prefect: no telemetry (its writes race the temporary server's SQLite into "database is locked").
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# The shared data mirror beside the repository, when there is one (see README: Data sources).
ifneq ($(wildcard ../shared/data/mnist),)
export DIGITS_DATA_MIRRORS ?= $(abspath ../shared/data)
endif

.PHONY: setup study quick test test-fast lint typecheck bench bench-packed ui prefect-ui clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

study: setup  ## the whole study on params.yaml (dvc repro; a failed stage stops only what depends on it)
	$(BIN)/dvc repro --keep-going

quick: setup  ## the whole pipeline on the quick profile (minutes on a 2-core CPU)
	$(BIN)/dvc exp run -S profile=quick

test: setup lint typecheck  ## lint and types, then every test, the slow end-to-end ones included
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src flows tests benchmarks
	$(BIN)/ruff format --check src flows tests benchmarks

typecheck: setup
	$(BIN)/mypy src

bench: setup  ## orchestration cost alone, then the sweep: flow against a plain PyTorch loop
	$(BIN)/python benchmarks/bench_orchestration.py
	$(BIN)/python benchmarks/bench_tune_mnist.py

bench-packed: setup  ## Table 1 packed vs unpacked vs plain loop; e.g. ARGS="--device cuda" or "--epochs 2 --train-subset 12000"
	$(BIN)/python benchmarks/bench_packed_sweep.py $(ARGS)

ui: setup  ## MLflow UI on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1

prefect-ui: setup  ## Prefect UI on http://127.0.0.1:4200; flows report to it when PREFECT_API_URL is set
	$(BIN)/prefect server start --host 127.0.0.1

clean:
	rm -rf data reports/validation reports/theory reports/mnist
