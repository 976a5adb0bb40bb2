# The two commands of the README. Each bootstraps its own virtual environment from a bare
# Python 3.11+ (override with PYTHON=python3.12), so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean check-ui check-deployments check-scale-out

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bullphish-billing demo

# Two pytest-xdist workers: most tests wait on servers and child processes, so two at a time
# take about two thirds of the time on a 2-core machine (14.5 against 21.8 min, 2026-12-03).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2

# The unit tests alone (tests/unit: no server, no Prefect), in under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The Prefect UI renders a run and its artifacts (headless Chromium; installs Debian's
# chromium with apt-get if missing). Not part of `test`: it takes about a minute.
check-ui: $(STAMP)
	$(BIN)/python scripts/check_ui.py

# prefect.yaml end to end: `prefect server start` on a free port, `prefect deploy --all`, a
# process worker, a backfill run against the sandbox. Offline, about 30 s; `test` runs it too
# (tests/integration/test_deployments.py).
check-deployments: $(STAMP)
	$(BIN)/python scripts/check_deployments.py

# Extract shards on Prefect workers (README "Scaling out"): `prefect server start`, two shard
# workers, BILLING_SHARDS=2 against BILLING_SHARDS=1 and the oracle, a shard host killed
# mid-extract, a backfill of that date. Offline, about 2 minutes; `test` runs it too
# (tests/integration/test_scale_out.py).
check-scale-out: $(STAMP)
	$(BIN)/python scripts/check_scale_out.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) data/demo .pytest_cache
