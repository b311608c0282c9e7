# The two commands: `make run` starts the whole stack, `make test` runs the whole suite.
# Each creates .venv and installs what it needs by itself.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every Python dependency pinned with its hashes (docs/decisions.md, "Dependencies"): the dev lock holds
# every extra and is what make installs; the runtime lock is the Docker image's. `make lock` writes both.
DEV_LOCK := requirements/dev.lock
RUNTIME_LOCK := requirements/runtime.lock
# The resolver, installed into .venv by `make lock` only: `make run` and `make test` need pip alone.
UV_VERSION := 0.13.9

.PHONY: run test test-fast lint fmt bench histories lock upgrade clean chaos

# The lock's setuptools builds the project (--no-build-isolation), so nothing unhashed is fetched.
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tickler run

# Everything, with the coverage of the app's packages printed at the end (pyproject.toml, tool.coverage).
test: $(STAMP)
	$(BIN)/python -m pytest --cov $(PYTEST_ARGS)

# The edit-test loop: the tests that use no server (tests/conftest.py marks the others `stack`).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not stack" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports --no-cache

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

# Both locks from pyproject.toml (plus its [build-system] requires), for every platform and Python >= 3.11.
# `make lock` keeps every pin that still satisfies pyproject.toml; `make upgrade` moves everything to the
# newest allowed version, `make upgrade PACKAGE=name` only that package. The runtime lock takes its pins
# from the dev lock, so the image runs exactly the versions the tests ran.
LOCK_ARGS = --quiet --universal --generate-hashes --custom-compile-command 'make lock' \
	$(if $(UPGRADE),--upgrade) $(if $(PACKAGE),--upgrade-package $(PACKAGE))
BUILD_REQUIRES = $(BIN)/python -c 'import tomllib; \
	print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BUILD_REQUIRES) | $(BIN)/uv pip compile $(LOCK_ARGS) --all-extras pyproject.toml - -o $(DEV_LOCK)
	$(BUILD_REQUIRES) | $(BIN)/uv pip compile $(LOCK_ARGS) pyproject.toml - -c $(DEV_LOCK) -o $(RUNTIME_LOCK)

upgrade:
	$(MAKE) lock $(if $(PACKAGE),,UPGRADE=1)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache .coverage

# The chaos suite (issue 13), not part of `make test` (tests/chaos/ runs one short case of each): faults
# injected into `tickler run --replicas 2` under streaming clients, report under chaos/results/<time>/;
# exits 1 if a "must hold" fails. CHAOS_ARGS="--scale small" for a quick run.
chaos: $(STAMP)
	$(BIN)/python -m chaos $(CHAOS_ARGS)
