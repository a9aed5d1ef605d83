# fc-sae: the two commands a newcomer needs are `make run` and `make test`; each sets itself up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= demo
RUN_DIR ?= runs/$(PRESET)
PYTEST_ARGS ?=

.PHONY: setup test run eval down clean-runs

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

run: setup
	@bash scripts/run.sh full "$(PRESET)" "$(RUN_DIR)"

eval: setup
	@bash scripts/run.sh eval "$(PRESET)" "$(RUN_DIR)"

down:
	@bash scripts/down.sh
