# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv itself,
# from the lock file of the running Python (requirements/ci-py311.lock for Python 3.11):
# exact versions with hashes, so every machine tests the same environment. Users' installs
# (`pip install geojepa`) float within pyproject.toml's ranges; `make test-latest` runs the
# suite against those floating versions on purpose, `make lock` re-resolves the lock.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip
PYVER  := $(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
LOCK   := requirements/ci-py$(PYVER).lock
# uv resolves the lock (pinned here; pip-tools would do, uv is faster and can --exclude-newer)
UV_VERSION := 0.13.9

.PHONY: venv demo test test-all test-latest lock lint benchmark benchmark-full benchmark-prepare clean

$(STAMP): pyproject.toml $(LOCK)
	@test -f $(LOCK) || { echo "no lock file for Python $(PYVER): run 'make lock' (needs PyPI)"; exit 2; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes --no-deps -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) check
	touch $(STAMP)

$(LOCK):
	@echo "no lock file for Python $(PYVER) ($(LOCK)): run 'make lock' (needs PyPI)"; exit 2

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/geojepa demo -o demo-output

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# the slow README test also runs the SRAI example: install the 'srai' extra first (floating)
test-all: $(STAMP)
	$(PIP) install -q -e '.[dev,srai]'
	$(BIN)/python -m pytest -q -m ''

# The suite against the newest releases pyproject.toml allows (torch stays the CPU build):
# drift seen on purpose, never in CI. A failure here that `make test` does not show is a
# dependency release that changed something: find it, then `make lock`.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q torch==2.13.0
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager \
	    -c requirements/torch-cpu.txt -e '.[dev]'
	.venv-latest/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip==' > .venv-latest/freeze.txt
	@# the runtime set only: the build backend (setuptools, wheel) is pinned for the lock's install
	@diff <(grep '==' $(LOCK) | sed 's/ .*//; s/+cpu//' | tr A-Z_ a-z- | grep -vE '^(setuptools|wheel)==' | sort) \
	      <(grep '==' .venv-latest/freeze.txt | sed 's/+cpu//' | tr A-Z_ a-z- | grep -vE '^(setuptools|wheel)==' | sort) \
	      | grep '^[<>]' || echo "floating versions equal the lock"
	.venv-latest/bin/ruff check src tests benchmarks
	.venv-latest/bin/python -m pytest -q

# Re-resolve the lock of this Python from pyproject.toml (dev extra) and the build backend,
# with hashes; torch is the CPU build that pip finds on this machine's disk (/opt/wheels).
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q uv==$(UV_VERSION)
	.venv-lock/bin/uv pip compile pyproject.toml requirements/build.in --extra dev \
	    --constraint requirements/torch-cpu.txt --find-links /opt/wheels \
	    --python-version $(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")') \
	    --generate-hashes --quiet --custom-compile-command "make lock" -o $(LOCK)
	@echo "wrote $(LOCK): review the diff, then run make test"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The whole chain on ../shared/data (prepare, split, pretrain on train blocks + corpus, evaluate
# against every rival) without the supervised upper line; writes reports/benchmark/.
# benchmark-full adds the supervised transformer (~2/3 of the evaluation's time); the committed
# report is benchmark-full's. benchmark: 34.4 min measured on 2 CPU cores beside other work
# (2026-12-07; README); benchmark-full: ~52 min measured so.
BENCHMARK_RIVALS = dummy,tag_counts,pooled_text,random_init
benchmark: $(STAMP)
	$(BIN)/python benchmarks/evaluate.py --baselines $(BENCHMARK_RIVALS)

benchmark-full: $(STAMP)
	$(BIN)/python benchmarks/evaluate.py

benchmark-prepare: $(STAMP)
	$(BIN)/python benchmarks/prepare.py

clean:
	rm -rf $(VENV) .venv-latest .venv-lock demo-output .pytest_cache
