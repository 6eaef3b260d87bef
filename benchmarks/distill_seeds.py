"""Seed spread of distillation runs: rerun chosen `teacher@`/`distill@` stages with other
seeds, the teacher fixed, and print each row's top-1 over seeds with its margin over the
vanilla student.

The distillation table reports one seed per row, as the talk does; this says which of its
margins exceed the seed-to-seed spread. It reruns the exact commands `dvc.lock` recorded
for the stages (same params, same frozen teacher model, same data subset, which is drawn
with the data seed), changing only `--seed` (student initialisation, data order,
augmentation, CRD draws) and the output paths, which go under `--out/s<seed>/`, so nothing
of the pipeline's own outputs is touched. Seed 0 is the pipeline's own run (its metrics
file); a seed whose metrics file exists is not rerun (rerunning the script resumes).

    dvc repro teacher@resnet56 teacher@resnet20 distill@kd     # the pipeline's seed
    python -m benchmarks.distill_seeds --vanilla teacher@resnet20 \
        --stages distill@kd distill@fitnet --seeds 1 2

The last line is `RESULT {json}`; the table is also written to `--out/seeds.json`.
"""
from __future__ import annotations

import argparse
import json
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


def reseeded_command(cmd: str, seed: int, out: Path) -> tuple[list[str], Path]:
    """`cmd` (a stage command of dvc.lock) with `--seed seed` and every output under
    out/s<seed>/ (same file names) -> (argv, the new metrics path)."""
    argv = shlex.split(cmd)
    flag(argv, "--seed")                          # fails unless a training stage command
    root = out / f"s{seed}"
    new = {"--seed": str(seed),
           "--model": str(root / "models" / Path(flag(argv, "--model")).parent.name / "model.pt"),
           "--metrics": str(root / Path(flag(argv, "--metrics")).name),
           "--history": str(root / Path(flag(argv, "--history")).name),
           "--checkpoints": str(root / "checkpoints")}
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
        row = {"row": name, "top1": values, "mean": statistics.fmean(values),
               "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
        if name != vanilla:
            paired = [v - b for v, b in zip(values, base)]
            row.update(margin=row["mean"] - statistics.fmean(base),
                       margin_min=min(paired), margin_max=max(paired))
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    parser.add_argument("--vanilla", required=True, help="the vanilla student's stage")
    parser.add_argument("--stages", nargs="+", required=True, help="distill@NAME stages")
    parser.add_argument("--seeds", nargs="+", type=int, required=True,
                        help="seeds besides the pipeline's own")
    parser.add_argument("--out", type=Path, default=Path("data/seeds"))
    args = parser.parse_args(argv)

    locked = yaml.safe_load(args.lock.read_text())["stages"]
    names = [args.vanilla, *args.stages]
    missing = [s for s in names if s not in locked]
    if missing:
        raise SystemExit(f"{args.lock}: no recorded stage {missing}: run `dvc repro` of them first")
    seed0 = int(flag(shlex.split(locked[args.vanilla]["cmd"]), "--seed"))
    top1 = {}
    for stage in names:
        cmd = locked[stage]["cmd"]
        own = Path(flag(shlex.split(cmd), "--metrics"))
        values = [json.loads(own.read_text())["top1"]]
        for seed in args.seeds:
            run, metrics = reseeded_command(cmd, seed, args.out)
            if not metrics.exists():
                print(f"{stage} seed {seed}:", shlex.join(run), flush=True)
                subprocess.run(run, check=True)
            values.append(json.loads(metrics.read_text())["top1"])
        top1[stage] = values
    rows = spread(top1, args.vanilla)
    print(f"{'row':<22} {'top-1 by seed ' + str([seed0, *args.seeds]):<32} mean   sd    margin [min, max]")
    for r in rows:
        margin = (f"{r['margin']:+.2f} [{r['margin_min']:+.2f}, {r['margin_max']:+.2f}]"
                  if "margin" in r else "")
        print(f"{r['row']:<22} {' '.join(f'{v:6.2f}' for v in r['top1']):<32} "
              f"{r['mean']:6.2f} {r['sd']:5.2f} {margin}")
    result = {"seeds": [seed0, *args.seeds], "rows": rows}
    write_json(args.out / "seeds.json", result)
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main()
