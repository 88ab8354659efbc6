# kerastrace — the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kerastrace-installed
# Quiet TensorFlow's C++ start-up chatter for our own runs (never set by the library).
export TF_CPP_MIN_LOG_LEVEL ?= 2
export MPLBACKEND ?= Agg

.PHONY: help install demo test test-all lint bench peers clean

help:
	@echo "make demo      create .venv if missing, install, run the demo"
	@echo "make test      create .venv if missing, install, lint + the whole suite (CI)"
	@echo "make test-all  the suite including slow cases"
	@echo "make bench     run every benchmark in benchmarks/"
	@echo "make peers     create .venv-peers with the peer libraries (alibi, tf-explain, tf-keras-vis)"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kerastrace demo $(DEMO_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check kerastrace tests scripts benchmarks

test: lint
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

PEERS := .venv-peers
$(PEERS)/.installed: setup.cfg
	@test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -e ".[bench]"
	@touch $@

peers: $(PEERS)/.installed

clean:
	rm -rf $(VENV) $(PEERS) build dist *.egg-info .pytest_cache .ruff_cache
