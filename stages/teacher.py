"""Stage teacher: pretrain generation 0 (RotNet by default) on the prepared SSL images.

    python -m stages.teacher --prepared data/prepared --model data/models/g0/model.pt \
        --metrics data/metrics/train/g0.json --history data/plots/train/g0.csv \
        --seed 0 --device auto --method rotnet --arch convnet --epochs 30 ...
"""
from __future__ import annotations

from bowflow.cli import parse_method_section
from bowflow.runs import add_training_arguments, run_training


def main(argv=None):
    params, args = parse_method_section(argv, __doc__, add_training_arguments)
    run_training(params, args.prepared, args.model, args.metrics, args.history, args.checkpoints,
                 args.seed, args.device,
                 record={"name": args.model.parent.name, "parent": "", "generation": 0})


if __name__ == "__main__":
    main()
