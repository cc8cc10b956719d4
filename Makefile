# Two commands do all set-up on a fresh machine (README "Quick start"):
#   make sample   -> creates .venv, installs, runs the main job (jobs/anneal_mix.py) on the
#                    embedded sample data (prepared on first use)
#   make test     -> creates .venv, installs, runs the test suite
# The torch wheel is installed first and pinned, so resolving the rest never replaces it:
# on a CPU-only machine of this project's kind `torch==2.13.0` is the local CPU build.
# Elsewhere, point pip at a CPU wheel index with TORCH_PIP_ARGS="--index-url <cpu index>".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bsm_ray-installed

.PHONY: setup sample test bench lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "import bsm_ray, torch; print('bsm_ray', bsm_ray.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

sample: $(STAMP)
	$(PY) jobs/anneal_mix.py --overwrite

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

bench: $(STAMP)
	$(PY) bench/ingest_throughput.py
	$(PY) bench/masking_throughput.py
	$(PY) bench/train_throughput.py
	$(PY) bench/pipeline_throughput.py
	$(PY) bench/gpu_throughput.py

lint: $(STAMP)
	$(PY) -m ruff check bsm_ray jobs tests bench

clean-venv:
	rm -rf $(VENV)
