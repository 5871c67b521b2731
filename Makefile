# make train | make test | make test-fast | make bench | make lint | make install | make image
# make dashboard
# Each target installs into .venv first if needed (Python 3.10+ from PATH; PYTHON=... to choose).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test test-fast lint format bench image dashboard clean-logs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-cache-dir --upgrade pip
	$(PY) -m pip install --no-cache-dir -e '.[dev,mlflow]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) train.py experiment=template

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# every test, on every core (pytest-xdist; a module's tests stay on one worker, so its
# fixtures are built once)
test: lint
	$(PY) -m pytest -q -n auto --dist loadscope --no-loadscope-reorder

# the inner loop between edits: everything but the tests marked slow (training runs, sweeps,
# DDP, the HTTP service, the loggers' stores)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n auto

bench: $(STAMP)
	$(PY) benchmarks/run.py

# the HTTP service's container image, cxrlab-serve (podman; CONTAINER_ENGINE=docker for docker),
# built with this machine's pip settings: docs/serving.md#container
image:
	PIP="$(PYTHON) -m pip" bash docker/build.sh -t cxrlab-serve

# optuna-dashboard on the sweeps' studies (the dashboard extra; make install has it), on
# 127.0.0.1 only unless told: make dashboard DASHBOARD_HOST=0.0.0.0 DASHBOARD_PORT=8081
# STORAGE=postgresql://... (docs/sweeps.md)
STORAGE ?= sqlite:///logs/optuna/studies.db
DASHBOARD_HOST ?= 127.0.0.1
DASHBOARD_PORT ?= 8080
dashboard: $(STAMP)
	$(VENV)/bin/optuna-dashboard '$(STORAGE)' --host $(DASHBOARD_HOST) --port $(DASHBOARD_PORT)

clean-logs:
	rm -rf logs/*/
