# The two commands of the quick start, and a few more. Each makes the virtualenv if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test dev lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## run the whole pipeline once on the local stack (real data)
	$(VENV)/bin/stock-assets demo

test: $(STAMP)  ## lint + the whole test suite against the real local stack
	$(VENV)/bin/ruff check stock_assets stock_assets_tests benchmarks airflow
	$(VENV)/bin/ruff format --check stock_assets stock_assets_tests benchmarks airflow
	# Two workers, one test file each at a time (module-scoped deployments stay whole): most
	# of the suite waits on servers, daemons and sensors, so two overlap well even on 2 cores.
	$(VENV)/bin/pytest -n 2 --dist loadfile

dev: $(STAMP)  ## local stack + Dagster UI and daemon on http://127.0.0.1:3000
	$(VENV)/bin/stock-assets dev

bench: $(STAMP)  ## benchmark: ours vs the limit proxy vs the course approach (BENCH_ARGS=--quick)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m benchmarks.run $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check stock_assets stock_assets_tests benchmarks airflow
	$(VENV)/bin/ruff format --check stock_assets stock_assets_tests benchmarks airflow

clean:
	rm -rf $(VENV) .stock_assets
