# kerastrace — the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kerastrace-installed
# Quiet TensorFlow's C++ start-up chatter for our own runs (never set by the library).
export TF_CPP_MIN_LOG_LEVEL ?= 2
export MPLBACKEND ?= Agg

.PHONY: help install demo tensorboard test test-all lint browser bench peers clean

help:
	@echo "make demo      create .venv if missing, install, run the demo"
	@echo "make tensorboard  open the demo's run in TensorBoard (LOGDIR=... for another log directory)"
	@echo "make test      create .venv if missing, install, lint + the whole suite (CI)"
	@echo "make test-all  the suite including slow cases"
	@echo "make browser   install Debian's chromium + chromium-driver for the browser tests (as root)"
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

# The dashboard: TensorBoard with the kerastrace tab (http://localhost:6006/#kerastrace).
tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir $(or $(LOGDIR),runs/demo/tensorboard)

lint: $(STAMP)
	$(PY) -m ruff check kerastrace tests scripts benchmarks

# The browser tests (marker `browser`) drive Debian's headless chromium through its
# driver. Installed here when missing and running as root with apt-get; otherwise
# those tests are skipped, each with the reason.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  echo "browser tests: using $$(command -v chromium) and $$(command -v chromedriver)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "browser tests: installing chromium and chromium-driver with apt-get"; \
	  ( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver >/dev/null ) \
	    || echo "browser tests: apt-get could not install chromium; they will be skipped"; \
	else \
	  echo "browser tests will be skipped: chromium/chromedriver missing and not root with" \
	       "apt-get (run: sudo apt-get install chromium chromium-driver)"; \
	fi

# Two pytest workers (pytest-xdist), one test file per worker at a time: the suite
# is mostly single-threaded Python (tracing, small models), so two workers use the
# CI machine's two cores (26.5 -> 14.3 min here). `make test WORKERS=0` runs serially.
WORKERS ?= 2
XDIST := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile)

test: lint browser
	$(PY) -m pytest -m "not slow and not gpu" $(XDIST) $(PYTEST_ARGS)

test-all: lint browser
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

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
