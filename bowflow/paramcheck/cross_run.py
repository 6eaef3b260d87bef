"""Checks that relate runs to each other and to the other sections, once every section has
been checked on its own: each generation's student against its parent, the few-shot way
against the novel classes, layer names and ViT patches against the backbones, batches
against image caps and processes, the resources: section, and GPUs against `device:`.
Each walks the runs once (`bowflow.paramcheck.runs.walk_runs`)."""

from __future__ import annotations

from typing import Any

from bowflow.networks import ARCHITECTURES
from bowflow.paramcheck.backbones import run_architecture
from bowflow.paramcheck.runs import walk_runs
from bowflow.paramcheck.schema import check_section, did_you_mean
from bowflow.roles.base import get_method
from bowflow.sections import RESOURCE_KINDS, ParamsError, ResourceParams
from bowflow.weights import IMPORT


def check_parents(checked: dict) -> None:
    """Each generation's student can start from its parent's model (`check_parent`)."""
    for name, gen in checked["generations"].items():
        parent = checked["pretrain"].get(gen["parent"]) or checked["generations"][gen["parent"]]["student"]
        try:
            gen["student"].check_parent(parent)
        except ValueError as error:
            raise ParamsError(f"generations.{name}.student: {error}") from None


def check_few_shot_way(checked: dict) -> None:
    """A few-shot episode draws evaluate.few_shot_way classes from data.novel_classes."""
    novel = checked["data"].novel_classes
    if checked["evaluate"].few_shot_way > len(novel):
        raise ParamsError(
            f"evaluate.few_shot_way: {checked['evaluate'].few_shot_way}-way episodes need "
            f"as many novel classes, but data.novel_classes lists {len(novel)}"
        )


def check_layers(checked: dict) -> None:
    """Every layer name against the architecture that must have it, before any training:
    a generation's `vocab.layer` against its parent's backbone, `evaluate.layer` against
    every evaluated model (each pretrain run and generation student: the SSL runs). A layer
    is 'last' or one of the backbone's stage names ('stage1', ...); with a `transfer:`
    section, `transfer.layer` against every run of the four sections (each is transferred).
    Distillation layer names (FitNet's hint_stage) are the methods' `check_pair`, called by
    `check_supervised`."""
    runs = {run.name: run for run in walk_runs(checked, pool="ssl")}
    stages = {name: run_architecture(run.params, run.key).stage_names for name, run in runs.items()}
    for run in runs.values():
        method = run.params.method
        if (
            method != IMPORT
            and get_method(method).token_backbone
            and not hasattr(run_architecture(run.params, run.key), "block_tokens")
        ):
            vits = sorted(a for a in ARCHITECTURES if a.startswith("vit"))
            raise ParamsError(
                f"{run.key}.arch: method '{method}' needs a vision transformer (one of "
                f"{vits}): '{run.params.arch}' has no patch tokens"
            )

    def describe(name: str) -> str:
        run = runs[name]
        return f"'{name}' ({run.key}.arch: {run.params.arch}, stages {stages[name]})"

    for name, gen in checked["generations"].items():
        layer, parent = gen["vocab"].layer, gen["parent"]
        if layer != "last" and layer not in stages[parent]:
            raise ParamsError(
                f"generations.{name}.vocab.layer: '{layer}' is not a stage of the parent "
                f"{describe(parent)}: expected 'last' or one of its stages"
            )
    layer = checked["evaluate"].layer
    missing = [name for name in runs if layer != "last" and layer not in stages[name]]
    if missing:
        raise ParamsError(
            f"evaluate.layer: '{layer}' is not a stage of {describe(missing[0])}"
            + (f" (nor of {missing[1:]})" if len(missing) > 1 else "")
            + ": expected 'last' or a stage every pretrain run and generation student has"
        )
    if "transfer" in checked and checked["transfer"].layer != "last":  # every run is transferred
        layer = checked["transfer"].layer
        for run in walk_runs(checked):
            names = run_architecture(run.params, run.key).stage_names
            if layer not in names:
                raise ParamsError(
                    f"transfer.layer: '{layer}' is not a stage of '{run.name}' ({run.key}.arch: "
                    f"{run.params.arch}, stages {names}): expected 'last' or a stage every run has"
                )


def check_patches(checked: dict) -> None:
    """Every ViT run's patch size divides data.image_size (its tokens tile the image)."""
    size = checked["data"].image_size
    for run in walk_runs(checked):
        patch = getattr(run_architecture(run.params, run.key), "patch", 1)
        if size % patch:
            raise ParamsError(
                f"{run.key}.arch: '{run.params.arch}' cuts images into {patch} x {patch} px "
                f"patches, but data.image_size = {size} is not a multiple of {patch}"
            )


def check_batches_static(checked: dict) -> None:
    """A batch above the image cap its run trains on (data.ssl_max_images for the SSL runs,
    the run's own max_images for a labelled one) is known from the params alone."""
    for run in walk_runs(checked):
        if run.kind.pool == "ssl":
            cap, capped_by = checked["data"].ssl_max_images, "data.ssl_max_images"
        else:
            cap, capped_by = getattr(run.params, "max_images", 0), "its max_images"
        if 0 < cap < run.params.batch_size:
            raise ParamsError(
                f"{run.key}.batch_size: {run.params.batch_size} images per step, but the run "
                f"trains on {capped_by} = {cap} images: expected a batch_size <= {cap}"
            )


def check_resources(values: Any, checked: dict) -> dict:
    """resources: one ResourceParams per kind of stage (RESOURCE_KINDS), and every training
    run's batch split evenly over its stage's processes (each takes batch_size / processes
    rows of every global batch)."""
    if not isinstance(values, dict):
        raise ParamsError(f"resources: expected a mapping with keys {list(RESOURCE_KINDS)}, got {values!r}")
    for kind in values:
        if kind not in RESOURCE_KINDS:
            raise ParamsError(
                f"resources.{kind}: unknown stage kind{did_you_mean(kind, list(RESOURCE_KINDS))} "
                f"(expected {list(RESOURCE_KINDS)})"
            )
    missing = [k for k in RESOURCE_KINDS if k not in values]
    if missing:
        raise ParamsError(
            f"resources.{missing[0]}: missing (expected an entry for each of "
            f"{list(RESOURCE_KINDS)}; dvc.yaml's commands read them)"
        )
    resources = {kind: check_section(ResourceParams, values[kind], f"resources.{kind}") for kind in RESOURCE_KINDS}
    if resources["other"].processes != 1:
        raise ParamsError(
            f"resources.other.processes: the stages that train nothing run one process, "
            f"got {resources['other'].processes}"
        )
    for run in walk_runs(checked):
        kind = run.kind.stage
        processes = resources[kind].processes
        if run.params.batch_size % processes:
            raise ParamsError(
                f"{run.key}.batch_size: {run.params.batch_size} does not split over "
                f"resources.{kind}.processes = {processes}: expected a multiple of {processes}"
            )
    return resources


def check_gpus_for_device(resources: dict, device: str) -> None:
    """No stage kind asks for GPUs when `device: cpu` trains on the CPU."""
    asking = [kind for kind, r in resources.items() if r.gpus]
    if asking and device == "cpu":
        raise ParamsError(
            f"resources.{asking[0]}.gpus: {resources[asking[0]].gpus} GPU(s) "
            f"asked for, but device: cpu trains on the CPU: expected gpus: 0, or device: "
            f"auto or cuda"
        )
