"""Ablations of one BoWNet generation: rerun its vocabulary, student and evaluation stages
with some flags changed, the parent fixed, and print each variant beside the pipeline's run.

Why a generation does or does not beat its parent (the talk: RotNet < BoWNet < BoWNet x2)
depends on the vocabulary (which layer of the parent, how many words, how peaked the
targets are), on the student's schedule and on its start. This reruns the exact commands
`dvc.lock` recorded for `vocab@gN`, `student@gN` and `evaluate_student@gN`, changing only
the named flags and the output paths (under `--out/<variant>/`), so the pipeline's own
outputs are untouched and every variant shares the parent model, the data and the seed.

    dvc repro evaluate_student@g2                          # the pipeline's run (the baseline)
    python -m benchmarks.ablate_generation --generation g2 \
        --variant vocab.layer=stage3 --variant vocab.size=256 --variant student.epochs=120

A variant is `stage.flag=value[,stage.flag=value...]`, stage one of vocab, student,
evaluate (e.g. `student.init=parent`). A variant whose evaluation exists is not rerun
(rerunning the script resumes). The last line is `RESULT {json}`; the table is also written
to `--out/ablation.json`.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
from pathlib import Path

import yaml

from bowflow.io import write_json

STAGES = {"vocab": "vocab@{g}", "student": "student@{g}", "evaluate": "evaluate_student@{g}"}


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


def variant_commands(locked: dict, generation: str, changes: dict, root: Path) -> list[list[str]]:
    """The generation's three recorded commands with `changes` applied and outputs under root."""
    vocab, model = str(root / "vocab.pt"), str(root / "model.pt")
    paths = {"vocab": {"--out": [vocab], "--metrics": [str(root / "vocab.json")]},
             "student": {"--vocab": [vocab], "--model": [model], "--metrics": [str(root / "train.json")],
                         "--history": [str(root / "train.csv")], "--checkpoints": [str(root / "checkpoints")]},
             "evaluate": {"--model": [model], "--out": [str(root / "eval.json")]}}
    commands = []
    for stage, template in STAGES.items():
        argv = shlex.split(locked[template.format(g=generation)]["cmd"])
        for name, values in {**changes.get(stage, {}), **paths[stage]}.items():
            argv = set_flag(argv, name, values) if name in argv else argv + [name, *values]
        commands.append(argv)
    return commands


def summary(vocab: dict, history: list[dict], evaluation: dict) -> dict:
    """What a row of the ablation shows: target statistics, how much of the learnable loss
    the student captured, and the evaluation."""
    last = history[-1]
    return {"layer": vocab["layer"], "words": vocab["size"], "target_entropy": round(vocab["target_entropy"], 3),
            "usage_perplexity": round(vocab["mean_histogram_perplexity"], 1),
            "epochs": int(last["epoch"]), "captured": round(float(last["captured"]), 3),
            "linear": evaluation["linear_base"], "knn": evaluation["knn_all"],
            **{f"shot_{n}": evaluation["few_shot"][n]["mean"] for n in evaluation["few_shot"]}}


def read_history(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    parser.add_argument("--generation", required=True, help="gN: a generation of params.yaml")
    parser.add_argument("--variant", action="append", default=[], help="STAGE.FLAG=VALUE[,...]")
    parser.add_argument("--out", type=Path, default=Path("data/ablate"))
    args = parser.parse_args(argv)

    locked = yaml.safe_load(args.lock.read_text())["stages"]
    g = args.generation
    missing = [t.format(g=g) for t in STAGES.values() if t.format(g=g) not in locked]
    if missing:
        raise SystemExit(f"{args.lock}: no recorded stage {missing}: run `dvc repro` of them first")
    own = [shlex.split(locked[t.format(g=g)]["cmd"]) for t in STAGES.values()]
    flag = lambda argv, name: argv[argv.index(name) + 1]       # noqa: E731
    rows = [{"variant": "pipeline", **summary(json.loads(Path(flag(own[0], "--metrics")).read_text()),
                                               read_history(Path(flag(own[1], "--history"))),
                                               json.loads(Path(flag(own[2], "--out")).read_text()))}]
    for text in args.variant:
        root = args.out / g / text.replace(",", "+").replace("=", "-").replace(" ", "_")
        if not (root / "eval.json").exists():
            for command in variant_commands(locked, g, parse_variant(text), root):
                print(shlex.join(command), flush=True)
                subprocess.run(command, check=True)
        rows.append({"variant": text, **summary(json.loads((root / "vocab.json").read_text()),
                                                read_history(root / "train.csv"),
                                                json.loads((root / "eval.json").read_text()))})
    columns = [k for k in rows[0] if k != "variant"]
    print(f"{'variant':<34}" + "".join(f"{c:>18}" for c in columns))
    for r in rows:
        print(f"{r['variant']:<34}" + "".join(f"{r.get(c, '-')!s:>18}" for c in columns))
    result = {"generation": g, "rows": rows}
    write_json(args.out / g / "ablation.json", result)
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main()
