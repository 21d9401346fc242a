# binaudit developer entry points. `make test` is what CI runs (through .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Installation is redone only when pyproject.toml or constraints.txt is newer than this stamp.
STAMP := $(VENV)/.installed
# The tested dependency versions (`make lock` re-resolves them).
CONSTRAINTS := constraints.txt

.PHONY: help venv lock system-deps services-up services-down services-status migrate test lint demo bench \
        bench-data-scaling reliability schemas clean

help:
	@echo "make venv | lock | services-up | services-down | services-status | migrate | test | lint"
	@echo "     demo | bench | bench-data-scaling | reliability | schemas | clean"

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[dev]'
	@touch $@

# Re-resolve pyproject.toml's ranges to the newest versions in a throwaway venv and record them.
# Run `make test` on the result before committing it: a new release can break a test (moto
# 5.2.6 broke IAM emulation).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	{ sed -n '1,2p' $(CONSTRAINTS); .lock-venv/bin/python -m pip freeze --exclude-editable; } \
		> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf .lock-venv

system-deps:
	bash scripts/system-deps.sh

services-up: venv system-deps
	$(BIN)/binaudit services up

services-down: venv
	$(BIN)/binaudit services down

services-status: venv
	$(BIN)/binaudit services status

migrate: venv services-up
	$(BIN)/binaudit db upgrade

# Leaves the services running (`make services-down` stops them). Any pytest failure fails the
# target, including exit 5 (no tests collected).
test: venv services-up migrate
	$(BIN)/pytest -q tests/

# Layer contracts (.importlinter): front ends -> inference -> core -> schemas, no sibling
# front end imports another, migrations import only the core.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy binaudit core inference worker serve replay audit robots trainer devstack schemas migrations bench

demo: venv services-up migrate
	bash scripts/demo.sh

bench: venv services-up migrate
	bash bench/run.sh

# Trainer data loading vs dataset size (1,000 vs 10,000 extra-set images) + a 2-rank torchrun
# epoch over the extra set; no services. Needs data/abid-extra (or BINAUDIT_EXTRA_DIR); about
# an hour and a half on 2 busy cores. Writes bench/results/data-scaling.{json,md}.
bench-data-scaling: venv
	$(BIN)/python -m bench.data_scaling --torchrun

reliability: venv services-up migrate
	$(BIN)/pytest -q -m reliability tests/reliability

schemas: venv
	$(BIN)/python -m schemas.export

# Caches and build outputs only; the venv and the services' data stay.
clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
