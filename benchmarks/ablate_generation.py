"""Ablations of one BoWNet generation: rerun its vocabulary, student and evaluation stages
with some flags changed, the parent fixed, and print each variant beside the pipeline's run.

Why a generation does or does not beat its parent (the BoWNet paper, Gidaris et al. 2020,
https://arxiv.org/abs/2002.12247: RotNet < BoWNet < BoWNet x2)
depends on the vocabulary (which layer of the parent, how many words, how peaked the
targets are), on the student's schedule and on its start. This reruns the exact commands
`dvc.lock` recorded for `vocab_seed<S>@gN`, `student_seed<S>@gN` and
`evaluate_student_seed<S>@gN` (one training seed S: `--seed`, by default the lowest recorded),
changing only the named flags and the output paths (under `--out/gN/seed<S>/<variant>/`),
so the pipeline's own outputs are untouched and every variant shares the parent model (of
that seed), the data and the seed. A dvc.lock recorded before stages were per seed (a
record under docs/results/) names them `vocab@gN`, `student@gN`, `evaluate_student@gN`;
those are read as they are (leave out `--seed`; outputs under `--out/gN/<variant>/`).

    dvc repro evaluate_student_seed0@g2                    # the pipeline's run (the baseline)
    python -m benchmarks.ablate_generation --generation g2 \
        --variant vocab.layer=stage3 --variant vocab.size=256 --variant student.epochs=120

A variant is `stage.flag=value[,stage.flag=value...]`, stage one of vocab, student,
evaluate (e.g. `student.init=parent`). A variant whose evaluation exists is not rerun
(rerunning the script resumes). The last line is `RESULT {json}`; the table is also written
to `ablation.json` in the seed's folder (`--out/gN/seed<S>/`, or `--out/gN/` for a lock
without seeds), with the exact command, the seed, the CPU (model and `cpu_flags` as
bowflow.compute records them: the machine class of docs/BENCHMARKS.md), the load average
before and after, the wall time, and each row's compute mode (its student's training).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bowflow.compute import cpu_flags, cpu_model, describe, relevant_flags
from bowflow.io import write_json

# the parts of a generation's run and their kinds of stage (dvc.lock names `<kind>_seed<S>@gN`)
STAGES = {"vocab": "vocab", "student": "student", "evaluate": "evaluate_student"}


def stage_names(locked: dict, generation: str, seed: int | None = None) -> tuple[dict[str, str], int | None]:
    """-> ({part: its stage name in dvc.lock}, the seed) for the generation's run at `seed`
    (None: the lowest seed recorded; a lock without per-seed stages gives the old names and
    seed None). Exits naming the stages that are not recorded."""
    per_seed = re.compile(rf"^vocab_seed(\d+)@{re.escape(generation)}$")
    recorded = sorted(int(m.group(1)) for key in locked if (m := per_seed.match(key)))
    old = {part: f"{kind}@{generation}" for part, kind in STAGES.items()}
    if seed is None and not recorded and any(name in locked for name in old.values()):
        names, seed = old, None  # a record made before seeds
    else:
        seed = seed if seed is not None else recorded[0] if recorded else 0
        names = {part: f"{kind}_seed{seed}@{generation}" for part, kind in STAGES.items()}
    missing = [name for name in names.values() if name not in locked]
    if missing:
        seeds = f" (seeds recorded for {generation}: {recorded})" if recorded else ""
        raise SystemExit(f"no recorded stage {missing}{seeds}: run `dvc repro` of them first")
    return names, seed


def set_flag(argv: list[str], name: str, values: list[str]) -> list[str]:
    """argv with flag `name` given `values` (its old values, one or several, replaced)."""
    argv = list(argv)
    if name not in argv:
        raise SystemExit(f"no flag {name} in: {shlex.join(argv)}")
    start = argv.index(name) + 1
    end = start
    while end < len(argv) and not argv[end].startswith("--"):
        end += 1
    return argv[:start] + values + argv[end:]


def parse_variant(text: str) -> dict[str, dict[str, list[str]]]:
    """'vocab.size=256,student.epochs=120' -> {'vocab': {'--size': ['256']}, 'student': ...}."""
    out: dict[str, dict[str, list[str]]] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        stage, _, flag = key.partition(".")
        if stage not in STAGES or not flag or not value:
            raise SystemExit(f"bad variant item '{item}': expected STAGE.FLAG=VALUE, STAGE in {list(STAGES)}")
        out.setdefault(stage, {})[f"--{flag}"] = value.split()
    return out


def variant_commands(locked: dict, names: dict[str, str], changes: dict, root: Path) -> list[list[str]]:
    """The generation's three recorded commands (`names`: see stage_names) with `changes`
    applied and outputs under root."""
    vocab, model = str(root / "vocab.pt"), str(root / "model.pt")
    paths = {
        "vocab": {"--out": [vocab], "--metrics": [str(root / "vocab.json")]},
        "student": {
            "--vocab": [vocab],
            "--model": [model],
            "--metrics": [str(root / "train.json")],
            "--history": [str(root / "train.csv")],
            "--checkpoints": [str(root / "checkpoints")],
        },
        "evaluate": {"--model": [model], "--out": [str(root / "eval.json")]},
    }
    commands = []
    for stage in STAGES:
        argv = shlex.split(locked[names[stage]]["cmd"])
        for name, values in {**changes.get(stage, {}), **paths[stage]}.items():
            argv = set_flag(argv, name, values) if name in argv else argv + [name, *values]
        commands.append(argv)
    return commands


def summary(vocab: dict, history: list[dict], evaluation: dict, train: dict | None = None) -> dict:
    """What a row of the ablation shows: target statistics, how much of the learnable loss
    the student captured, and the evaluation (and the student's compute mode, from its
    training metrics `train`, where given)."""
    last = history[-1]
    mode = {"compute": describe(train["compute"])} if isinstance((train or {}).get("compute"), dict) else {}
    return {
        **mode,
        "layer": vocab["layer"],
        "words": vocab["size"],
        "target_entropy": round(vocab["target_entropy"], 3),
        "usage_perplexity": round(vocab["mean_histogram_perplexity"], 1),
        "epochs": int(last["epoch"]),
        "captured": round(float(last["captured"]), 3),
        "linear": evaluation["linear_base"],
        "knn": evaluation["knn_all"],
        **{f"shot_{n}": evaluation["few_shot"][n]["mean"] for n in evaluation["few_shot"]},
    }


def read_json(path: Path) -> dict | None:
    """A JSON file's content; None when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else None


def read_history(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    parser.add_argument("--generation", required=True, help="gN: a generation of params.yaml")
    parser.add_argument(
        "--seed", type=int, default=None, help="the training seed whose run to vary (default: the lowest recorded)"
    )
    parser.add_argument("--variant", action="append", default=[], help="STAGE.FLAG=VALUE[,...]")
    parser.add_argument("--out", type=Path, default=Path("data/ablate"))
    args = parser.parse_args(argv)
    invocation = "python -m benchmarks.ablate_generation " + shlex.join(
        sys.argv[1:] if argv is None else map(str, argv)
    )
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()

    locked = yaml.safe_load(args.lock.read_text())["stages"]
    g = args.generation
    try:
        names, seed = stage_names(locked, g, args.seed)
    except SystemExit as error:
        raise SystemExit(f"{args.lock}: {error}") from None
    folder = args.out / g if seed is None else args.out / g / f"seed{seed}"
    own = [shlex.split(locked[names[part]]["cmd"]) for part in STAGES]
    flag = lambda argv, name: argv[argv.index(name) + 1]  # noqa: E731
    rows = [
        {
            "variant": "pipeline",
            **summary(
                json.loads(Path(flag(own[0], "--metrics")).read_text()),
                read_history(Path(flag(own[1], "--history"))),
                json.loads(Path(flag(own[2], "--out")).read_text()),
                read_json(Path(flag(own[1], "--metrics"))),
            ),
        }
    ]
    for text in args.variant:
        root = folder / text.replace(",", "+").replace("=", "-").replace(" ", "_")
        if not (root / "eval.json").exists():
            for command in variant_commands(locked, names, parse_variant(text), root):
                print(shlex.join(command), flush=True)
                subprocess.run(command, check=True)
        rows.append(
            {
                "variant": text,
                **summary(
                    json.loads((root / "vocab.json").read_text()),
                    read_history(root / "train.csv"),
                    json.loads((root / "eval.json").read_text()),
                    read_json(root / "train.json"),
                ),
            }
        )
    columns = [k for k in rows[0] if k != "variant"]
    print(f"{'variant':<34}" + "".join(f"{c:>18}" for c in columns))
    for r in rows:
        print(f"{r['variant']:<34}" + "".join(f"{r.get(c, '-')!s:>18}" for c in columns))
    wall = round(time.perf_counter() - start, 1)
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"wall {wall} s; load average (1, 5, 15 min) before {load_before}, after {load_after}")
    result = {
        "generation": g,
        "seed": seed,
        "command": invocation,
        "machine": cpu_model(),
        "cpu_flags": relevant_flags(cpu_flags()),
        "cpus": os.cpu_count(),
        "load_average": {"before": load_before, "after": load_after},
        "wall_seconds": wall,
        "rows": rows,
    }
    write_json(folder / "ablation.json", result)
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main()
