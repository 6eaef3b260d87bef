"""`validate_params`: a whole loaded params.yaml checked from the file alone, in a fixed
order (top-level keys, scalars, each section, then what relates runs), so the first bad
key is the one named; with a prepared manifest of the same data section, also the data
needs against the prepared images."""

from __future__ import annotations

from bowflow.paramcheck.cross_run import (
    check_batches_static,
    check_few_shot_way,
    check_gpus_for_device,
    check_layers,
    check_parents,
    check_patches,
    check_resources,
)
from bowflow.paramcheck.data_needs import data_needs
from bowflow.paramcheck.run_sections import check_generations, check_pretrain, check_supervised
from bowflow.paramcheck.runs import RUN_SECTIONS
from bowflow.paramcheck.schema import RUN_NAME, check_scalars, check_section
from bowflow.sections import (
    DataParams,
    DetectionParams,
    EvalParams,
    FineTuneParams,
    ParamsError,
    ReportParams,
    TransferParams,
    TransferSourceParams,
    check_data_needs,
)

TOP_LEVEL = {
    "seed": int,
    "seeds": list,
    "device": str,
    "compute": str,
    "data": DataParams,
    **{section: dict for section in RUN_SECTIONS},  # pretrain, generations, teachers, distill
    "evaluate": EvalParams,
    "report": ReportParams,
    "resources": dict,
}
# Sections a params.yaml may leave out: each adds stages when present (workflow/pipeline.py).
OPTIONAL = {"finetune": FineTuneParams, "transfer": TransferParams, "detection": DetectionParams}


def check_optional(key: str, section: type, values: object):
    """One optional section; `transfer:` also checks each of its sources (`check_transfer`)."""
    return check_transfer(values) if key == "transfer" else check_section(section, values, key)


def check_transfer(values: object) -> TransferParams:
    """`transfer:` -> TransferParams whose `sources` maps each name to its checked
    TransferSourceParams (keys and values; what each needs on disk is
    `bowflow.paramcheck.probes.check_transfer_roots`, run by check_params)."""
    section = check_section(TransferParams, values, "transfer")
    checked = {}
    for name, spec in section.sources.items():
        where = f"transfer.sources.{name}"
        if not isinstance(name, str) or not RUN_NAME.match(name):
            raise ParamsError(
                f"{where}: a source name must start with a letter or digit and hold only letters, digits, "
                f"'_' and '-' (it names data/transfer/NAME and the stage prepare_transfer@NAME)"
            )
        source = check_section(TransferSourceParams, spec, where)
        checked[name] = source
    section.sources = checked  # the checked entries, same keys
    return section


def validate_params(params: dict, manifest: dict | None = None) -> dict:
    """Check a loaded params.yaml; raise ParamsError naming the first bad key.

    With the manifest of prepared data made from the same `data` section, the few-shot
    settings are also checked against the novel classes' sizes.
    """
    if not isinstance(params, dict):
        raise ParamsError(f"top level: expected a mapping of sections {sorted(TOP_LEVEL)}, got {params!r}")
    unknown = sorted(set(params) - set(TOP_LEVEL) - set(OPTIONAL))
    if unknown:
        raise ParamsError(
            f"{unknown[0]}: unknown top-level key (expected {sorted(TOP_LEVEL)}, optionally {sorted(OPTIONAL)})"
        )
    missing = sorted(set(TOP_LEVEL) - set(params))
    if missing:
        raise ParamsError(f"{missing[0]}: missing top-level key")
    check_scalars(params)
    pretrain = check_pretrain(params["pretrain"])
    checked = {
        "seeds": list(params["seeds"]),
        "data": check_section(DataParams, params["data"], "data"),
        "pretrain": pretrain,
        "generations": check_generations(params["generations"], pretrain),
        "evaluate": check_section(EvalParams, params["evaluate"], "evaluate"),
        "report": check_section(ReportParams, params["report"], "report"),
        **{key: check_optional(key, section, params[key]) for key, section in OPTIONAL.items() if key in params},
    }
    checked["teachers"], checked["distill"] = check_supervised(
        params["teachers"], params["distill"], set(pretrain) | set(checked["generations"])
    )
    check_parents(checked)
    check_few_shot_way(checked)
    check_layers(checked)
    check_patches(checked)
    check_batches_static(checked)
    checked["resources"] = check_resources(params["resources"], checked)
    check_gpus_for_device(checked["resources"], params["device"])
    recorded = (manifest or {}).get("source", {})
    # counts per class do not depend on the seed (stratified_split), so a manifest of the
    # same data section answers for any seed
    if manifest is not None and all(recorded.get(k) == v for k, v in params["data"].items()):
        data = checked["data"]
        check_data_needs(
            data_needs(checked),
            manifest["counts"],
            manifest["base_classes"],
            manifest["novel_classes"],
            data.ssl_classes,
            data.ssl_max_images,
            "the prepared data (its manifest)",
            manifest.get("totals", {}).get("unlabelled", 0),
            data.unlabelled_use,
        )
    return checked
