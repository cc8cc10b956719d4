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

.PHONY: setup sample test bench lint clean-venv central-dogma

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

# The recorded few-shot Central Dogma run (README "Evaluation"), about 3 minutes: the task from
# the chloroplast record, removed from a sample prepared with 10% validation, a tiny BSM
# trained on the remaining pairs, then the evaluation suite on it.
central-dogma: $(STAMP)
	$(PY) jobs/build_central_dogma.py
	$(PY) jobs/prepare_data.py --set output_dir=data/sample-v10 --set val_fraction=0.1 --set overwrite=true
	$(PY) jobs/decontaminate.py --set dataset=data/sample-v10 --set output_dir=data/sample-cd \
	  --set overwrite=true --set 'eval_sets={central_dogma: [runs/eval/central_dogma_NC_000932.parquet]}'
	$(PY) jobs/pretrain.py --round 1 --config jobs/configs/bsm_pairs_cpu.yaml
	$(PY) jobs/evaluate.py --config jobs/configs/evaluate_bsm.yaml --set model=runs/bsm-pairs-round1 \
	  --set name=central-dogma --set central_dogma.task=runs/eval/central_dogma_NC_000932.parquet \
	  --set perplexity.config.dataset=data/sample-cd

lint: $(STAMP)
	$(PY) -m ruff check bsm_ray jobs tests bench

clean-venv:
	rm -rf $(VENV)
