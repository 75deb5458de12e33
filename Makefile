# Parley: `make run` brings up the whole stack on embedded defaults; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
# Another interpreter named on the command line (`make test PYTHON=python3.13`) gets a venv of
# its own, .venv-3.13: an existing .venv was made with another Python, and reusing it would
# run everything on that one. VENV=<dir> picks the directory.
ifeq ($(origin PYTHON),command line)
VENV ?= .venv-$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
else
VENV ?= .venv
endif
PY := $(VENV)/bin/python
BUF := tools/buf/node_modules/.bin/buf
STAMP := $(VENV)/.installed

.PHONY: run test chat bench protos prometheusrule lint typecheck buf drift pytest install clean test-faults

# A venv without pip is made again, not only a missing one: where Debian's or Ubuntu's
# python3-venv is not installed, `python3 -m venv` stops half-way and leaves one, and every later
# run would fail on "No module named pip" until the directory was removed by hand.
$(STAMP): pyproject.toml
	@$(PYTHON) -c '' || { echo "PYTHON=$(PYTHON) does not run: install it, or name another"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Parley needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Regenerate the Python contracts in parley/ from protos/.
protos: $(STAMP)
	$(PY) tools/gen_protos.py

## Regenerate deploy/k8s/monitoring/prometheusrule.yaml from deploy/observability/alerts.yml.
prometheusrule: $(STAMP)
	$(PY) tools/gen_prometheusrule.py

## The whole stack: Valkey, session, business, search and the gateway on :8000.
run: $(STAMP)
	$(PY) -m services.dev.launcher

## A terminal chat with the running bot, as a test user of the demo business.
chat: $(STAMP)
	$(PY) -m services.dev.chat

## Everything: lint, types, contracts, drift, tests.
test: lint typecheck buf pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

# buf comes from npm (@bufbuild/buf, pinned in tools/buf/package.json). `buf breaking` compares
# protos/ with the v1 contracts as they first landed: a breaking change needs a new package
# version (parley.<service>.v2), not an edit of v1.
CONTRACTS_BASELINE := 89a363190f1125888c99aa75470c6b94f67dc2ef
buf:
	@if command -v npm >/dev/null 2>&1; then \
	  set -e; \
	  test -x $(BUF) || npm install --prefix tools/buf --no-audit --no-fund --loglevel=error; \
	  $(BUF) lint; $(BUF) format --diff --exit-code; echo "buf lint and format: clean"; \
	  if git cat-file -e $(CONTRACTS_BASELINE) 2>/dev/null; then \
	    $(BUF) breaking --against ".git#ref=$(CONTRACTS_BASELINE),depth=1000"; \
	    echo "buf breaking (against the v1 baseline): clean"; \
	  else echo "!! shallow clone: the v1 baseline commit is missing, SKIPPING buf breaking"; fi; \
	else \
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
	  echo "!! npm is not installed: SKIPPING buf lint and buf format checks.       !!"; \
	  echo "!! Install Node.js/npm to run them. Every other check still runs.       !!"; \
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
	fi

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## Fault scenarios and hostile input at full length (`make test` runs their quick variant).
test-faults: $(STAMP)
	FAULTS_FULL=1 $(PY) -m pytest tests/faults tests/hostile $(PYTEST_ARGS)

## Benchmarks: a table on stdout and bench/results/latest.json (BENCH="runtime session" for some).
bench: $(STAMP)
	@$(PY) -c 'import locust, matplotlib' 2>/dev/null || $(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench $(BENCH)

clean:
	rm -rf .venv .venv-* $(VENV) var tools/buf/node_modules .mypy_cache .pytest_cache .ruff_cache
