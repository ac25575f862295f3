# GPU image: vLLM's CUDA build + markovian-rsa. For CPU hosts use `make serve` instead.
#   docker build -t markovian-rsa .
#   docker run --gpus all -p 8000:8000 -v ~/.cache/huggingface:/root/.cache/huggingface \
#       markovian-rsa --model Zyphra/ZAYA1-8B
FROM vllm/vllm-openai:v0.32.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY rsa ./rsa
COPY engine ./engine
COPY kernels ./kernels
COPY benchmarks ./benchmarks
# vLLM and torch come with the base image; install only our own dependencies beside them.
RUN python3 -m pip install --no-cache-dir -e . \
 && python3 -m pip uninstall -y rsa kernels || true

ENV MRSA_HOST=0.0.0.0 \
    MRSA_PORT=8000 \
    MRSA_ENGINE__GPU_MEMORY_UTILIZATION=0.9 \
    MRSA_ENGINE__ENFORCE_EAGER=false
EXPOSE 8000
ENTRYPOINT ["mrsa", "serve"]
