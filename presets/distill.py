"""The distillation presets' spec: presets/distill-*.yaml are this file's output.

    .venv/bin/python presets/distill.py            # rewrite presets/distill-*.yaml from the spec
    .venv/bin/python presets/distill.py --check    # exit 1 naming each committed preset that differs

Edit the grid below, never the YAML; tests/test_presets.py fails while a committed preset
differs from what this file writes. Each YAML stays a plain, complete params file, so
`cp presets/distill-cpu.yaml params.yaml && make run` works as before and DVC (and each
record's dvc.lock) sees every value of every run.

Why a generator and not the alternatives (measured with the installed dvc 3.67.1 in a
scratch project):
- YAML merge keys (`<<:`) in the preset: DVC and bowflow's load_yaml both resolve them, but a
  merged mapping puts the keys a run adds after the merged ones, so a shared recipe anchor
  (`<<: [*recipe, *kd]` plus method, arch, teacher) reorders every run's flags: a different
  stage `cmd` than the records' dvc.lock files hold. Anchoring full runs keeps the order (the
  78 rendered commands are identical) but leaves 672 lines for the CIFAR-100 preset (13 full
  runs, then 4 lines a run), and a top-level home for anchors is refused by validate_params.
- `${...}` inside params.yaml is not interpolated: DVC hands `'${recipe.lr}'` to the stage.
- DVC `matrix:` stages would rewrite dvc.yaml (stage names distill@<pair>-<method>, grid
  keys at the top of params.yaml), and per-method keys are not a cross product.
The YAML is written by ruamel (DVC's YAML library): block mappings in insertion order,
collections of scalars in flow style, which is byte for byte the presets' existing layout.
"""

from __future__ import annotations

import functools
import io
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The IFACD paper's recipe (github.com/arkel23/layerwiseclr): every teacher, vanilla, distilled student (keys in order).
RECIPE = {
    "width": 0,
    "depth": 0,
    "epochs": 240,
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "warmup_epochs": 0.0,
    "lr_schedule": "step",
    "lr_decay_at": [0.625, 0.75, 0.875],
    "optimizer": "sgd",
    "clip_grad": 0.0,
    "collapse_std": 0.01,
    "sync_bn": True,
    "padding": 4,
    "max_images": 0,
}
LOSS = {"alpha": 1.0, "beta": 1.0}  # then each method's gamma, temperature and own keys
TEMPERATURE = 4.0
# run-name prefix -> (method, gamma, the method's own keys), in the tables' row order
METHODS = {
    "kd": ("kd", 0.0, {}),
    "fitnet": ("fitnet", 100.0, {"hint_stage": "stage2"}),
    "at": ("at", 1000.0, {}),
    "sp": ("sp", 3000.0, {}),
    "cc": ("cc", 0.02, {"embed_dim": 128}),
    "vid": ("vid", 1.0, {}),
    "rkd": ("rkd", 1.0, {}),
    "pkt": ("pkt", 30000.0, {}),
    "nst": ("nst", 50.0, {}),
    "crd": ("crd", 0.8, {"embed_dim": 128, "negatives": 16384, "nce_temperature": 0.07, "memory_momentum": 0.5}),
    **{f"ifacd{n}": ("ifacd", 0.8, {"layers": n, "embed_dim": 128, "contrast_temperature": 0.07}) for n in (1, 2, 3)},
}
# `pretrain:` holds one run only because the pipeline's SSL branch needs one: the untrained control.
RANDOM_INIT = {
    "method": "random_init",
    "arch": "resnet20",
    "width": 0,
    "depth": 0,
    "epochs": 1,
    "batch_size": 128,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "warmup_epochs": 1.0,
    "lr_schedule": "cosine",
    "lr_decay_at": [0.625, 0.75, 0.875],
    "optimizer": "sgd",
    "clip_grad": 0.0,
    "collapse_std": 0.01,
    "sync_bn": True,
}
EVALUATE = {
    "layer": "last",
    "batch_size": 512,
    "linear_epochs": 10,
    "knn_k": 20,
    "knn_temperature": 0.07,
    "few_shot_way": 5,
    "few_shot_shots": [1, 5],
    "few_shot_queries": 15,
    "few_shot_episodes": 200,
}
PAPER_PAIRS = [
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("vgg13", "vgg8"),
    ("resnet56", "resnet20"),
    ("resnet32x4", "resnet8x4"),
    ("resnet110", "resnet20"),
]


def data(
    source: str, root: str, image_size: int, novel: list[str], ssl_max_images: int, download: bool = False
) -> dict:
    return {
        "source": source,
        "root": root,
        "download": download,
        "image_size": image_size,
        "test_fraction": 0.25,
        "novel_classes": novel,
        "ssl_classes": "base",
        "ssl_max_images": ssl_max_images,
        "max_bad_fraction": 0.01,
    }


# One entry per preset: its how-to-run header, data, pairs, and what it changes in the recipe
# for teachers (and vanilla students: `teachers:` trains both) and for students.
PRESETS = {
    "distill-cifar100-gpu": dict(
        header="""\
IFACD's CIFAR-100 benchmark (Rios et al., https://github.com/arkel23/layerwiseclr; CRD's,
https://github.com/HobbitLong/RepDistiller) in full, for a GPU (NOT RUN: no GPU was available
to the session that wrote it): six teacher -> student pairs, every method, RepDistiller's recipe
(240 epochs, SGD lr 0.05, wd 5e-4, batch 64, x0.1 at epochs 150/180/210, alpha = beta = 1).
  cp presets/distill-cifar100-gpu.yaml params.yaml && make run
The prepare stage downloads torchvision's CIFAR-100 into data/cifar100 once (online, 169 MB;
offline, put its cifar-100-python/ there first). {teachers} teachers/vanilla students and
{runs} distillation runs: on one GPU budget about a day; `dvc repro distill_seed0@kd-resnet56-resnet20`
runs one cell of the tables (with its teacher). The IFACD paper's figures to compare with are
in its accuracy table (e.g. resnet56 -> resnet20: KD 71.53, CRD 71.45, vanilla 69.0).""",
        data=data(
            "cifar100", "data/cifar100", 32, ["whale", "willow_tree", "wolf", "woman", "worm"], 1000, download=True
        ),
        pairs=PAPER_PAIRS,
        teacher={},
        student={},
        evaluate=EVALUATE,
        gpus=1,
    ),
    "distill-cpu": dict(
        header="""\
Distillation on CIFAR-10 for a 2-core CPU: the IFACD paper's tables (Rios et al.,
https://github.com/arkel23/layerwiseclr) for one pair,
resnet56 -> resnet20, every method (measured: docs/results/distill-cpu/README.md):
  cp presets/distill-cpu.yaml params.yaml && make run
The IFACD paper's recipe (SGD lr 0.05, wd 5e-4, batch 64, x0.1 at 62.5/75/87.5% of the run,
alpha = beta = 1, each method's gamma) with the schedule cut: 5,000 of the 50,000 train
images (a seeded subset, the same for every run), teacher 20 epochs, every student 6
(the vanilla student too: the same schedule as the distilled ones).
Budget on an AVX2-only 2-core CPU: the teacher trains at ~61 images/s (~27 min); each
distillation run (teacher forward + student) costs about 6 min; in all about 2 h.
`pretrain:` holds one run because the pipeline's SSL branch needs one: the
untrained control, the cheapest (1 epoch of BN statistics on 1,000 images).
The prepare stage downloads torchvision's CIFAR-10 into data/cifar10 once (online, 170 MB;
offline, put its cifar-10-batches-py/ there first). The records read a JPEG tarball of it
instead: -S data.source=imagefolder -S data.root=PATH/cifar10-jpeg.tar.gz.""",
        data=data("cifar10", "data/cifar10", 32, ["dog", "frog", "horse", "ship", "truck"], 1000, download=True),
        pairs=[("resnet56", "resnet20")],
        teacher={"epochs": 20, "max_images": 5000},
        student={"epochs": 6, "max_images": 5000},
        evaluate=EVALUATE,
    ),
    "distill-digits": dict(
        header="""\
Distillation on the embedded digits (16 px, 1,347 train / 450 test images): the IFACD
paper's four tables (Rios et al., https://github.com/arkel23/layerwiseclr) for resnet56 -> resnet20
with every method, in minutes on a CPU:
  cp presets/distill-digits.yaml params.yaml && make run
The IFACD paper's recipe (SGD lr 0.05, wd 5e-4, batch 64, x0.1 at 62.5/75/87.5% of the run,
alpha = beta = 1, each method's gamma) cut to 20 epochs for teacher and students; crop
padding 2 px (4 of 32, scaled to 16). Digits are easy: expect every row near the top,
so this preset shows the pipeline and the costs more than the methods' ranking.""",
        data=data("digits", "", 16, ["5", "6", "7", "8", "9"], 0),
        pairs=[("resnet56", "resnet20")],
        teacher={"epochs": 20, "padding": 2},
        student={"epochs": 20, "padding": 2},
        evaluate={**EVALUATE, "linear_epochs": 100, "few_shot_shots": [1, 5, 10, 50], "few_shot_episodes": 1000},
    ),
}
FOOTER = "Written by presets/distill.py from its grid: edit that file, then run it."


def resources(gpus: int) -> dict:
    """params.yaml's resources: one process per training stage (and one GPU each on a GPU
    preset), the other stages on CPU cores (see params.yaml for the keys)."""
    train = {"processes": 1, "gpus": gpus, "threads": 2, "mem_mb": 8000, "runtime": 120}
    return {
        "pretrain": dict(train),
        "student": dict(train),
        "teacher": dict(train),
        "distill": dict(train),
        "other": {"processes": 1, "gpus": 0, "threads": 2, "mem_mb": 4000, "runtime": 60},
    }


def params(spec: dict) -> dict:
    """The preset's params.yaml as a mapping (insertion order is the file's order). Teachers
    and vanilla students in order of first appearance among the pairs; distillation runs pair
    by pair, method by method, named `<method>-<teacher>-<student>` (`<method>` for one pair)."""
    nets = list(dict.fromkeys(arch for pair in spec["pairs"] for arch in pair))
    taught = {teacher for teacher, _ in spec["pairs"]}  # the rest are vanilla students
    teachers = {
        arch: {"method": "supervised", "arch": arch, **RECIPE, **spec["teacher" if arch in taught else "student"]}
        for arch in nets
    }
    distill = {}
    for teacher, student in spec["pairs"]:
        for prefix, (method, gamma, extra) in METHODS.items():
            name = prefix if len(spec["pairs"]) == 1 else f"{prefix}-{teacher}-{student}"
            distill[name] = {
                "method": method,
                "arch": student,
                **RECIPE,
                **spec["student"],
                "teacher": teacher,
                **LOSS,
                "gamma": gamma,
                "temperature": TEMPERATURE,
                **extra,
            }
    return {
        "seed": 0,
        "seeds": [0],
        "device": "auto",
        "compute": "auto",
        "data": spec["data"],
        "pretrain": {"random_init": RANDOM_INIT},
        "generations": {},
        "teachers": teachers,
        "distill": distill,
        "evaluate": spec["evaluate"],
        "report": {"words_shown": 8, "patches_per_word": 8},
        "resources": resources(spec.get("gpus", 0)),
    }


@functools.cache  # the pure-Python emitter takes ~1 s for the CIFAR-100 preset
def render(name: str) -> str:
    """The text of presets/<name>.yaml: its header as comments, then its params."""
    from ruamel.yaml import YAML

    spec = PRESETS[name]
    values = params(spec)
    header = spec["header"].format(teachers=len(values["teachers"]), runs=len(values["distill"]))
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = None  # flow style for collections of scalars only
    yaml.sort_base_mapping_type_on_output = False  # keep the spec's key order
    yaml.representer.ignore_aliases = lambda data: True  # runs share RECIPE's list: no &anchors
    body = io.StringIO()
    yaml.dump(values, body)
    comments = "".join(f"# {line}".rstrip() + "\n" for line in [*header.splitlines(), FOOTER])
    return comments + body.getvalue()


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    stale = []
    for name in PRESETS:
        path = HERE / f"{name}.yaml"
        text = render(name)
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}", file=sys.stderr)
    if stale:
        print(
            f"differs from presets/distill.py's output: {', '.join(stale)} (run .venv/bin/python presets/distill.py)",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
