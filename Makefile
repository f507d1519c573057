# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint clean team-up team-down

install: $(STAMP)

# Bytecode is compiled at install (uv's --compile-bytecode, compileall for the project's own code): every pipeline
# stage, service and flow is a fresh Python process, and where PYTHONDONTWRITEBYTECODE is set none of them would
# write a .pyc, so each compiled its imports from source again (importing scikit-learn's ensemble took 4.4 s of CPU
# against 1.5 s from bytecode).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev,team]'
	$(BIN)/python -m compileall -q src flows
	touch $(STAMP)

# Options of `retrainer demo` (see its --help), e.g. `make demo DEMO_ARGS="--months 4-6 --trigger monthly"`.
DEMO_ARGS ?=
demo: install
	$(BIN)/retrainer demo $(DEMO_ARGS)

# The suite's tests mostly wait on real servers and processes: pytest-xdist runs whole files side by side
# (module fixtures stay in one worker), the slowest first (tests/conftest.py). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 3
test: install
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

bench: install
	$(BIN)/python bench/run.py

# The local team stack (PostgreSQL, SeaweedFS, Prefect server on PostgreSQL, a process-pool worker, a Dask scheduler
# and two workers), loopback only; `retrainer team serve` adds the service replicas behind HAProxy.
team-up: install
	$(BIN)/retrainer team up

team-down: install
	$(BIN)/retrainer team down

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests flows bench

clean:
	rm -rf .retrainer-demo .pytest_cache .ruff_cache
