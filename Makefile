# Quick start: `make serve` (service deps only, serves models/default on :8000)
#              `make test`  (training + dev deps, system tools, the whole test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: serve test setup-serve setup-dev system-deps default-model lint ui-screenshot bench-service bench-scaleout bench-peers clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[train,dev]'
	touch $@ $(VENV)/.serve-installed

setup-serve: $(VENV)/.serve-installed  ## the service's run-time dependencies (no torch)
setup-dev: $(VENV)/.dev-installed      ## training, export and test dependencies

system-deps:                           ## prometheus, promtool, docker-compose, nginx, chromium (Debian)
	bash scripts/install-system-deps.sh

serve: setup-serve                     ## serve models/default on http://127.0.0.1:8000
	$(PY) -m service

test: setup-dev system-deps            ## the whole test suite
	$(PY) -m pytest

lint: setup-dev                        ## ruff on everything, mypy --strict on service + oltr_contract
	$(PY) -m ruff check oltr_contract training service tests benchmarks docker
	$(PY) -m ruff format --check oltr_contract training service tests benchmarks docker
	$(PY) -m mypy

default-model: setup-dev               ## retrain and re-export the committed default model
	rm -rf runs/default-model
	$(PY) -m training.fit --run-dir runs/default-model export.out=models/default

ui-screenshot: setup-dev system-deps  ## the README's picture of the page, from the browser test
	$(PY) -m pytest -q tests/test_ui.py -k try_it_shows_a_photo_and_a_digit
	cp tests/artifacts/ui/try-it.png docs/img/ui-try-it.png

bench-service: setup-dev
	$(PY) benchmarks/bench_service.py

bench-scaleout: setup-dev system-deps  ## two replicas behind nginx vs one (needs nginx)
	$(PY) benchmarks/bench_scaleout.py

bench-peers: setup-dev                 ## beside ../shared/benchmarks/peers: PEERS_PYTHON=their venv's python
	$(PY) benchmarks/bench_side_by_side.py --peers-python $(PEERS_PYTHON)

clean:
	rm -rf $(VENV) runs .pytest_cache
