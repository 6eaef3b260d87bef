"""Where a BoWNet generation's seed-to-seed spread comes from: vary one source at a time.

In the pipeline, seed S drives everything of a generation at once: its parent (trained with
S), the vocabulary's k-means, the student's initialisation, data order and views, and the
few-shot episodes. This reruns generation gN's recorded commands (`vocab_seed<B>@gN`,
`student_seed<B>@gN`, `evaluate_student_seed<B>@gN` of a finished multi-seed project, the
base seed B = the first) with ONE source moved to each other seed S and the rest held at B:

    parent     the parent's model of seed S (trained with S): vocab --teacher, student --parent-model
    vocab      vocab --seed S (k-means init and the sampled cells)
    student    student --seed S (init, data order, views)
    episodes   evaluate --seed S (the few-shot episodes; linear probe init)

and, for comparison, `all`: the pipeline's own seed-S run (every source moved). Outputs go
under --out/<source>-<seed>/ (metrics and curves; the models are deleted once evaluated); a
variant already evaluated is not rerun (resumable).

    python -m benchmarks.spread_sources --project /tmp/bowflow-study-digits-seeds-fp32 \
        --generation g1 --out docs/results/digits-seeds-fp32/spread

The last line is `RESULT {json}`; --out/spread.json holds every value, and per source the
sample sd over seeds of each metric.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
from pathlib import Path

import yaml

from benchmarks.ablate_generation import set_flag
from bowflow.io import write_json

SOURCES = ("parent", "vocab", "student", "episodes")
KINDS = {"vocab": "vocab_seed{s}@{g}", "student": "student_seed{s}@{g}", "evaluate": "evaluate_student_seed{s}@{g}"}


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def recorded(locked: dict, generation: str, seed: int) -> dict[str, list[str]]:
    """The generation's three recorded commands of one seed, as argv lists."""
    names = {kind: template.format(s=seed, g=generation) for kind, template in KINDS.items()}
    missing = [n for n in names.values() if n not in locked]
    if missing:
        raise SystemExit(f"dvc.lock: no recorded stage {missing}: run the study's pipeline first")
    return {kind: shlex.split(locked[name]["cmd"]) for kind, name in names.items()}


def variant(
    base: dict[str, list[str]], other: dict[str, list[str]], source: str, seed: int, root: Path
) -> list[list[str]]:
    """The base seed's commands with `source` moved to `seed` (its parent path taken from the
    other seed's recorded commands) and every output under root."""
    vocab, student, evaluate = (list(base[k]) for k in ("vocab", "student", "evaluate"))
    if source == "parent":
        vocab = set_flag(vocab, "--teacher", [flag(other["vocab"], "--teacher")])
        student = set_flag(student, "--parent-model", [flag(other["student"], "--parent-model")])
    elif source == "vocab":
        vocab = set_flag(vocab, "--seed", [str(seed)])
    elif source == "student":
        student = set_flag(student, "--seed", [str(seed)])
    elif source == "episodes":
        evaluate = set_flag(evaluate, "--seed", [str(seed)])
    paths = {
        "vocab": {"--out": root / "vocab.pt", "--metrics": root / "vocab.json"},
        "student": {
            "--vocab": root / "vocab.pt",
            "--model": root / "model.pt",
            "--metrics": root / "train.json",
            "--history": root / "train.csv",
        },
        "evaluate": {"--model": root / "model.pt", "--out": root / "eval.json"},
    }
    commands = []
    for name, argv in (("vocab", vocab), ("student", student), ("evaluate", evaluate)):
        for key, value in paths[name].items():
            argv = set_flag(argv, key, [str(value)])
        if name == "student":
            argv += ["--checkpoints", str(root / "checkpoints")]
        commands.append(argv)
    if source == "episodes":  # the model is the base seed's: evaluate it again, nothing else
        commands = [set_flag(evaluate, "--out", [str(root / "eval.json")])]
    return commands


def accuracies(evaluation: dict) -> dict[str, float]:
    return {
        "linear": evaluation["linear_base"],
        "knn": evaluation["knn_all"],
        **{f"shot_{n}": evaluation["few_shot"][n]["mean"] for n in evaluation["few_shot"]},
    }


def spread(rows: dict[int, dict[str, float]]) -> dict[str, float | None]:
    """Sample sd over seeds of each metric (None with one seed)."""
    metrics = next(iter(rows.values()))
    return {m: (round(statistics.stdev([r[m] for r in rows.values()]), 3) if len(rows) > 1 else None) for m in metrics}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True, help="a finished multi-seed project")
    parser.add_argument("--generation", default="g1")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    project = args.project.resolve()
    locked = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    seeds = sorted(
        {int(m[1]) for name in locked if (m := re.fullmatch(rf"evaluate_student_seed(\d+)@{args.generation}", name))}
    )
    if len(seeds) < 2:
        raise SystemExit(f"{project}/dvc.lock: {args.generation} has {len(seeds)} seed(s); need 2 or more")
    base_seed, commands = seeds[0], {s: recorded(locked, args.generation, s) for s in seeds}
    base_eval = project / flag(commands[base_seed]["evaluate"], "--out")
    values: dict[str, dict[int, dict[str, float]]] = {"all": {}}
    for seed in seeds:  # the pipeline's own runs: every source moved together
        values["all"][seed] = accuracies(json.loads((project / flag(commands[seed]["evaluate"], "--out")).read_text()))
    for source in SOURCES:
        values[source] = {base_seed: accuracies(json.loads(base_eval.read_text()))}
        for seed in seeds[1:]:
            root = (args.out / f"{source}-{seed}").resolve()
            if not (root / "eval.json").exists():
                root.mkdir(parents=True, exist_ok=True)
                for command in variant(commands[base_seed], commands[seed], source, seed, root):
                    print(shlex.join(command), flush=True)
                    subprocess.run(command, check=True, cwd=project)
                for path in [*root.glob("*.pt"), *root.glob("checkpoints/*")]:  # the record keeps metrics
                    path.unlink()
            values[source][seed] = accuracies(json.loads((root / "eval.json").read_text()))
    result = {
        "generation": args.generation,
        "base_seed": base_seed,
        "seeds": seeds,
        "values": {src: {str(s): v for s, v in rows.items()} for src, rows in values.items()},
        "sd": {src: spread(rows) for src, rows in values.items()},
    }
    write_json(args.out / "spread.json", result)
    metrics = list(result["sd"]["all"])
    print(f"{'source':<10}" + "".join(f"{m:>10}" for m in metrics))
    for src, sd in result["sd"].items():
        print(f"{src:<10}" + "".join(f"{sd[m]:>10.2f}" for m in metrics))
    print("RESULT", json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
