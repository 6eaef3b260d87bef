# On a fresh clone:
#   make run        install into .venv, run the whole pipeline with `dvc repro` (bin/repro: the
#                   seeds side by side), print the report
#   make test       install into .venv, run the fast tier: every test not marked slow (unit
#                   tests, the method contract on one method, the tiny pipeline once with
#                   one run of each kind; under 5 minutes on 2 cores)
#   make test-all   install into .venv, run every test, the slow ones too (every method's
#                   contract and learning, fault injection, Snakemake, reruns, benchmark
#                   runs, the records check; most of an hour on 2 cores). CI runs this: .ci/run
#                   (the fast tier's one-of-each pipeline run is left out: the every-method run covers it)
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-all benchmarks clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python -m bowflow.config params.yaml
	bin/repro
	@cat data/report/report.md

test: install
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: install
	$(BIN)/python -m pytest -q --durations=25 tests \
		--deselect "tests/test_pipeline.py::test_dvc_runs_every_stage_and_writes_the_report[one_of_each_project]"

clean:
	rm -rf data/prepared data/models data/vocab data/metrics data/plots data/report data/checkpoints
