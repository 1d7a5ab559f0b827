# psfax: the two commands of the Quick start are `make demo` and `make test`.
# PYTHON: any Python >= 3.11 (default python3; checked before the install), e.g. `make demo PYTHON=python3.12`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SAMPLES := ztf-sample aia-sample clusters-sample
# pytest workers (pytest-xdist): one per core of the 2-core machines the suite is sized for; files stay whole
WORKERS ?= 2
PYTEST  := $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile
# The fast suite's time is mostly XLA compiling programs that then run for milliseconds, so `make test`
# compiles them with LLVM's optimisation off (the same programs and IEEE arithmetic; about a quarter
# less time). `make test-all` and every psfax command compile at XLA's default, as users run them.
# `make test FAST_XLA_FLAGS=` tests at the default too.
FAST_XLA_FLAGS ?= --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true
FAST_PYTEST := XLA_FLAGS="$(FAST_XLA_FLAGS) $$XLA_FLAGS" $(PYTEST) -m "not slow"

.PHONY: demo test test-all durations samples chromium bench install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	    || { echo "psfax needs Python >= 3.11: set PYTHON=, e.g. make PYTHON=python3.12 ($(PYTHON) is missing or older)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,compare]'
	# aiapy 0.12.1 (the solar peer) declares Python >= 3.12 but runs on 3.11; its dependencies are above.
	$(BIN)/pip install -q --no-deps --ignore-requires-python aiapy==0.12.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/psfax data fetch ztf-sample
	$(BIN)/psfax stars fit $$($(BIN)/psfax data path ztf-sample science) \
	    --mask $$($(BIN)/psfax data path ztf-sample mask) --out results/ztf-sample
	@echo "Results: results/ztf-sample/ (report.html, stars.parquet, psf.json, figures)"

# the real-data tests read the samples from the cache (or a shared-data folder): fetch what is missing
samples: $(STAMP)
	$(BIN)/psfax data fetch $(SAMPLES)

test: samples
	$(FAST_PYTEST)

# the 40 slowest fast tests (to keep `make test` under 5 minutes: move heavy ones to `slow`)
durations: samples
	$(FAST_PYTEST) --durations=40

# the report-page test renders in headless Chromium: install Debian's package when missing and root
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	    && apt-get update -qq && apt-get install -y -qq chromium; } || echo "chromium not installed: its test skips"

test-all: samples chromium
	$(PYTEST)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) results .pytest_cache
