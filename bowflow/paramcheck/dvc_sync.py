"""params.yaml against what dvc.yaml was written for: the seeds it has stages for, the
imported runs it spells out and the optional sections that add stages (workflow/pipeline.py
passes them to check_params). A difference means dvc.yaml is stale: a ParamsError that says
how to rewrite it."""

from __future__ import annotations

from bowflow.sections import ParamsError
from bowflow.weights import pipeline_layout


def check_pipeline_seeds(seeds: list[int], pipeline_seeds: list[int] | None) -> None:
    """The seeds dvc.yaml has stages for (its check_params command says) must be params.yaml's."""
    if pipeline_seeds is not None and sorted(pipeline_seeds) != sorted(seeds):
        raise ParamsError(
            f"seeds: params.yaml lists {seeds} but dvc.yaml has stages for seeds "
            f"{pipeline_seeds}: run `bin/python -m workflow.pipeline` to rewrite dvc.yaml "
            f"(make run does), then run again"
        )


# Optional params sections that add stage groups to dvc.yaml when present (the fine-tuning
# stages of `finetune:`, the transfer stages of `transfer:`, the detect stages of `detection:`): their
# names are part of the layout.
STAGE_SECTIONS = ("finetune", "transfer", "detection")


def transfer_sources(params: dict) -> list[str]:
    """The names of params.yaml's `transfer.sources`, in params order ([] when none): dvc.yaml
    names each one's folder as a dep of the transfer stages."""
    section = params.get("transfer")
    sources = section.get("sources") if isinstance(section, dict) else None
    return [str(name) for name in sources] if isinstance(sources, dict) else []


def dvc_layout(params: dict) -> list[str]:
    """What dvc.yaml spells out from params.yaml besides its seeds: the imported runs
    (`bowflow.weights.pipeline_layout`), then each optional section with stages it has, and
    the transfer sources as 'transfer.sources.NAME'."""
    sections = [section for section in STAGE_SECTIONS if section in params]
    return pipeline_layout(params) + sections + [f"transfer.sources.{name}" for name in transfer_sources(params)]


def check_pipeline_layout(params: dict, layout: list[str]) -> None:
    """The runs dvc.yaml spells out (sections with an imported run, and each import's file)
    and its optional stage sections must be params.yaml's (`dvc_layout`)."""
    expected = dvc_layout(params)
    if expected != list(layout):
        differ = sorted(set(expected) ^ set(layout)) or expected
        section = next((s for s in STAGE_SECTIONS if s in differ), None)
        if section:
            state = "has" if section in params else "has no"
            raise ParamsError(
                f"{section}: params.yaml {state} a `{section}:` section but dvc.yaml was "
                f"written {'without' if section in params else 'with'} its stages: run "
                f"`bin/python -m workflow.pipeline` to rewrite dvc.yaml (make run does), "
                f"then run again"
            )
        source = next((token for token in differ if token.startswith("transfer.sources.")), None)
        if source:
            raise ParamsError(
                f"transfer.sources: dvc.yaml was written for other transfer sources ({source!r} differs): "
                f"run `bin/python -m workflow.pipeline` to rewrite dvc.yaml (make run does), then run again"
            )
        raise ParamsError(
            f"pretrain/teachers: dvc.yaml was written for other imported runs or run "
            f"names ({differ[0]!r} differs): run `bin/python -m workflow.pipeline` to "
            f"rewrite dvc.yaml (make run does), then run again"
        )
