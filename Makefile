# insitu: every target creates and uses .venv itself; nothing needs to be pre-installed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A GPU (nvidia-smi lists one) gets torch's CUDA build and ORT's CUDA libraries;
# otherwise torch==2.13.0 must be installed first so pip takes the CPU build.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH_SPEC := torch==2.13.0
ORT_EXTRA := "onnxruntime-gpu[cuda,cudnn]"
else
TORCH_SPEC := torch==2.13.0
ORT_EXTRA :=
endif
PYTEST_ARGS ?=

.PHONY: help venv demo test test-tools sandbox-tools protos lint bench clean

help:
	@echo "make demo    - run the end-to-end federation demo on embedded defaults"
	@echo "make test    - run the whole test suite (unit + integration + e2e)"
	@echo "make protos  - regenerate insitu/_proto from protos/"
	@echo "make lint    - ruff + mypy (strict)"
	@echo "make bench   - run the benchmarks in bench/ (never part of make test)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]" $(ORT_EXTRA)
	@touch $(STAMP)

venv: $(STAMP) sandbox-tools

demo: $(STAMP) sandbox-tools
	$(BIN)/insitu demo

test: $(STAMP) test-tools sandbox-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Debian's prometheus (scrape test) and promtool (config check). Best effort: where apt is
# missing or refused, those tests skip with a reason.
test-tools:
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
	      || echo "note: could not install prometheus; its tests will skip"; \
	  fi; }

# bubblewrap (bwrap): the site runs every job's code in a bwrap sandbox and refuses jobs
# without one, so the demo and the sandbox tests need it. Best effort, as above: where apt
# is missing or refused, say so; the tests that need bwrap then skip or fail naming it.
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
	      || echo "note: could not install bubblewrap; the site will refuse jobs (deploy/README.md, Job sandbox)"; \
	  else \
	    echo "note: bwrap not found; install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) or the site refuses jobs"; \
	  fi; }

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

lint: $(STAMP)
	$(BIN)/ruff check insitu coordinator site_node tests bench
	$(BIN)/mypy

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
