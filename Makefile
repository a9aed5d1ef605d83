# fc-sae: the two commands a newcomer needs are `make run` and `make test`; each sets itself up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= demo
RUN_DIR ?= runs/$(PRESET)
CONFIG ?=
PYTEST_ARGS ?=
# VERBOSE=1: make run / make eval show Prefect's event stream instead of the progress lines.
VERBOSE ?=

.PHONY: setup test run eval results down clean-runs

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

run: setup
	@VERBOSE="$(VERBOSE)" bash scripts/run.sh full "$(PRESET)" "$(RUN_DIR)" "$(CONFIG)"

eval: setup
	@VERBOSE="$(VERBOSE)" bash scripts/run.sh eval "$(PRESET)" "$(RUN_DIR)"

# RESULTS.md from the committed results tables (copy a finished run's results.parquet under results/).
results: setup
	$(PY) -m pipeline.cli results-md --synthetic results/synth-fc/results.parquet \
		--language results/experiment-f32-k32/results.parquet --language results/experiment/results.parquet --language results/experiment-float32/results.parquet \
		--language results/experiment-gpu/results.parquet \
		--out RESULTS.md

down:
	@bash scripts/down.sh
