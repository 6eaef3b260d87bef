"""The schema of params.yaml and its validation.

Each section is a dataclass; stages parse their section from command-line flags with
`bowflow.cli.parse_section`, and `validate_params` checks a whole params.yaml up front
(unknown keys, wrong types, impossible values, generation parents, every layer name
against its run's architecture) so that a mistake stops the pipeline with a message naming
the key before any work starts. What only the images can answer (enough novel-class images
for the few-shot episodes, a batch no larger than its run's training images) is written
into the check_params stamp (`data_needs`) and checked by the prepare stage as soon as it
has read the images, still before any training stage.

    python -m bowflow.config params.yaml     # check a params file (make run does this)
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import sys
import typing
import unicodedata
from pathlib import Path
from typing import Any

from bowflow.compute import parse_mode
from bowflow.data.scan import check_novel_classes, count_class_images, count_images
from bowflow.data.specs import TARBALL_SUFFIXES, DataError
from bowflow.networks import ARCHITECTURES, build_backbone
from bowflow.roles.base import available_methods, get_method
from bowflow.weights import IMPORT, IMPORT_SECTIONS, ImportParams, check_teacher, pipeline_layout, read_import
from bowflow.sections import (RESOURCE_KINDS, DataParams, EvalParams, ParamsError, ReportParams,
                              ResourceParams, VocabParams, check_data_needs, load_yaml)

# ---------------------------------------------------------------------------- params.yaml


TOP_LEVEL = {"seed": int, "seeds": list, "device": str, "compute": str, "data": DataParams, "pretrain": dict,
             "generations": dict, "teachers": dict, "distill": dict, "evaluate": EvalParams,
             "report": ReportParams, "resources": dict}
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")   # names data/models/<name>/ and stages


def check_seeds(seeds: Any) -> None:
    """`seeds:` a non-empty list of distinct integers in numpy's seed range."""
    check_type("seeds", seeds, list)
    if not seeds:
        raise ParamsError("seeds: expected at least one seed, got []")
    for i, seed in enumerate(seeds):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ParamsError(f"seeds[{i}]: expected an integer in [0, 2**32 - 1], got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"seeds: expected distinct seeds, got {seeds}")


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


def check_run_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not RUN_NAME.match(name):
        raise ParamsError(f"{where}: expected a name of letters, digits, '_' and '-' (it names "
                          f"folders and stages), got {name!r}")


def check_pretrain(pretrain: Any) -> dict:
    """Each entry of `pretrain:` is a named run: a method and its parameters."""
    if not isinstance(pretrain, dict) or not pretrain:
        raise ParamsError("pretrain: expected a non-empty mapping run name -> {method: ..., ...}")
    checked = {}
    for name, section in pretrain.items():
        check_run_name(name, f"pretrain.{name}")
        where = f"pretrain.{name}"
        params_cls = method_params(section, where)
        check_role(section["method"], "pretrain", where)
        checked[name] = check_import(check_section(params_cls, section, where), "pretrain", where)
    return checked


def check_import(run: Any, section: str, where: str) -> Any:
    """An imported run (`method: import`, bowflow/weights.py): its file read and checked
    against its architecture (a missing key, an unexpected one, a shape: ParamsError naming
    `where`.weights, the file and the key); -> the run with a bowflow file's own arch, width
    and depth. Any other run is returned as it is."""
    if not isinstance(run, ImportParams):
        return run
    try:
        imported = read_import(run)
        if section == "teachers":
            check_teacher(imported, run.weights)
    except ValueError as error:
        first = str(error).split(" ", 1)[0].rstrip(":")
        key = first if first in ("arch", "width", "depth") else "weights"
        raise ParamsError(f"{where}.{key}: {error}") from None
    return imported.params


def check_section(cls: type, values: Any, where: str) -> Any:
    """Check keys and types of one section against dataclass `cls`; return an instance."""
    if not isinstance(values, dict):
        raise ParamsError(f"{where}: expected a mapping of {cls.__name__} keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names), key=str)
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]}: unknown key{did_you_mean(unknown[0], names)} "
                          f"(expected one of {names})")
    for key, value in values.items():
        check_type(f"{where}.{key}", value, hints[key])
    try:
        section = cls(**values)
        section.validate()
    except ValueError as error:
        first = str(error).split(" ", 1)[0]
        key = f"{where}.{first}" if first in names else where   # name the key when the message does
        raise ParamsError(f"{key}: {error}") from None
    return section


def did_you_mean(key: Any, names: list[str]) -> str:
    close = difflib.get_close_matches(str(key), names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_type(where: str, value: Any, kind: Any) -> None:
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        (item,) = typing.get_args(kind)[:1]
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list of {item.__name__}, got {value!r}")
        for i, v in enumerate(value):
            check_type(f"{where}[{i}]", v, item)
        return
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, kind))
    if not ok:
        hint = (f" (quote it: '{value}')" if kind is str and isinstance(value, (int, float))
                and not isinstance(value, bool) else "")
        raise ParamsError(f"{where}: expected {kind.__name__}, got {value!r}{hint}")
    if kind is float and not math.isfinite(value):
        raise ParamsError(f"{where}: expected a finite number, got {value!r}")


def check_generations(generations: Any, pretrain: dict) -> dict:
    """Every generation names an existing parent: a pretrain run or a generation defined
    above it (so the chain has no cycle), and no name is used twice."""
    if not isinstance(generations, dict):
        raise ParamsError("generations: expected a mapping name -> {parent, vocab, student} ({} for none)")
    checked, known = {}, set(pretrain)
    for name, item in generations.items():
        where = f"generations.{name}"
        check_run_name(name, where)
        if name in pretrain:
            raise ParamsError(f"{where}: '{name}' is already a pretrain run's name; pick another")
        if not isinstance(item, dict) or set(item) != {"parent", "vocab", "student"}:
            if isinstance(item, dict) and set(item) - {"parent", "vocab", "student"}:
                extra = sorted(set(item) - {"parent", "vocab", "student"}, key=str)[0]
                raise ParamsError(f"{where}.{extra}: unknown key"
                                  f"{did_you_mean(extra, ['parent', 'student', 'vocab'])} (expected "
                                  f"exactly the keys ['parent', 'student', 'vocab'])")
            got = sorted(item, key=str) if isinstance(item, dict) else item
            raise ParamsError(f"{where}: expected exactly the keys ['parent', 'student', 'vocab'], got {got}")
        parent = item["parent"]
        if not isinstance(parent, str):
            raise ParamsError(f"{where}.parent: expected the name of one run (str), got {parent!r}")
        if parent == name:
            raise ParamsError(f"{where}.parent: a generation cannot be its own parent "
                              f"(expected a pretrain run or a generation defined above '{name}')")
        if parent not in known:
            raise ParamsError(f"{where}.parent: '{parent}' is not a pretrain run or a "
                              f"generation defined above it (known: {sorted(known)})"
                              + parent_cycle(generations, name))
        vocab = check_section(VocabParams, item["vocab"], f"{where}.vocab")
        student_cls = method_params(item["student"], f"{where}.student")
        check_role(item["student"]["method"], "generations", f"{where}.student")
        student = check_section(student_cls, item["student"], f"{where}.student")
        checked[name] = {"parent": parent, "vocab": vocab, "student": student}
        known.add(name)
    return checked


def check_supervised(teachers: Any, distill: Any, taken: set[str]) -> tuple[dict, dict]:
    """`teachers:` entries train from labels alone (method `supervised`); each `distill:`
    entry names a distillation method and a `teacher` from `teachers:`. Every name is new
    (run names share data/models/). -> (checked teachers, checked distill runs)."""
    checked = []
    for section, entries in (("teachers", teachers), ("distill", distill)):
        if not isinstance(entries, dict):
            raise ParamsError(f"{section}: expected a mapping run name -> {{method: ..., ...}} ({{}} for none)")
        runs = {}
        for name, values in entries.items():
            where = f"{section}.{name}"
            check_run_name(name, where)
            if name in taken:
                raise ParamsError(f"{where}: '{name}' is already the name of another run; pick another")
            params_cls = method_params(values, where)
            cls = None if values["method"] == IMPORT else get_method(values["method"])
            check_role(values["method"], section, where)
            run = check_import(check_section(params_cls, values, where), section, where)
            network = run_architecture(run, where)
            if section == "distill":
                if run.teacher not in checked[0]:
                    raise ParamsError(f"{where}.teacher: {run.teacher!r} is not an entry of teachers: "
                                      f"(known: {sorted(checked[0])})")
                teacher = checked[0][run.teacher]
                try:
                    cls.check_pair(run, network, run_architecture(teacher, f"teachers.{run.teacher}"))
                except ValueError as error:
                    raise ParamsError(keyed(where, str(error), params_cls)
                                      + f" (teacher '{run.teacher}': {teacher.arch})") from None
            runs[name] = run
            taken.add(name)
        checked.append(runs)
    return checked[0], checked[1]


def methods_of(section: str) -> list[str]:
    """Registered methods whose role runs them from `section` ('pretrain', 'generations',
    'teachers', 'distill')."""
    return [m for m in available_methods() if get_method(m).section == section]


def distillation_methods() -> list[str]:
    """Registered methods that distil a teacher (role Distiller)."""
    return methods_of("distill")


ROLE_OF_SECTION = {"pretrain": "a self-supervised method (learns from images alone)",
                   "generations": "a BoW student (learns from a vocabulary's BoW codes, e.g. bownet)",
                   "teachers": "a supervised method (learns from labels alone, method: supervised)",
                   "distill": "a distillation method (learns from a teacher)"}


def check_role(method: str, section: str, where: str) -> None:
    """The method's role must be the one `section` runs (its stage gives only that role's
    inputs): ParamsError naming `where`.method otherwise. `import` (a weights file as a run)
    belongs in pretrain: and teachers:."""
    if method == IMPORT:
        if section not in IMPORT_SECTIONS:
            raise ParamsError(f"{where}.method: 'import' (a weights file as a run) belongs in "
                              f"{' or '.join(s + ':' for s in IMPORT_SECTIONS)}, not in {section}:")
        return
    cls = get_method(method)
    if cls.section != section:
        raise ParamsError(f"{where}.method: '{method}' is {ROLE_OF_SECTION.get(cls.section, cls.role)}, "
                          f"so its runs belong in {cls.section}:; an entry of {section}: must be "
                          f"{ROLE_OF_SECTION[section]}: one of {methods_of(section)}")


@functools.lru_cache(maxsize=None)
def architecture(arch: str, width: int, depth: int):
    """The Backbone a run builds, made on PyTorch's meta device: stage names, channels and
    reductions without allocating or initialising a weight (a WRN-28-10 in 0.1 s instead of
    1.5 s), so check_params can check every run's layer names. Cached; never run it."""
    import torch

    with torch.device("meta"):
        return build_backbone(arch, width, depth)


def run_architecture(run: Any, where: str):
    """`architecture` of a checked run section; a size the builder refuses (a resnet depth
    other than 18/34, a wrn depth not 6n + 4) is a ParamsError naming `where`'s key."""
    try:
        return architecture(run.arch, run.width, run.depth)
    except ValueError as error:
        key = next((k for k in ("depth", "width") if k in str(error).split()), "arch")
        raise ParamsError(f"{where}.{key}: {error} (arch '{run.arch}', width {run.width}, "
                          f"depth {run.depth})") from None


def keyed(where: str, message: str, cls: type) -> str:
    """'hint_stage: the student has ...' from section `where` -> 'where.hint_stage: the
    student has ...': a message that starts with one of `cls`'s keys names it in full."""
    first, _, rest = message.partition(" ")
    name = first.rstrip(":=")
    if name in {f.name for f in dataclasses.fields(cls)}:
        return f"{where}.{name}: {rest if first.endswith(':') else message}"
    return f"{where}: {message}"


def check_layers(checked: dict) -> None:
    """Every layer name against the architecture that must have it, before any training:
    a generation's `vocab.layer` against its parent's backbone, `evaluate.layer` against
    every evaluated model (each pretrain run and generation student). A layer is 'last' or
    one of the backbone's stage names ('stage1', ...). Distillation layer names
    (FitNet's hint_stage) are the methods' `check_pair`, called by `check_supervised`."""
    runs = {name: (run, f"pretrain.{name}") for name, run in checked["pretrain"].items()}
    runs |= {name: (gen["student"], f"generations.{name}.student")
             for name, gen in checked["generations"].items()}
    stages = {name: run_architecture(run, where).stage_names for name, (run, where) in runs.items()}
    for name, (run, where) in runs.items():
        if run.method != IMPORT and get_method(run.method).token_backbone and not hasattr(run_architecture(run, where), "block_tokens"):
            vits = sorted(a for a in ARCHITECTURES if a.startswith("vit"))
            raise ParamsError(f"{where}.arch: method '{run.method}' needs a vision transformer (one of "
                              f"{vits}): '{run.arch}' has no patch tokens")

    def describe(name: str) -> str:
        run, where = runs[name]
        return f"'{name}' ({where}.arch: {run.arch}, stages {stages[name]})"

    for name, gen in checked["generations"].items():
        layer, parent = gen["vocab"].layer, gen["parent"]
        if layer != "last" and layer not in stages[parent]:
            raise ParamsError(f"generations.{name}.vocab.layer: '{layer}' is not a stage of the parent "
                              f"{describe(parent)}: expected 'last' or one of its stages")
    layer = checked["evaluate"].layer
    missing = [name for name in runs if layer != "last" and layer not in stages[name]]
    if missing:
        raise ParamsError(f"evaluate.layer: '{layer}' is not a stage of {describe(missing[0])}"
                          + (f" (nor of {missing[1:]})" if len(missing) > 1 else "")
                          + ": expected 'last' or a stage every pretrain run and generation student has")


# ---------------------------------------------------------------------------- data needs
# What params.yaml asks of the data that only the prepared images can answer (how many
# images each novel class and each run's training set hold). check_params works these out
# (`data_needs`) and writes them in its stamp; the prepare stage checks them against the
# images it has just read, before writing anything (`check_data_needs`), so a few-shot
# shape or a batch the data cannot fill stops before any training stage. The stamp holds
# only the largest demand per image pool, so an edit that does not change one (a new run
# with an ordinary batch, an lr) leaves the stamp, and so the prepare stage, unchanged.

def data_needs(checked: dict) -> dict:
    """-> {"few_shot": {way, shots (the largest), queries}, "ssl_batch": {key, size} | None,
    "labelled_batch": {key, size} | None}: the largest batch of each image pool and the
    first key asking for it (params order)."""
    def largest(runs: list[tuple[str, Any]]) -> dict | None:
        best = None
        for key, run in runs:
            if best is None or run.batch_size > best["size"]:
                best = {"key": f"{key}.batch_size", "size": run.batch_size}
        return best

    evaluate = checked["evaluate"]
    ssl = [(f"pretrain.{n}", r) for n, r in checked["pretrain"].items()]
    ssl += [(f"generations.{n}.student", g["student"]) for n, g in checked["generations"].items()]
    labelled = [(f"teachers.{n}", r) for n, r in checked["teachers"].items()]
    labelled += [(f"distill.{n}", r) for n, r in checked["distill"].items()]
    return {"few_shot": {"way": evaluate.few_shot_way, "shots": max(evaluate.few_shot_shots),
                         "queries": evaluate.few_shot_queries},
            "ssl_batch": largest(ssl), "labelled_batch": largest(labelled)}


def check_patches(checked: dict) -> None:
    """Every ViT run's patch size divides data.image_size (its tokens tile the image)."""
    size = checked["data"].image_size
    runs = [(f"pretrain.{n}", r) for n, r in checked["pretrain"].items()]
    runs += [(f"generations.{n}.student", g["student"]) for n, g in checked["generations"].items()]
    runs += [(f"{s}.{n}", r) for s in ("teachers", "distill") for n, r in checked[s].items()]
    for where, run in runs:
        patch = getattr(run_architecture(run, where), "patch", 1)
        if size % patch:
            raise ParamsError(f"{where}.arch: '{run.arch}' cuts images into {patch} x {patch} px patches, "
                              f"but data.image_size = {size} is not a multiple of {patch}")


def check_batches_static(checked: dict) -> None:
    """A batch above the image cap its run trains on (data.ssl_max_images for the SSL runs,
    the run's own max_images for a labelled one) is known from the params alone."""
    cap = checked["data"].ssl_max_images
    ssl = [(f"pretrain.{n}", r) for n, r in checked["pretrain"].items()]
    ssl += [(f"generations.{n}.student", g["student"]) for n, g in checked["generations"].items()]
    for where, run in ssl:
        if 0 < cap < run.batch_size:
            raise ParamsError(f"{where}.batch_size: {run.batch_size} images per step, but the run trains "
                              f"on data.ssl_max_images = {cap} images: expected a batch_size <= {cap}")
    for section in ("teachers", "distill"):
        for name, run in checked[section].items():
            cap = getattr(run, "max_images", 0)
            if 0 < cap < run.batch_size:
                raise ParamsError(f"{section}.{name}.batch_size: {run.batch_size} images per step, but "
                                  f"the run trains on its max_images = {cap} images: expected a "
                                  f"batch_size <= {cap}")


def check_resources(values, checked: dict) -> dict:
    """resources: one ResourceParams per kind of stage (RESOURCE_KINDS), and every training
    run's batch split evenly over its stage's processes (each takes batch_size / processes
    rows of every global batch)."""
    if not isinstance(values, dict):
        raise ParamsError(f"resources: expected a mapping with keys {list(RESOURCE_KINDS)}, got {values!r}")
    for kind in values:
        if kind not in RESOURCE_KINDS:
            raise ParamsError(f"resources.{kind}: unknown stage kind{did_you_mean(kind, list(RESOURCE_KINDS))} "
                              f"(expected {list(RESOURCE_KINDS)})")
    missing = [k for k in RESOURCE_KINDS if k not in values]
    if missing:
        raise ParamsError(f"resources.{missing[0]}: missing (expected an entry for each of "
                          f"{list(RESOURCE_KINDS)}; dvc.yaml's commands read them)")
    resources = {kind: check_section(ResourceParams, values[kind], f"resources.{kind}")
                 for kind in RESOURCE_KINDS}
    if resources["other"].processes != 1:
        raise ParamsError(f"resources.other.processes: the stages that train nothing run one process, "
                          f"got {resources['other'].processes}")
    runs = [("pretrain", f"pretrain.{n}", r) for n, r in checked["pretrain"].items()]
    runs += [("student", f"generations.{n}.student", g["student"]) for n, g in checked["generations"].items()]
    runs += [("teacher", f"teachers.{n}", r) for n, r in checked["teachers"].items()]
    runs += [("distill", f"distill.{n}", r) for n, r in checked["distill"].items()]
    for kind, where, run in runs:
        processes = resources[kind].processes
        if run.batch_size % processes:
            raise ParamsError(f"{where}.batch_size: {run.batch_size} does not split over "
                              f"resources.{kind}.processes = {processes}: expected a multiple of {processes}")
    return resources


def gpu_warnings(checked: dict) -> list[str]:
    """Why a run asking for GPUs (resources.KIND.gpus > 0) would not get them on this
    machine: one line per stage kind, empty when torch sees enough GPUs. Warnings, not
    errors: under a cluster executor (SLURM) the training jobs run elsewhere, with the GPUs
    the cluster gives them; a training stage run here stops before any work (its --gpus)."""
    import torch

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"resources.{kind}.gpus = {r.gpus}, but torch sees {seen} GPU(s) on this machine "
            f"(torch.cuda.is_available() is {torch.cuda.is_available()}): its training stages stop "
            f"with an error if run here; set resources.{kind}.gpus: 0 to train on the CPU"
            for kind, r in checked["resources"].items() if r.gpus > seen]


def parent_cycle(generations: dict, start: str) -> str:
    """Why `start`'s parent is not known yet: '; the parents form a cycle a -> b -> a' when
    following parents loops back, '; move 'b' above 'a'' when the parent is defined below."""
    chain, name = [start], start
    while True:
        item = generations.get(name)
        parent = item.get("parent") if isinstance(item, dict) else None
        if not isinstance(parent, str) or parent not in generations:
            later = generations[start].get("parent")
            return f"; move '{later}' above '{start}'" if later in generations else ""
        chain.append(parent)
        if parent in chain[:-1]:
            return f"; the parents form a cycle {' -> '.join(chain[chain.index(parent):])}"
        name = parent


def method_params(section: Any, where: str) -> type:
    if not isinstance(section, dict) or "method" not in section:
        raise ParamsError(f"{where}.method: missing (expected a registered method name)")
    if section["method"] == IMPORT:
        return ImportParams
    try:
        return get_method(section["method"]).Params
    except ValueError as error:
        raise ParamsError(f"{where}.method: {error}") from None


def validate_params(params: dict, manifest: dict | None = None) -> dict:
    """Check a loaded params.yaml; raise ParamsError naming the first bad key.

    With the manifest of prepared data made from the same `data` section, the few-shot
    settings are also checked against the novel classes' sizes.
    """
    if not isinstance(params, dict):
        raise ParamsError(f"top level: expected a mapping of sections {sorted(TOP_LEVEL)}, got {params!r}")
    unknown = sorted(set(params) - set(TOP_LEVEL))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown top-level key (expected {sorted(TOP_LEVEL)})")
    missing = sorted(set(TOP_LEVEL) - set(params))
    if missing:
        raise ParamsError(f"{missing[0]}: missing top-level key")
    check_type("seed", params["seed"], int)
    if not 0 <= params["seed"] < 2**32:
        raise ParamsError(f"seed: expected an integer in [0, 2**32 - 1] (numpy's seed range), "
                          f"got {params['seed']}")
    check_seeds(params["seeds"])
    check_type("compute", params["compute"], str)
    try:
        parse_mode(params["compute"])
    except ValueError as error:
        raise ParamsError(f"compute: {error}") from None
    check_type("device", params["device"], str)
    if not (params["device"] in ("auto", "cpu") or params["device"].startswith("cuda")):
        raise ParamsError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got '{params['device']}'")
    pretrain = check_pretrain(params["pretrain"])
    checked = {"seeds": list(params["seeds"]), "data": check_section(DataParams, params["data"], "data"),
               "pretrain": pretrain,
               "generations": check_generations(params["generations"], pretrain),
               "evaluate": check_section(EvalParams, params["evaluate"], "evaluate"),
               "report": check_section(ReportParams, params["report"], "report")}
    checked["teachers"], checked["distill"] = check_supervised(
        params["teachers"], params["distill"], set(pretrain) | set(checked["generations"]))
    for name, gen in checked["generations"].items():
        parent = pretrain.get(gen["parent"]) or checked["generations"][gen["parent"]]["student"]
        try:
            gen["student"].check_parent(parent)
        except ValueError as error:
            raise ParamsError(f"generations.{name}.student: {error}") from None
    novel = checked["data"].novel_classes
    if checked["evaluate"].few_shot_way > len(novel):
        raise ParamsError(f"evaluate.few_shot_way: {checked['evaluate'].few_shot_way}-way episodes need "
                          f"as many novel classes, but data.novel_classes lists {len(novel)}")
    check_layers(checked)
    check_patches(checked)
    check_batches_static(checked)
    checked["resources"] = check_resources(params["resources"], checked)
    asking = [kind for kind, r in checked["resources"].items() if r.gpus]
    if asking and params["device"] == "cpu":
        raise ParamsError(f"resources.{asking[0]}.gpus: {checked['resources'][asking[0]].gpus} GPU(s) "
                          f"asked for, but device: cpu trains on the CPU: expected gpus: 0, or device: "
                          f"auto or cuda")
    recorded = (manifest or {}).get("source", {})
    # counts per class do not depend on the seed (stratified_split), so a manifest of the
    # same data section answers for any seed
    if manifest is not None and all(recorded.get(k) == v for k, v in params["data"].items()):
        data = checked["data"]
        check_data_needs(data_needs(checked), manifest["counts"], manifest["base_classes"],
                         manifest["novel_classes"], data.ssl_classes, data.ssl_max_images,
                         "the prepared data (its manifest)", manifest.get("totals", {}).get("unlabelled", 0),
                         data.unlabelled_use)
    return checked


def read_yaml(path: Path, what: str) -> Any:
    """`load_yaml` for a user's file: a missing or malformed file is a ParamsError naming it."""
    from ruamel.yaml import YAMLError
    if not path.is_file():
        raise ParamsError(f"{path}: {what} not found" + (" (it is a folder)" if path.is_dir() else "")
                          + ": expected a YAML file")
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


def check_environment(checked: dict, params: dict) -> None:
    """What `validate_params` cannot see from the file alone: the data root exists (for an
    image folder, or a torchvision source without download); for an image folder (not a
    tarball), its class folders hold the novel classes with enough images for the few-shot
    episodes (files counted, nothing decoded); and a requested GPU is here.

    Run by the check_params stage (`main`); relative paths are taken from the working
    directory, as the stages see them.
    """
    from bowflow.runtime import resolve_device

    data = checked["data"]
    root = Path(data.root) if data.root else None
    if data.source == "imagefolder" and not root.exists():
        raise ParamsError(f"data.root: '{data.root}' does not exist: expected a folder of class "
                          f"folders, or a .tar.gz of one")
    if data.source == "imagefolder" and root.is_file() and not root.name.lower().endswith(TARBALL_SUFFIXES):
        raise ParamsError(f"data.root: '{data.root}' is a file but not a tarball: expected a folder "
                          f"of class folders or a {', '.join(TARBALL_SUFFIXES)} of one")
    if data.source == "imagefolder":
        try:
            found = count_class_images(root)
            if found is not None:
                folder, counts = found
                check_novel_classes(data.novel_classes, counts, folder)
                novel = [unicodedata.normalize("NFC", c) for c in data.novel_classes]  # as folders are
                checked["evaluate"].check_against({"novel_classes": novel, "counts": {"all": counts}},
                                                  f"the image files under '{data.root}'")
        except DataError as error:
            raise ParamsError(str(error)) from None
        except ValueError as error:
            raise ParamsError(f"evaluate.{error}") from None
    check_unlabelled(checked)
    torchvision = data.source not in ("digits", "imagefolder")
    if torchvision and not data.download and (root is None or not root.exists()):
        raise ParamsError(f"data.root: '{data.root}' does not exist: expected a folder holding a local "
                          f"copy of {data.source}, or set data.download: true")
    try:
        resolve_device(params["device"])
    except SystemExit as error:
        raise ParamsError(str(error.code)) from None


def check_unlabelled(checked: dict) -> None:
    """data.unlabelled, when set: it exists, is a folder or a tarball, and a folder holds image
    files at some depth (counted, nothing decoded: unreadable files are named by the
    prepare stage, which decodes them, before any training); with unlabelled_use
    'replace', the largest SSL batch fits in them."""
    data = checked["data"]
    if not data.unlabelled:
        return
    root = Path(data.unlabelled)
    if not root.exists():
        raise ParamsError(f"data.unlabelled: '{data.unlabelled}' does not exist: expected a folder of "
                          f"images (any depth) or a .tar.gz of one")
    if root.is_file() and not root.name.lower().endswith(TARBALL_SUFFIXES):
        raise ParamsError(f"data.unlabelled: '{data.unlabelled}' is a file but not a tarball: expected a "
                          f"folder of images or a {', '.join(TARBALL_SUFFIXES)} of one")
    try:
        found = count_images(root)
    except DataError as error:
        raise ParamsError(str(error)) from None
    batch = data_needs(checked)["ssl_batch"]
    if found is not None and data.unlabelled_use == "replace" and batch:
        pool = min(found, data.ssl_max_images) if data.ssl_max_images > 0 else found
        if batch["size"] > pool:
            raise ParamsError(f"{batch['key']}: {batch['size']} images per step, but the run trains on "
                              f"only {pool} images (the image files under data.unlabelled '{data.unlabelled}'"
                              f"{', at most data.ssl_max_images' if data.ssl_max_images > 0 else ''}): "
                              f"expected a batch_size <= {pool}")


def run_names(checked: dict) -> list[str]:
    """Every run the params name (pretrain:, generations:, teachers:, distill: entries)."""
    return [name for section in ("pretrain", "generations", "teachers", "distill")
            for name in checked[section]]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Check a params.yaml before any work.")
    parser.add_argument("params", type=Path, nargs="?", default=Path("params.yaml"))
    parser.add_argument("--manifest", type=Path, default=Path("data/prepared/manifest.json"),
                        help="prepared manifest, to check shots against novel class sizes if present")
    parser.add_argument("--stamp", type=Path, help="file to write when the params are valid: JSON of "
                        "what they ask of the data, for `stages.prepare --needs`")
    parser.add_argument("--runs", type=Path, help="file to write when the params are valid: JSON "
                        "{runs: every run they name, seeds: the training seeds}, for `stages.report --runs` (metrics of other runs, "
                        "e.g. left from another params file, stay out of the report)")
    parser.add_argument("--pipeline-seeds", type=int, nargs="+", help="the seeds dvc.yaml has "
                        "stages for (workflow/pipeline.py writes them here): they must be params.yaml's")
    parser.add_argument("--pipeline-layout", nargs="*", help="the runs dvc.yaml spells out "
                        "(bowflow.weights.pipeline_layout: the sections with an imported run; "
                        "workflow/pipeline.py writes them here): they must be params.yaml's")
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
        prefix = "" if message.startswith(f"{args.params}:") or message.startswith(f"{args.manifest}:") \
            else f"{args.params}: "
        print(f"{prefix}{message}", file=sys.stderr)
        return 2
    if args.stamp:   # read by the prepare stage; constant unless a data need changes (see data_needs)
        from bowflow.io import write_json
        write_json(args.stamp, {"params": "valid", "data_needs": data_needs(checked)})
    if args.runs:
        from bowflow.io import write_json
        write_json(args.runs, {"runs": run_names(checked), "seeds": checked["seeds"]})
    print(f"{args.params}: ok", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
