# On a fresh clone:
#   make install-gpu  (on a GPU machine, first) the same venv with faiss's GPU build
#   make run        install into .venv, run the whole pipeline with `dvc repro` (bin/repro: the
#                   seeds side by side), print the report
#   make test       install into .venv, lint (ruff check, ruff format --check, mypy), run the fast tier: every test not marked slow (unit
#                   tests, the method contract on one method, the tiny pipeline once with
#                   one run of each kind; under 5 minutes on 2 cores)
#   make test-all   install into .venv, run every test, the slow ones too (every method's
#                   contract and learning, fault injection, Snakemake, reruns, benchmark
#                   runs, the records check), on two workers (pytest-xdist, each test file on
#                   one worker, so a file's shared trained project is built once); CI runs this: .ci/run
#                   (the fast tier's one-of-each pipeline run is left out: the every-method run covers it)
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install install-gpu run test test-all benchmarks clean

# The venv installs requirements.txt (faiss-cpu), or requirements-gpu.txt (faiss-gpu) once
# `make install-gpu` has marked it with .gpu; every later target keeps that choice.
REQUIREMENTS := $(if $(wildcard $(VENV)/.gpu),requirements-gpu.txt,requirements.txt)

$(VENV)/.installed: $(REQUIREMENTS) requirements-common.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r $(REQUIREMENTS)
	touch $@

install: $(VENV)/.installed

# faiss-cpu out first (if a CPU install was there): both builds write the `faiss` module.
install-gpu:
	$(PYTHON) -m venv $(VENV)
	touch $(VENV)/.gpu
	$(BIN)/pip uninstall --quiet --yes faiss-cpu || true
	$(BIN)/pip install --quiet -r requirements-gpu.txt
	touch $(VENV)/.installed

run: install
	$(BIN)/python -m bowflow.config params.yaml
	bin/repro
	@cat data/report/report.md

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25 tests \
		--deselect "tests/test_pipeline.py::test_dvc_runs_every_stage_and_writes_the_report[one_of_each_project]"

clean:
	rm -rf data/prepared data/models data/vocab data/metrics data/plots data/report data/checkpoints
