"""Stage teacher: pretrain generation 0 (RotNet by default) on the prepared SSL images.

    python -m stages.teacher --prepared data/prepared --model data/models/g0/model.pt \
        --metrics data/metrics/train/g0.json --history data/plots/train/g0.csv \
        --seed 0 --device auto --method rotnet --arch convnet --epochs 30 ...
"""
from __future__ import annotations

from pathlib import Path

from bowflow.cli import parse_method_section
from bowflow.runs import run_training


def paths(parser):
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, default=Path("data/checkpoints"))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto")


def main(argv=None):
    params, args = parse_method_section(argv, __doc__, paths)
    run_training(params, args.prepared, args.model, args.metrics, args.history, args.checkpoints,
                 args.seed, args.device,
                 record={"name": args.model.parent.name, "parent": "", "generation": 0})


if __name__ == "__main__":
    main()
