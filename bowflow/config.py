"""The command line that checks a params.yaml before any work (the check_params stage).

    python -m bowflow.config params.yaml     # check a params file (make run does this)

Each section of params.yaml is a dataclass; stages parse their section from command-line
flags with `bowflow.cli.parse_section`, and `validate_params` checks a whole params.yaml up
front (unknown keys, wrong types, impossible values, generation parents, every layer name
against its run's architecture) so that a mistake stops the pipeline with a message naming
the key before any work starts. What only the images can answer (enough novel-class images
for the few-shot episodes, a batch no larger than its run's training images) is written
into the check_params stamp (`data_needs`) and checked by the prepare stage as soon as it
has read the images, still before any training stage.

This module's one job is `main`, the command line: read the files, run the checks, print
the warnings and the verdict, write the stamp and the runs list. The checks live in
`bowflow.paramcheck`, one job per module; their public names are re-exported here, where
stages, workflow/, benchmarks/ and tests import them from.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bowflow.paramcheck.backbones import architecture, run_architecture
from bowflow.paramcheck.cross_run import check_batches_static, check_layers, check_patches, check_resources
from bowflow.paramcheck.data_needs import data_needs
from bowflow.paramcheck.dvc_sync import check_pipeline_layout, check_pipeline_seeds
from bowflow.paramcheck.probes import check_environment, check_unlabelled, gpu_warnings
from bowflow.paramcheck.run_sections import (
    check_generations,
    check_import,
    check_pretrain,
    check_role,
    check_supervised,
    method_params,
    parent_cycle,
)
from bowflow.paramcheck.runs import ROLE_OF_SECTION, distillation_methods, methods_of, run_names
from bowflow.paramcheck.schema import (
    RUN_NAME,
    check_run_name,
    check_section,
    check_seeds,
    check_type,
    did_you_mean,
    keyed,
)
from bowflow.paramcheck.validate import TOP_LEVEL, validate_params
from bowflow.sections import RESOURCE_KINDS, ParamsError, check_data_needs, load_yaml

__all__ = [
    "RESOURCE_KINDS",
    "ROLE_OF_SECTION",
    "RUN_NAME",
    "TOP_LEVEL",
    "ParamsError",
    "architecture",
    "check_batches_static",
    "check_data_needs",
    "check_environment",
    "check_generations",
    "check_import",
    "check_layers",
    "check_patches",
    "check_pipeline_layout",
    "check_pipeline_seeds",
    "check_pretrain",
    "check_resources",
    "check_role",
    "check_run_name",
    "check_section",
    "check_seeds",
    "check_supervised",
    "check_type",
    "check_unlabelled",
    "data_needs",
    "did_you_mean",
    "distillation_methods",
    "gpu_warnings",
    "keyed",
    "load_yaml",
    "main",
    "method_params",
    "methods_of",
    "parent_cycle",
    "read_yaml",
    "run_architecture",
    "run_names",
    "validate_params",
]


def read_yaml(path: Path, what: str) -> Any:
    """`load_yaml` for a user's file: a missing or malformed file is a ParamsError naming it."""
    from ruamel.yaml import YAMLError

    if not path.is_file():
        raise ParamsError(
            f"{path}: {what} not found" + (" (it is a folder)" if path.is_dir() else "") + ": expected a YAML file"
        )
    try:
        return load_yaml(path)
    except YAMLError as error:
        mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
        if mark is not None and problem:
            detail = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
        else:
            detail = " ".join(str(error).split())
        raise ParamsError(f"{path}: not valid YAML at {detail}") from None
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text ({error}): expected a YAML file") from None


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Check a params.yaml before any work.")
    parser.add_argument("params", type=Path, nargs="?", default=Path("params.yaml"))
    parser.add_argument(
        "--manifest",
        type=Path,
        default=Path("data/prepared/manifest.json"),
        help="prepared manifest, to check shots against novel class sizes if present",
    )
    parser.add_argument(
        "--stamp",
        type=Path,
        help="file to write when the params are valid: JSON of what they ask of the data, for `stages.prepare --needs`",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        help="file to write when the params are valid: JSON "
        "{runs: every run they name, seeds: the training seeds}, for `stages.report --runs` "
        "(metrics of other runs, "
        "e.g. left from another params file, stay out of the report)",
    )
    parser.add_argument(
        "--pipeline-seeds",
        type=int,
        nargs="+",
        help="the seeds dvc.yaml has stages for (workflow/pipeline.py writes them here): they must be params.yaml's",
    )
    parser.add_argument(
        "--pipeline-layout",
        nargs="*",
        help="the runs dvc.yaml spells out "
        "(bowflow.paramcheck.dvc_sync.dvc_layout: the sections with an imported run, "
        "the optional sections with stages; workflow/pipeline.py writes them here): "
        "they must be params.yaml's",
    )
    args = parser.parse_args(argv)
    try:
        manifest = read_yaml(args.manifest, "prepared manifest") if args.manifest.exists() else None
        params = read_yaml(args.params, "params file")
        checked = validate_params(params, manifest)
        check_environment(checked, params)
        check_pipeline_seeds(checked["seeds"], args.pipeline_seeds)
        if args.pipeline_seeds is not None:
            check_pipeline_layout(params, args.pipeline_layout or [])
        for warning in gpu_warnings(checked):
            print(f"{args.params}: warning: {warning}", file=sys.stderr)
    except ParamsError as error:
        message = str(error)
        prefix = (
            ""
            if message.startswith(f"{args.params}:") or message.startswith(f"{args.manifest}:")
            else f"{args.params}: "
        )
        print(f"{prefix}{message}", file=sys.stderr)
        return 2
    if args.stamp:  # read by the prepare stage; constant unless a data need changes (see data_needs)
        from bowflow.io import write_json

        write_json(args.stamp, {"params": "valid", "data_needs": data_needs(checked)})
    if args.runs:
        from bowflow.io import write_json

        write_json(args.runs, {"runs": run_names(checked), "seeds": checked["seeds"]})
    print(f"{args.params}: ok", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
