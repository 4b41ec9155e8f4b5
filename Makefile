# The two commands of the README:
#   make run    install, then run a small study on the embedded default (Optuna, in-process);
#               each run writes a new folder runs/digits-<time>, so earlier results are kept
#   make test   install, then run every test (slow and cluster ones included), as CI does
# `make test-fast` runs the quick default selection while developing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build that lies on this machine's disk; set TORCH=torch for your platform's default build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

RUN_OUT ?= runs/digits-$(shell date +%Y%m%d-%H%M%S)

run: $(STAMP)
	$(VENV)/bin/bstune run examples/digits_mlp.py --space search_spaces/mlp_classifier.yaml \
		--trials 20 --budget-samples 30000 --out $(RUN_OUT)

test: $(STAMP)
	$(PY) -m ruff check bstune tests examples benchmarks
	$(PY) -m mypy
	$(PY) -m pytest -m "" -q

test-fast: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check bstune tests examples benchmarks
	$(PY) -m ruff format --check bstune tests examples benchmarks

typecheck: $(STAMP)
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/noise_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
