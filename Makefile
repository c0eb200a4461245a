# Two commands do everything (see README.md):
#   make reproduce   set up .venv, then run every notebook on PROFILE (default: embedded, offline)
#   make test        set up .venv, then run the tests (unit tests + smoke runs of every notebook)
# Options: make reproduce PROFILE=smoke SEEDS="0 1 2"

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= embedded
SEEDS ?= 0
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup reproduce test bench clean-runs help

help:
	@sed -n '1,5p' Makefile

# The venv is rebuilt when the project's dependency files change.
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

setup: $(VENV)/.installed

reproduce: setup
	@set -e; n=$$(echo $(NOTEBOOKS) | wc -w); i=0; start=$$(date +%s); \
	for nb in $(NOTEBOOKS); do i=$$((i+1)); name=$$(basename $$nb .ipynb); \
	  for seed in $(SEEDS); do \
	    out=runs/$(PROFILE)/$$name$$( [ $$seed = 0 ] || echo __seed$$seed ).ipynb; \
	    echo "=== [$$i/$$n] $$name  (profile $(PROFILE), seed $$seed) -> $$out"; t0=$$(date +%s); \
	    mkdir -p runs/$(PROFILE); \
	    $(PY) -m papermill $$nb $$out -k python3 --cwd notebooks --log-output --no-progress-bar \
	      -p PROFILE $(PROFILE) -p SEED $$seed; \
	    echo "=== $$name done in $$(( $$(date +%s) - t0 )) s"; \
	  done; \
	done; echo "=== all notebooks done in $$(( $$(date +%s) - start )) s; results in runs/$(PROFILE)/results, figures in figures/$(PROFILE)"

test: setup
	$(PY) -m pytest

# Speed ratios of each method's pieces, measured in one run each (not timed tests).
bench: setup
	@for b in $(sort $(wildcard benchmarks/bench_*.py)); do echo "=== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs/
