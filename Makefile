# Two commands on a fresh clone:
#   make run    install into .venv, run the whole pipeline with `dvc repro`, print the table
#   make test   install into .venv, run the test suite
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install run test benchmarks clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python -m bowflow.config params.yaml
	$(BIN)/dvc repro
	@cat data/report/report.md

test: install
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf data/prepared data/models data/vocab data/metrics data/plots data/report data/checkpoints
