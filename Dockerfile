# GPU image: the official vLLM OpenAI image (CUDA build of the vLLM release pyproject.toml pins
# in its `cuda` extra, 0.34.0: ZAYA built in; tests/deploy checks the tag) + markovian-rsa.
# CPU hosts: Dockerfile.cpu.
#   docker build -t markovian-rsa .
#   docker run --gpus all -p 8000:8000 -v /srv/models/ZAYA1-8B:/models/ZAYA1-8B:ro \
#       markovian-rsa --model /models/ZAYA1-8B --served-model-name ZAYA1-8B
# A ZAYA checkpoint is served by vLLM's own ZAYA model (prefix caching, CUDA graphs) with the
# `zaya` reasoning and tool-call parsers on by default (--engine.zaya-impl plugin: ours instead).
# Every `mrsa serve` flag can follow the image name; every setting is also an env var
# (-e MRSA_ENGINE__MODEL=/models/ZAYA1-8B, -e MRSA_ENGINE__MAX_MODEL_LEN=16384, ...).
# With MRSA_ENGINE__UPSTREAMS (or --upstream URL, repeatable) the server drives remote vLLM
# replicas instead of an embedded engine: see deploy/compose.yaml and deploy/k8s/.
FROM vllm/vllm-openai:v0.34.0

# The base image's python3 is the one vLLM, torch and CUDA libraries live in: install beside it.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/markovian-rsa
COPY pyproject.toml README.md ./
COPY mrsa ./mrsa
COPY service ./service
COPY rsa ./rsa
COPY engine ./engine
COPY kernels ./kernels
COPY evals ./evals

# 1. Install with the base image's CUDA stack pinned (constraints), so no dependency of ours can
#    swap torch/vLLM/triton/flashinfer/nvidia-* for PyPI builds; the rest may move as needed.
# 2. Prove the image: the one package `mrsa` is ours, and transformers + vLLM still import
#    (-I: from site-packages, not from the sources in the working directory).
RUN python3 -m pip list --format=freeze \
      | grep -iE '^(torch|torchvision|torchaudio|triton|vllm|xformers|flashinfer[a-z0-9_-]*|nvidia-[a-z0-9_-]+)==' \
      > /tmp/cuda-stack.txt \
 && python3 -m pip install --no-cache-dir --constraint /tmp/cuda-stack.txt . \
 && rm /tmp/cuda-stack.txt \
 && python3 -I -c "import importlib.metadata as m; d = m.packages_distributions(); \
assert set(d.get('mrsa', [])) == {'markovian-rsa'}, d.get('mrsa'); \
assert 'markovian-rsa' not in {x for k, v in d.items() if k != 'mrsa' for x in v}, d; \
import transformers, vllm, mrsa.service.app, mrsa.rsa.params, mrsa.engine.config, mrsa.kernels"

# Listen on every interface inside the container (the host decides what to publish). The
# engine's GPU defaults (0.9 of the memory, CUDA graphs) follow the device, as outside Docker.
ENV MRSA_HOST=0.0.0.0 \
    MRSA_PORT=8000
EXPOSE 8000

# /health answers once the engine is up (uvicorn accepts connections after the lifespan
# started it). The start period covers downloading and loading a multi-GB checkpoint.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20m --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MRSA_PORT', '8000') + '/health', timeout=4)"]

ENTRYPOINT ["mrsa", "serve"]
