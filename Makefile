# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip
CONSTRAINTS := requirements/ci-constraints.txt

.PHONY: venv demo test test-all lint benchmark benchmark-prepare clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/geojepa demo -o demo-output

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# the slow README test also runs the SRAI example: install the 'srai' extra first
test-all: $(STAMP)
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dev,srai]'
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The whole chain on ../shared/data (prepare, split, pretrain on train blocks, evaluate);
# writes reports/benchmark/. About 45 minutes on 2 CPU cores.
benchmark: $(STAMP)
	$(BIN)/python benchmarks/evaluate.py

benchmark-prepare: $(STAMP)
	$(BIN)/python benchmarks/prepare.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
