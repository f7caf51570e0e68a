# The two commands a new user needs: `make serve` and `make test`.
# Each target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# test files run on this many processes (pytest-xdist); 0 runs them in pytest itself
TEST_WORKERS ?= 2

.PHONY: serve test test-fast lint fmt bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/gantry serve $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-fast: $(VENV)/.installed-dev
	$(BIN)/pytest -q -m "not slow" $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/sim_scale.py
	$(BIN)/python benchmarks/sim_timing.py
	$(BIN)/python benchmarks/sim_fidelity.py
	$(BIN)/python benchmarks/gateway_overhead.py
	$(BIN)/python benchmarks/bench_client.py
	$(BIN)/python benchmarks/admission_overhead.py
	$(BIN)/python benchmarks/admission_auth.py
	$(BIN)/python benchmarks/chaos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
