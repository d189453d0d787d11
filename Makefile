# accelrl developer commands. `make demo` and `make test` set everything up on first use.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Interpreter used to create the venv: python3.11 when present, else python3.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.accelrl-install.stamp

# CPU torch wheel, installed before the package so pip never resolves a CUDA build.
TORCH_VERSION ?= 2.13.0
# Where pip takes torch from: empty = pip's default (here a CPU wheel; elsewhere PyPI's build
# for the platform). CPU-only anywhere: TORCH_INDEX=https://download.pytorch.org/whl/cpu;
# CUDA 12.8: TORCH_INDEX=https://download.pytorch.org/whl/cu128.
TORCH_INDEX   ?=
EXTRAS        ?= dev,deploy,surrogates,xopt,dashboard,tensorboard,cluster
PYTEST_ARGS   ?=

# One BLAS/OpenMP thread per process (pytest-xdist runs 2 workers).
THREADS_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

.PHONY: help venv test demo lint bench clean distclean

help:
	@echo "make venv       create $(VENV) and install accelrl[$(EXTRAS)] (torch==$(TORCH_VERSION) first, then constraints.txt)"
	@echo "make demo       run 'accelrl demo' (sets up $(VENV) on first use)"
	@echo "make test       run the test suite (sets up $(VENV) on first use)"
	@echo "make lint       ruff check"
	@echo "make bench      run benchmarks/env_throughput.py and benchmarks/fidelity.py"
	@echo "make clean      remove build artefacts and caches; 'make distclean' also removes $(VENV)"

venv: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Re-runs when pyproject.toml or constraints.txt changes; otherwise a no-op. The direct
# dependencies are installed at the tested versions of constraints.txt.
$(STAMP): pyproject.toml constraints.txt | $(VPY)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(VPY) -m pip install -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

# pytest exit code 5 ("no tests collected") is a failure, like any other non-zero code.
test: $(STAMP)
	@export $(THREADS_ENV); \
	$(VPY) -m pytest -n 2 tests $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests (exit code 5)" >&2; exit 1; fi; \
	exit $$rc

demo: $(STAMP)
	$(VENV)/bin/accelrl demo
	@echo "watch the demo's runs in the browser: $(VENV)/bin/accelrl dashboard demo_out  (then open http://127.0.0.1:5006/)"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	export $(THREADS_ENV); $(VPY) benchmarks/env_throughput.py
	export $(THREADS_ENV); $(VPY) benchmarks/fidelity.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
