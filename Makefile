# The README names two commands: `make demo` (the main job) and `make test`.
# Both set everything up on a fresh machine first; the setup is skipped when done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRISM := vendor/prism/prism.wasm

.PHONY: setup demo test lint bench clean

setup: $(STAMP) $(PRISM)

# torch is installed on its own first and pinned: an unpinned resolve pulls GBs of CUDA wheels.
# llama-cpp-python (the fastest engine, README "Engines") has no Linux CPU wheel on PyPI:
# pip builds it from source here, a few minutes on two cores.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
	  $(BIN)/pip install -q -e '.[dev,ggml,llamacpp]'
	touch $(STAMP)

$(PRISM): scripts/fetch_prism.sh
	bash scripts/fetch_prism.sh

demo: setup
	$(BIN)/rubytailor demo

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p rubytailor

bench: setup
	$(BIN)/rubytailor bench latency

clean:
	rm -rf $(VENV) vendor/prism .pytest_cache .ruff_cache .mypy_cache
