# Fresh machine: `make demo` (set up, then train the embedded demo), `make test` (set up, then run the tests;
# `make test-slow` runs the second tier of real-model and multi-run checks).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-slow test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: a bare `torch` can resolve to a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# DeepSpeed compiles its CPU comm op with gcc on first use (~1 min); do it once here, not in a run.
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator; \
		get_accelerator().create_op_builder('ShareMemCommBuilder').load()" >/dev/null 2>&1 || true
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m flows.sft

test: setup
	$(BIN)/python -m pytest -q -m "not extended"

# The second tier: real-model and multi-run checks that take minutes each (CI runs both tiers).
test-slow: setup
	$(BIN)/python -m pytest -q -m extended

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not extended"

clean:
	rm -rf runs mlflow.db .pytest_cache
