# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv if missing, install torch==2.13.0 first (CPU build), then
# jrinfer with its extras.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jrinfer-installed
PYTEST_ARGS ?=
# Real recordings are read from this cache (never committed): JRINFER_DATA if
# set, else ../shared/data next to the checkout when it exists (as in CI, so
# `make demo` also fits a real EEG spectrum), else the user cache ~/jrinfer_data.
SHARED_DATA := $(wildcard $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)/shared/data)
export JRINFER_DATA ?= $(if $(SHARED_DATA),$(SHARED_DATA),$(HOME)/jrinfer_data)

.PHONY: demo test bench notebooks install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,all]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jrinfer demo --out jrinfer-demo --force

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/simulate.py
	$(PY) benchmarks/vl_overhead.py --baseline 051a930 --threads 1
	$(PY) benchmarks/laplace.py --threads 1
	$(PY) benchmarks/laplace.py --threads 1 --problem canonical8
	$(PY) benchmarks/single_point.py --threads 1
	$(PY) benchmarks/evoked.py --threads 1
	$(PY) benchmarks/simulation_fit.py

notebooks: $(STAMP)
	for nb in notebooks/*.ipynb; do $(VENV)/bin/jupyter-execute --inplace --timeout=1200 $$nb || exit 1; done

clean:
	rm -rf $(VENV) jrinfer-demo demo_out .pytest_cache
