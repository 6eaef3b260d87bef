"""Stage pretrain: train one run of params.yaml's `pretrain:` map on the prepared SSL images,
from scratch, with no other input: `g0`, the RotNet teacher that starts the BoWNet chain, and
every other named run (BYOL, SimSiam, DINO, Barlow Twins, ..., and the untrained control).

    python -m stages.pretrain --prepared data/prepared --model data/models/seed0/g0/model.pt \
        --metrics data/metrics/seed0/train/g0.json --history data/plots/seed0/train/g0.csv \
        --seed 0 --device auto --method rotnet --arch convnet --epochs 30 ...

The run's name is its model's folder (`data/models/seed<S>/<name>/model.pt`).
"""

from __future__ import annotations

from bowflow.runs import TrainingRun, add_training_arguments, check_stage, parse_method_section, run_training


def main(argv=None):
    params, args = parse_method_section(argv, __doc__, add_training_arguments)
    check_stage(params.method, "pretrain")
    record = {"name": args.model.parent.name, "parent": "", "generation": 0, "seed": args.seed}
    run_training(TrainingRun.from_args(params, args, record))


if __name__ == "__main__":
    main()
