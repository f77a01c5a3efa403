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

.PHONY: setup study quick plots test chromium test-fast lint typecheck bench bench-packed bench-zoo bench-robustness bench-restore bench-team-scale ui prefect-ui clean

setup: $(VENV)/.installed node_modules/.package-lock.json

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,team]'
	touch $@

# The scripts and styles the plots page and the Data Docs load offline, as pinned in
# package-lock.json (npm's registry; no install scripts run).
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $@

study: setup  ## the whole study: dvc repro (a failed stage stops only what depends on it), then the registry from models/ and the report
	$(BIN)/python -m flows.study

# The quick run is a DVC experiment in a temporary copy of the project: params.yaml, dvc.lock and
# reports/ stay the full study's. Its results: `dvc exp show` (the experiment QUICK_NAME), the
# MLflow runs tagged profile=quick and dvc_experiment=QUICK_NAME, and its reports copied from
# the experiment into reports/quick/QUICK_NAME/ (git-ignored). QUICK_STAGES: a stage and what
# it needs (e.g. tune_mnist) instead of the whole pipeline.
QUICK_NAME := quick-$(shell date -u +%Y%m%d-%H%M%S)
QUICK_STAGES ?=

quick: setup  ## the whole pipeline on the quick profile (minutes on a 2-core CPU), the study left alone
	$(BIN)/dvc exp run --temp --name $(QUICK_NAME) --set-param profile=quick $(QUICK_STAGES)
	@ref=$$(git for-each-ref --format='%(refname)' 'refs/exps/*/*/$(QUICK_NAME)') && \
	  test -n "$$ref" && mkdir -p reports/quick/$(QUICK_NAME) && \
	  git archive "$$ref" reports | tar -x --strip-components=1 \
	    -C reports/quick/$(QUICK_NAME) && \
	  echo "quick run $(QUICK_NAME): reports in reports/quick/$(QUICK_NAME)/ (REPORT.md), dvc exp show"

plots: setup  ## dvc_plots/index.html: the plots of dvc.yaml, drawn offline (Vega copied beside the page)
	$(BIN)/dvc plots show --html-template src/digits/dvc_plots.html
	$(BIN)/python -m digits.web_assets dvc_plots

test: setup chromium postgres lint typecheck  ## lint and types, then every test, the slow end-to-end ones included
	$(BIN)/python -m pytest --durations=20

chromium:  ## Debian's Chromium for the browser test, installed with apt-get when missing (needs root)
	@command -v chromium >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-liberation; } || \
	  echo "Chromium could not be installed: the browser test will be skipped"

postgres:  ## PostgreSQL's server and ip(8) for the team tests, installed with apt-get when missing (needs root)
	@{ ls /usr/lib/postgresql/*/bin/initdb && command -v ip; } >/dev/null 2>&1 || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-15 iproute2; } || \
	  echo "PostgreSQL could not be installed: the team tests will be skipped"

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

bench-zoo: setup  ## zoo throughput and the train_zoo flow against a plain loop; e.g. ARGS="--device cuda --dataset svhn --models lenet5,resnet18"
	$(BIN)/python benchmarks/bench_zoo.py --stage $(ARGS)

bench-robustness: setup  ## what scoring the changed test sets adds to a final fit; e.g. ARGS="--threads 2 --repeats 3"
	$(BIN)/python benchmarks/bench_robustness.py $(ARGS)

bench-restore: setup  ## the registry rebuilt from models/ into a fresh store, each model's time beside its final fit's
	$(BIN)/python benchmarks/bench_registry_restore.py

bench-team-scale: setup  ## the team services past this machine, simulated: 1-32 workers, team vs local, recorders at once; e.g. ARGS="--quick" or "--use-running"
	$(BIN)/python benchmarks/bench_team_scale.py $(ARGS)

bench-packed: setup  ## Table 1 packed vs unpacked vs plain loop; e.g. ARGS="--device cuda" or "--epochs 2 --train-subset 12000"
	$(BIN)/python benchmarks/bench_packed_sweep.py $(ARGS)

# The two UIs, on the loopback by default. `make ui MLFLOW_PORT=5001`; the Prefect port is Prefect's
# own setting, which the flows read too: `PREFECT_SERVER_API_PORT=4201 make prefect-ui study`.
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
PREFECT_SERVER_API_HOST ?= 127.0.0.1
PREFECT_SERVER_API_PORT ?= 4200
export PREFECT_SERVER_API_HOST PREFECT_SERVER_API_PORT
# The project's own Prefect home: settings and the server's database (.prefect/prefect.db).
export PREFECT_HOME ?= $(CURDIR)/.prefect

ui: setup  ## MLflow UI on http://127.0.0.1:5000 (the project's store; GenAI jobs off)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui \
	  --backend-store-uri sqlite:///mlruns/mlflow.db --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers 1

prefect-ui: setup  ## Prefect UI on http://127.0.0.1:4200: the project's server (.prefect/prefect.db), kept up until Ctrl-C
	$(BIN)/python -m digits.edges.project_server ui --home $(PREFECT_HOME) \
	  --host $(PREFECT_SERVER_API_HOST) --port $(PREFECT_SERVER_API_PORT)

# The team services (README: Working as a team), state and secrets in .team/.
# `make team-up ARGS="--host 10.0.0.5 --port-base 4340"` binds them to a host's address.
.PHONY: team-up team-down team-status team-pool-worker postgres
team-up: setup  ## PostgreSQL, the S3 store, MLflow, Prefect and a TLS Dask scheduler, health-checked
	$(BIN)/python -m digits.edges.team up $(ARGS)

team-down: setup  ## stop the team services, in reverse order
	$(BIN)/python -m digits.edges.team down

team-status: setup  ## each team service: up or down, address, pid, memory
	$(BIN)/python -m digits.edges.team status

team-pool-worker: setup  ## deploy the flows (prefect.yaml) and run the team work pool's worker here
	$(BIN)/python -m digits.edges.team pool-worker

clean:
	rm -rf data reports/validation reports/theory reports/mnist
