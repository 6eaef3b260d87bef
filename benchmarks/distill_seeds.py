"""Seed spread of distillation runs: rerun chosen teacher/distill stages with other
seeds, the teacher fixed, and print each row's top-1 over seeds with its margin over the
vanilla student.

The distillation table reports one seed per row, as IFACD's tables (Rios et al.) do; this says which of its
margins exceed the seed-to-seed spread. It reruns the exact commands `dvc.lock` recorded
for the stages (same params, same frozen teacher model, same data subset, which is drawn
with the data seed), changing only `--seed` (student initialisation, data order,
augmentation, CRD draws) and the output paths, which go under `--out/s<seed>/`, so nothing
of the pipeline's own outputs is touched. Seed 0 is the pipeline's own run (its metrics
file); a seed whose metrics file exists is not rerun (rerunning the script resumes).

Stage names. The pipeline has one stage per run and training seed (`distill_seed0@kd`,
workflow/pipeline.py), and every seed of params.yaml's `seeds:` is already its own run. A
stage is named
- exactly as dvc.lock records it: `distill_seed0@kd` (that seed's run is the row's first
  value; the run of a record made before stages were per seed, `distill@kd`, likewise);
- or as `kind@run` when dvc.lock has it per seed: `distill@kd` is then every
  `distill_seed<S>@kd` recorded, each seed's run read from its own metrics (all seeds the
  vanilla stage has must be recorded for every stage).
`--seeds` adds seeds the pipeline did not run, rerun from the lowest recorded seed's
command (so with the teacher of that seed); a seed the pipeline ran is read, not rerun.

    dvc repro teacher_seed0@resnet56 teacher_seed0@resnet20 distill_seed0@kd
    python -m benchmarks.distill_seeds --vanilla teacher@resnet20 \
        --stages distill@kd distill@fitnet --seeds 1 2

The last line is `RESULT {json}`; the table is also written to `--out/seeds.json`.
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

from bowflow.io import write_json


def flag(argv: list[str], name: str) -> str:
    """The value after `name` in a stage command's argv."""
    if name not in argv:
        raise SystemExit(f"not a training stage command (no {name}): {shlex.join(argv)}")
    return argv[argv.index(name) + 1]


def recorded(locked: dict, name: str) -> dict[int, str]:
    """{seed: command} of stage `name` in dvc.lock's stages (see the module's docstring: an
    exact name, or `kind@run` for every `kind_seed<S>@run`); {} when none is recorded."""
    if name in locked:
        cmd = locked[name]["cmd"]
        return {int(flag(shlex.split(cmd), "--seed")): cmd}
    kind, at, run = name.partition("@")
    per_seed = re.compile(rf"^{re.escape(kind)}_seed(\d+)@{re.escape(run)}$")
    found = {int(m.group(1)): stage["cmd"] for key, stage in locked.items() if at and (m := per_seed.match(key))}
    return dict(sorted(found.items()))


def reseeded_command(cmd: str, seed: int, out: Path) -> tuple[list[str], Path]:
    """`cmd` (a stage command of dvc.lock) with `--seed seed` and every output under
    out/s<seed>/ (same file names) -> (argv, the new metrics path)."""
    argv = shlex.split(cmd)
    flag(argv, "--seed")  # fails unless a training stage command
    root = out / f"s{seed}"
    new = {
        "--seed": str(seed),
        "--model": str(root / "models" / Path(flag(argv, "--model")).parent.name / "model.pt"),
        "--metrics": str(root / Path(flag(argv, "--metrics")).name),
        "--history": str(root / Path(flag(argv, "--history")).name),
        "--checkpoints": str(root / "checkpoints"),
    }
    for name, value in new.items():
        if name in argv:
            argv[argv.index(name) + 1] = value
        else:
            argv += [name, value]
    return argv, Path(new["--metrics"])


def spread(top1: dict[str, list[float]], vanilla: str) -> list[dict]:
    """Per row: its top-1 by seed, mean, sample sd, and the mean margin over `vanilla`'s mean
    with the smallest and largest per-seed margin (seed s of a row minus seed s of vanilla)."""
    base = top1[vanilla]
    rows = []
    for name, values in top1.items():
        row = {
            "row": name,
            "top1": values,
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        }
        if name != vanilla:
            paired = [v - b for v, b in zip(values, base)]
            row.update(margin=row["mean"] - statistics.fmean(base), margin_min=min(paired), margin_max=max(paired))
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    parser.add_argument(
        "--vanilla",
        required=True,
        help="the vanilla student's stage (teacher_seed0@NAME, or teacher@NAME: every seed recorded)",
    )
    parser.add_argument("--stages", nargs="+", required=True, help="distill_seed0@NAME or distill@NAME stages")
    parser.add_argument(
        "--seeds",
        nargs="*",
        type=int,
        default=[],
        help="seeds besides the pipeline's own (none: only the recorded seeds)",
    )
    parser.add_argument("--out", type=Path, default=Path("data/seeds"))
    args = parser.parse_args(argv)

    locked = yaml.safe_load(args.lock.read_text())["stages"]
    names = [args.vanilla, *args.stages]
    commands = {name: recorded(locked, name) for name in names}
    missing = [s for s in names if not commands[s]]
    if missing:
        raise SystemExit(f"{args.lock}: no recorded stage {missing}: run `dvc repro` of them first")
    own_seeds = list(commands[args.vanilla])  # the pipeline's seeds, read not rerun
    lacking = [f"{s} (seed {seed})" for s in names for seed in own_seeds if seed not in commands[s]]
    if lacking:
        raise SystemExit(
            f"{args.lock}: the vanilla stage has seeds {own_seeds}, but no recorded "
            f"{', '.join(lacking)}: run `dvc repro` of them first"
        )
    extra = [seed for seed in dict.fromkeys(args.seeds) if seed not in own_seeds]
    seed0 = own_seeds[0]
    top1 = {}
    for stage in names:
        values = [
            json.loads(Path(flag(shlex.split(commands[stage][seed]), "--metrics")).read_text())["top1"]
            for seed in own_seeds
        ]
        cmd = commands[stage][seed0]  # the command other seeds rerun
        for seed in extra:
            run, metrics = reseeded_command(cmd, seed, args.out)
            if not metrics.exists():
                print(f"{stage} seed {seed}:", shlex.join(run), flush=True)
                subprocess.run(run, check=True)
            values.append(json.loads(metrics.read_text())["top1"])
        top1[stage] = values
    rows = spread(top1, args.vanilla)
    seeds = [*own_seeds, *extra]
    print(f"{'row':<26} {'top-1 by seed ' + str(seeds):<32} mean   sd    margin [min, max]")
    for r in rows:
        margin = f"{r['margin']:+.2f} [{r['margin_min']:+.2f}, {r['margin_max']:+.2f}]" if "margin" in r else ""
        print(f"{r['row']:<26} {' '.join(f'{v:6.2f}' for v in r['top1']):<32} {r['mean']:6.2f} {r['sd']:5.2f} {margin}")
    result = {"seeds": seeds, "rows": rows}
    write_json(args.out / "seeds.json", result)
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main()
