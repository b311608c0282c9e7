# The two commands: `make run` starts the whole stack, `make test` runs the whole suite.
# Each creates .venv and installs what it needs by itself.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt bench histories clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[devstack,test,lint,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tickler run

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The benchmark suite (issue 7), not part of `make test`: the embedded stack, Tickler and the BullMQ
# baseline, report under bench/results/<time>/. BENCH_ARGS="--scale small" for a quick run.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Re-record the workflow histories that tests/workflows/test_replay.py replays.
histories: $(STAMP)
	$(BIN)/python -m tests.workflows.record_histories

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
