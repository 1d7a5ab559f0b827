# psfax: the two commands of the Quick start are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench install clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "psfax needs $(PYTHON) on PATH"; exit 1; }
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
	@echo "Results: results/ztf-sample/ (stars.parquet, psf.json, figures)"

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) results .pytest_cache
