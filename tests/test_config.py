"""params.yaml validation: every mistake is named before any work starts."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from bowflow.config import ParamsError, check_data_needs, data_needs, load_yaml, validate_params

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def params():
    return load_yaml(ROOT / "params.yaml")


def error_of(params) -> str:
    with pytest.raises(ParamsError) as info:
        validate_params(params)
    return str(info.value)


def test_shipped_params_are_valid(params):
    checked = validate_params(params)
    assert list(checked["generations"]) == ["g1", "g2"]
    assert checked["seeds"] == params["seeds"] == [0, 1, 2]
    assert params["compute"] == "fp32-channels-last-t1"  # the mode of record: fp32


# ------------------------------------------------------------------ seeds: and compute:


@pytest.mark.parametrize(
    "seeds, expected",
    [
        ([], "seeds: expected at least one seed, got []"),
        (0, "seeds: expected list, got 0"),
        ("0, 1", "seeds: expected list"),
        ([0, 1, 0], "seeds: expected distinct seeds, got [0, 1, 0]"),
        ([0, 1.5], "seeds[1]: expected an integer"),
        (["1"], "seeds[0]: expected an integer"),
        ([True], "seeds[0]: expected an integer"),
        ([-1], "seeds[0]: expected an integer in [0, 2**32 - 1], got -1"),
        ([2**32], "seeds[0]: expected an integer in [0, 2**32 - 1]"),
    ],
)
def test_seeds_must_be_a_non_empty_list_of_distinct_ints(params, seeds, expected):
    message = error_of(dict(params, seeds=seeds))
    assert message.startswith(expected), message


@pytest.mark.parametrize("seeds", [[0], [7], [2, 0, 1], [0, 2**32 - 1]])
def test_good_seeds_pass_in_their_order(params, seeds):
    assert validate_params(dict(params, seeds=seeds))["seeds"] == seeds


@pytest.mark.parametrize(
    "mode",
    [
        "auto",
        "measure",
        "default",
        "fp32",
        "fp32-channels-last-t1",
        "bf16-channels-last",
        "fp32-channels-last-compile-t2",
        "FP32-t1",
    ],
)
def test_compute_modes_parse(params, mode):
    validate_params(dict(params, compute=mode))


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("fp16", "compute: 'fp16': expected auto, measure, default or <fp32|bf16>"),
        ("fp32-channels_last", "compute: 'fp32-channels_last': expected auto"),
        ("fastest", "compute: 'fastest'"),
        (3, "compute: expected str, got 3"),
        (None, "compute: expected str, got None"),
    ],
)
def test_a_bad_compute_mode_names_the_key(params, mode, expected):
    message = error_of(dict(params, compute=mode))
    assert message.startswith(expected), message
    assert "BOWFLOW_COMPUTE" not in message  # the params key, not the variable


@pytest.mark.parametrize("key", ["seeds", "compute"])
def test_seeds_and_compute_are_required(params, key):
    bad = {k: v for k, v in params.items() if k != key}
    assert error_of(bad) == f"{key}: missing top-level key"


def test_check_params_writes_runs_and_seeds_and_checks_dvc_yamls_seeds(tmp_path, params):
    """--runs writes {runs, seeds}; --pipeline-seeds (dvc.yaml's check_params command) must
    be params.yaml's seeds, else the message says how to rewrite dvc.yaml."""
    import json

    from bowflow.scaffold import write_yaml

    path, runs = tmp_path / "params.yaml", tmp_path / "runs.json"
    write_yaml(dict(params, seeds=[2, 0]), path)
    base = [
        sys.executable,
        "-m",
        "bowflow.config",
        str(path),
        "--manifest",
        str(tmp_path / "none.json"),
        "--runs",
        str(runs),
    ]
    result = subprocess.run([*base, "--pipeline-seeds", "0", "2"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = json.loads(runs.read_text())
    assert written["seeds"] == [2, 0] and {"g0", "g1", "g2"} <= set(written["runs"])
    runs.unlink()
    result = subprocess.run([*base, "--pipeline-seeds", "0", "1", "2"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and not runs.exists()
    assert "seeds: params.yaml lists [2, 0] but dvc.yaml has stages for seeds [0, 1, 2]" in result.stderr
    assert "bin/python -m workflow.pipeline" in result.stderr


def test_the_shipped_dvc_yaml_is_generated_for_the_shipped_seeds():
    result = subprocess.run(
        [sys.executable, "-m", "workflow.pipeline", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    dvc_yaml = (ROOT / "dvc.yaml").read_text()
    assert "--pipeline-seeds 0 1 2" in dvc_yaml
    assert all(f"pretrain_seed{s}:" in dvc_yaml for s in (0, 1, 2)) and "pretrain_seed3:" not in dvc_yaml


@pytest.mark.parametrize("preset", sorted((ROOT / "presets").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_are_valid(preset):
    checked = validate_params(load_yaml(preset))
    expected = "digits" if "digits" in preset.name else "cifar100" if "cifar100" in preset.name else "cifar10"
    assert checked["data"].source == expected
    if expected != "digits":  # torchvision's set, fetched where a user runs it: never ../shared
        assert checked["data"].download and "shared" not in checked["data"].root


def pretrain_methods() -> set[str]:
    from bowflow.roles.base import available_methods, get_method

    return {m for m in available_methods() if get_method(m).section == "pretrain"}


def budget(run: dict) -> tuple:
    """What a fair comparison holds equal: backbone, epochs, batch (and a ViT's optimiser)."""
    return (
        run["arch"],
        run["width"],
        run.get("depth", 0),
        run["epochs"],
        run["batch_size"],
        run.get("optimizer"),
        run.get("lr"),
        run.get("weight_decay"),
    )


def test_family_presets_train_every_method_the_same_way():
    """family-digits runs every method; family-cpu and family-vit-cpu together run every
    method on CIFAR-10 with the same data, evaluation and per-backbone budget."""
    from bowflow.roles.base import get_method

    presets = {
        name: load_yaml(ROOT / "presets" / f"{name}.yaml") for name in ("family-digits", "family-cpu", "family-vit-cpu")
    }
    digits, cpu, vit = (presets[n]["pretrain"] for n in presets)
    assert {r["method"] for r in digits.values()} == pretrain_methods()
    assert {r["method"] for r in [*cpu.values(), *vit.values()]} == pretrain_methods()
    assert presets["family-vit-cpu"]["data"] == presets["family-cpu"]["data"]
    assert presets["family-vit-cpu"]["evaluate"] == presets["family-cpu"]["evaluate"]
    for name, runs in (("family-digits", [*digits.values()]), ("family-cpu", [*cpu.values(), *vit.values()])):
        trained = [r for r in runs if r["method"] not in ("rotnet", "random_init")]
        convnets = {
            budget(r) for r in trained if not get_method(r["method"]).token_backbone and not r["arch"].startswith("vit")
        }
        vits = {budget(r) for r in trained if r["arch"].startswith("vit")}
        assert len(convnets) == 1, f"{name}: every convnet method gets the same backbone and budget"
        assert len(vits) == 1, f"{name}: every ViT method gets the same backbone and budget"


def test_distill_presets_run_every_method_on_the_ifacd_papers_pairs():
    from bowflow.config import distillation_methods

    cpu, gpu = (load_yaml(ROOT / "presets" / f"distill-{kind}.yaml") for kind in ("cpu", "cifar100-gpu"))
    assert {r["method"] for r in cpu["distill"].values()} == set(distillation_methods())
    assert len(cpu["distill"]) == 13 and {r["teacher"] for r in cpu["distill"].values()} == {"resnet56"}
    pairs = {(r["teacher"], r["arch"]) for r in gpu["distill"].values()}
    assert len(pairs) == 6 and len(gpu["distill"]) == 6 * 13
    assert all(r["epochs"] == 240 and r["lr_schedule"] == "step" for r in gpu["distill"].values())
    for teacher, student in pairs:  # each pair's vanilla student is a teachers: run too
        assert teacher in gpu["teachers"] and any(t["arch"] == student for t in gpu["teachers"].values())


def test_gpu_preset_scales_the_cpu_preset_through_params_only():
    """Same data split and recipe; only network size, epochs, batch and vocabulary differ."""
    cpu, gpu = (load_yaml(ROOT / "presets" / f"cifar10-{kind}.yaml") for kind in ("cpu", "gpu"))
    assert cpu["data"] == gpu["data"] and cpu["seed"] == gpu["seed"]
    scale = {"arch", "width", "depth", "epochs", "batch_size", "size", "samples"}
    for a, b in [(cpu["evaluate"], gpu["evaluate"]), (cpu["pretrain"]["g0"], gpu["pretrain"]["g0"])]:
        assert {k for k in a if a[k] != b[k]} <= scale
    for gen in cpu["generations"]:
        for part in ("vocab", "student"):
            a, b = cpu["generations"][gen][part], gpu["generations"][gen][part]
            assert {k for k in a if a[k] != b[k]} <= scale
    assert gpu["pretrain"]["g0"]["epochs"] > cpu["pretrain"]["g0"]["epochs"]


def test_unknown_key_is_named(params):
    bad = copy.deepcopy(params)
    bad["pretrain"]["g0"]["epoch"] = 3
    message = error_of(bad)
    assert "pretrain.g0.epoch" in message and "unknown key" in message


def test_wrong_type_is_named(params):
    bad = copy.deepcopy(params)
    bad["pretrain"]["g0"]["epochs"] = "ten"
    assert "pretrain.g0.epochs: expected int, got 'ten'" in error_of(bad)


def test_vocabulary_larger_than_sample(params):
    bad = copy.deepcopy(params)
    bad["generations"]["g1"]["vocab"] = dict(bad["generations"]["g1"]["vocab"], size=5000, samples=1000)
    message = error_of(bad)
    assert "generations.g1.vocab" in message and "size (K=5000)" in message and "samples (1000)" in message


def test_unknown_parent(params):
    bad = copy.deepcopy(params)
    bad["generations"]["g2"]["parent"] = "g7"
    assert "generations.g2.parent: 'g7'" in error_of(bad)


def test_unknown_method_and_arch(params):
    bad = copy.deepcopy(params)
    bad["pretrain"]["g0"]["method"] = "rotnett"
    assert "pretrain.g0.method" in error_of(bad) and "rotnet" in error_of(bad)
    bad = copy.deepcopy(params)
    bad["pretrain"]["g0"]["arch"] = "vgg"
    assert "arch must be one of" in error_of(bad)


@pytest.mark.parametrize(
    "arch, width, depth",
    [
        ("resnet56", 0, 0),
        ("resnet56", 16, 56),
        ("resnet8x4", 0, 8),
        ("wrn_40_2", 0, 0),
        ("wrn_40_2", 2, 40),
        ("vgg8", 64, 0),
    ],
)
def test_named_arch_takes_width_and_depth_zero_or_its_own(params, arch, width, depth):
    run = dict(params["pretrain"]["g0"], arch=arch, width=width, depth=depth)
    checked = validate_params(dict(params, pretrain={"g0": run}, generations={}))
    assert checked["pretrain"]["g0"].arch == arch


@pytest.mark.parametrize(
    "arch, width, depth, key", [("resnet56", 4, 0, "width"), ("wrn_40_2", 0, 28, "depth"), ("vgg13", 64, 8, "depth")]
)
def test_named_arch_with_another_size_is_named(params, arch, width, depth, key):
    run = dict(params["pretrain"]["g0"], arch=arch, width=width, depth=depth)
    message = error_of(dict(params, pretrain={"g0": run}, generations={}))
    assert f"pretrain.g0.{key}: {key} must be 0" in message and f"'{arch}'" in message


def test_more_shots_than_a_novel_class_holds(params):
    manifest = {
        "source": params["data"],
        "base_classes": ["0"],
        "novel_classes": ["5", "6"],
        "counts": {"train": {"0": 900, "5": 30, "6": 100}, "test": {"0": 90, "5": 10, "6": 20}},
    }
    bad = copy.deepcopy(params)
    bad["evaluate"]["few_shot_way"] = 2
    with pytest.raises(ParamsError) as info:
        validate_params(bad, manifest)
    message = str(info.value)
    assert message.startswith("evaluate.few_shot_shots: 50 support") and "class '5' has 40" in message
    assert "65 images of each novel class" in message and "'6' has" not in message


def test_command_line_check_exits_nonzero(tmp_path, params):
    bad = copy.deepcopy(params)
    bad["evaluate"]["knn_k"] = -1
    path = tmp_path / "params.yaml"
    from bowflow.scaffold import write_yaml

    write_yaml(bad, path)
    result = subprocess.run(
        [sys.executable, "-m", "bowflow.config", str(path), "--manifest", str(tmp_path / "none.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "evaluate" in result.stderr and "knn_k must be > 0" in result.stderr


def test_sources_are_defined_once():
    """sections.DataParams validates data.source against the list data.sources.load_source serves."""
    import bowflow.config
    import bowflow.data.sources

    assert bowflow.sections.SOURCES is bowflow.data.sources.SOURCES


def test_bad_key_of_a_section_is_named_in_full(params):
    bad = copy.deepcopy(params)
    bad["generations"]["g1"]["student"] = dict(bad["generations"]["g1"]["student"], epochs=-3)
    assert error_of(bad).startswith("generations.g1.student.epochs: epochs must be > 0")


def distill_params(params, **changes):
    """The shipped params plus a teacher (resnet56), a vanilla resnet20 and one `distill` run."""
    from bowflow.scaffold import distill_runs

    p = copy.deepcopy(params)
    teachers, distill = distill_runs(["kd"])
    p["teachers"] = {
        "t56": dict(teachers["teacher"], arch="resnet56", width=0),
        "s20": dict(teachers["vanilla"], arch="resnet20", width=0),
    }
    p["distill"] = {"run": dict(distill["kd"], arch="resnet20", width=0, teacher="t56") | changes}
    return p


def test_distillation_runs_are_checked(params):
    checked = validate_params(distill_params(params))
    assert checked["distill"]["run"].teacher == "t56"


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"teacher": "nobody"}, "distill.run.teacher: 'nobody' is not an entry of teachers:"),
        ({"method": "byol"}, "distill.run.method: 'byol' is a self-supervised method"),
        ({"method": "at", "arch": "vgg8"}, "at pairs the networks' stages one to one"),
        ({"method": "ifacd", "layers": 4}, "distill.run.layers: layers = 4, but the teacher has only 3 stages"),
        ({"method": "fitnet", "hint_stage": "stage5"}, "distill.run.hint_stage: the student has no stage 'stage5'"),
        ({"gamma": -1.0}, "distill.run.gamma: gamma must be >= 0"),
    ],
)
def test_bad_distillation_run_is_named(params, changes, expected):
    assert expected in error_of(distill_params(params, **changes))


def test_teacher_must_train_from_labels(params):
    p = distill_params(params)
    p["teachers"]["t56"]["method"] = "kd"
    assert (
        "teachers.t56.method: 'kd' is a distillation method (learns from a teacher), so its runs belong in "
        "distill:" in error_of(p)
    )
    p = distill_params(params)
    p["distill"]["g1"] = p["distill"].pop("run")
    assert "distill.g1: 'g1' is already the name of another run" in error_of(p)


COUNTS = {"train": {"a": 40, "b": 60, "n1": 30, "n2": 30}, "test": {"a": 10, "b": 10, "n1": 10, "n2": 10}}
NEEDS = {
    "few_shot": {"way": 2, "shots": 20, "queries": 15},
    "ssl_batch": {"key": "pretrain.g0.batch_size", "size": 100},
    "labelled_batch": {"key": "teachers.t.batch_size", "size": 160},
}


def needs_error(needs=NEEDS, ssl_classes="base", ssl_max_images=0) -> str | None:
    try:
        check_data_needs(needs, COUNTS, ["a", "b"], ["n1", "n2"], ssl_classes, ssl_max_images, "the data")
    except ParamsError as error:
        return str(error)
    return None


def test_data_needs_at_the_limits_pass():
    """A batch equal to its pool's images, and shots + queries equal to a class's images
    over both splits (40 = 30 train + 10 test), are allowed; one more is named."""
    assert needs_error() is None  # base: 40 + 60 = 100 SSL images
    assert needs_error(NEEDS | {"ssl_batch": {"key": "k.batch_size", "size": 101}}) == (
        "k.batch_size: 101 images per step, but the run trains on only 100 images (the train "
        "split's base classes, data.ssl_classes) of the data: expected a batch_size <= 100"
    )
    few = {"way": 2, "shots": 26, "queries": 15}
    assert needs_error(NEEDS | {"few_shot": few}).startswith(
        "evaluate.few_shot_shots: 26 support (its largest) + 15 queries (evaluate.few_shot_queries) "
        "per class need 41 images of each novel class"
    )
    assert "few_shot_way: 3-way" in needs_error(NEEDS | {"few_shot": {"way": 3, "shots": 1, "queries": 1}})


def test_data_needs_count_the_pool_each_run_trains_on():
    bigger = NEEDS | {"ssl_batch": {"key": "k.batch_size", "size": 160}}
    assert needs_error(bigger, ssl_classes="all") is None  # all classes: 160 SSL images
    assert "only 150 images" in needs_error(bigger, ssl_classes="all", ssl_max_images=150)
    labelled = NEEDS | {"labelled_batch": {"key": "teachers.t.batch_size", "size": 161}}
    assert needs_error(labelled).startswith(
        "teachers.t.batch_size: 161 images per step, but the run "
        "trains on only 160 images (every image of the train split)"
    )
    assert needs_error(NEEDS | {"ssl_batch": None, "labelled_batch": None}) is None


def test_data_needs_name_the_first_largest_batch(params):
    """The stamp holds each pool's largest batch and the first key asking for it, so a new
    run with an ordinary batch leaves it (and the prepare stage) unchanged."""
    more = copy.deepcopy(params)
    more["pretrain"]["rot2"] = dict(more["pretrain"]["g0"], lr=0.05)
    assert data_needs(validate_params(more)) == data_needs(validate_params(params))
    more["generations"]["g2"]["student"] = dict(more["generations"]["g2"]["student"], batch_size=65)
    assert data_needs(validate_params(more))["ssl_batch"] == {"key": "generations.g2.student.batch_size", "size": 65}


@pytest.mark.parametrize(
    "section, method, role",
    [
        ("pretrain", "bownet", "a BoW student"),
        ("pretrain", "supervised", "a supervised method"),
        ("pretrain", "kd", "a distillation method"),
    ],
)
def test_a_run_in_the_wrong_section_names_its_role(params, section, method, role):
    """Each section's stage gives only its role's inputs: a method of another role is refused
    by check_params, naming the key, the method's role and where its runs belong."""
    p = copy.deepcopy(params)
    p[section]["g0"]["method"] = method
    message = error_of(p)
    assert message.startswith(f"{section}.g0.method: '{method}' is {role}"), message


# ------------------------------------------------------------------ resources: (torchrun, SLURM)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda r: r.pop("teacher"), "resources.teacher: missing"),
        (lambda r: r.update(gpu={}), "resources.gpu: unknown stage kind"),
        (lambda r: r["pretrain"].update(processes=0), "resources.pretrain.processes: processes must be > 0"),
        (lambda r: r["student"].update(gpus=2), "resources.student.processes: processes must equal gpus"),
        (lambda r: r["other"].update(processes=2), "resources.other.processes: the stages that train nothing"),
        (lambda r: r["distill"].update(mem=1), "resources.distill.mem: unknown key (did you mean 'mem_mb'?)"),
    ],
)
def test_bad_resources_are_named(params, change, expected):
    bad = copy.deepcopy(params)
    change(bad["resources"])
    assert expected in error_of(bad)


def test_a_batch_that_does_not_split_over_the_processes_is_named(params):
    bad = copy.deepcopy(params)
    bad["resources"]["pretrain"]["processes"] = 3
    batch = bad["pretrain"]["g0"]["batch_size"]
    assert batch % 3, "params.yaml's g0 batch must not be a multiple of 3 for this test"
    assert error_of(bad).startswith(
        f"pretrain.g0.batch_size: {batch} does not split over resources.pretrain.processes = 3"
    )
    bad["resources"]["pretrain"]["processes"] = 2  # every batch of params.yaml is even
    validate_params(bad)


@pytest.mark.parametrize(
    "arch, width, depth, size, expected",
    [
        ("vit", 100, 2, 16, "pretrain.g0.width: width must be > 0 and, above 64, a multiple of 64"),
        ("vit", 64, 2, 18, "pretrain.g0.arch: 'vit' cuts images into 4 x 4 px patches, but data.image_size = 18"),
        ("vit_tiny", 128, 0, 32, "pretrain.g0.width: width must be 0 (the architecture's own) or 192"),
    ],
)
def test_bad_vit_fields_are_named(params, arch, width, depth, size, expected):
    run = dict(params["pretrain"]["g0"], arch=arch, width=width, depth=depth)
    data = dict(params["data"], image_size=size)
    assert expected in error_of(dict(params, data=data, pretrain={"g0": run}, generations={}))


def test_a_token_method_on_a_convnet_is_named(params):
    run = {"method": "mae", "arch": "convnet", "width": 8, "epochs": 1, "batch_size": 16}
    message = error_of(dict(params, pretrain={**params["pretrain"], "mae": run}))
    assert "pretrain.mae.arch: method 'mae' needs a vision transformer" in message and "'vit_p2'" in message


@pytest.mark.parametrize("seeds", [3, [], [0, 0], [True], [-1], ["0"]])
def test_workflow_pipeline_refuses_bad_seeds_by_name(tmp_path, params, seeds):
    """`bin/python -m workflow.pipeline` (which writes dvc.yaml from params.yaml's seeds)
    stops on seeds check_params would refuse, naming the key, and writes no dvc.yaml."""
    from bowflow.scaffold import write_yaml

    path, out = tmp_path / "params.yaml", tmp_path / "dvc.yaml"
    write_yaml(dict(params, seeds=seeds), path)
    result = subprocess.run(
        [sys.executable, "-m", "workflow.pipeline", "--params", str(path), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"seeds: expected a non-empty list of distinct integers >= 0, got {seeds!r}" in result.stderr
    assert not out.exists()


def test_the_roles_knowledge_kept_outside_the_role_classes_agrees_with_them():
    """sections.py may not import method code, so it repeats the roles' stage kinds as
    `resources:` keys; the checks' RUN_KINDS say which images each role trains on, which the
    role's own `training_images` decides for the trainer. Both must agree with the roles."""
    from bowflow.paramcheck.runs import RUN_KINDS
    from bowflow.roles.base import Method
    from bowflow.sections import RESOURCE_KINDS

    assert RESOURCE_KINDS == (*(kind.stage for kind in RUN_KINDS), "other")
    for kind in RUN_KINDS:
        own = kind.role.training_images.__func__ is not Method.training_images.__func__
        assert (kind.pool == "labelled") == own, f"{kind.role.__name__}: pool {kind.pool!r}"
