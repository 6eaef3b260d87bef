"""params.yaml against what dvc.yaml was written for: the seeds it has stages for and the
imported runs it spells out (workflow/pipeline.py passes both to check_params). A
difference means dvc.yaml is stale: a ParamsError that says how to rewrite it."""
from __future__ import annotations

from bowflow.sections import ParamsError
from bowflow.weights import pipeline_layout


def check_pipeline_seeds(seeds: list[int], pipeline_seeds: list[int] | None) -> None:
    """The seeds dvc.yaml has stages for (its check_params command says) must be params.yaml's."""
    if pipeline_seeds is not None and sorted(pipeline_seeds) != sorted(seeds):
        raise ParamsError(f"seeds: params.yaml lists {seeds} but dvc.yaml has stages for seeds "
                          f"{pipeline_seeds}: run `bin/python -m workflow.pipeline` to rewrite dvc.yaml "
                          f"(make run does), then run again")


def check_pipeline_layout(params: dict, layout: list[str]) -> None:
    """The runs dvc.yaml spells out (sections with an imported run, and each import's file)
    must be params.yaml's (`bowflow.weights.pipeline_layout`)."""
    expected = pipeline_layout(params)
    if expected != list(layout):
        differ = sorted(set(expected) ^ set(layout)) or expected
        raise ParamsError(f"pretrain/teachers: dvc.yaml was written for other imported runs or run "
                          f"names ({differ[0]!r} differs): run `bin/python -m workflow.pipeline` to "
                          f"rewrite dvc.yaml (make run does), then run again")
