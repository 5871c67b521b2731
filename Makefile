# make train | make test | make test-fast | make bench | make lint | make install | make image
# Each target installs into .venv first if needed (Python 3.10+ from PATH; PYTHON=... to choose).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test test-fast lint format bench image clean-logs

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

clean-logs:
	rm -rf logs/*/
