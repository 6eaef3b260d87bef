"""Stage student: train one BoWNet generation to predict its teacher's cached BoW targets.

    python -m stages.student --prepared data/prepared --vocab data/models/g1/vocab.pt \
        --parent-model data/models/g0/model.pt --model data/models/g1/model.pt \
        --metrics data/metrics/train/g1.json --history data/plots/train/g1.csv \
        --seed 0 --device auto --method bownet --epochs 60 ...
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bowflow.io import load_torch
from bowflow.runs import TrainingRun, add_training_arguments, check_stage, parse_method_section, run_training
from bowflow.train import fingerprint


def paths(parser):
    add_training_arguments(parser)
    parser.add_argument("--vocab", type=Path, required=True)
    parser.add_argument("--parent-model", type=Path, required=True)


def main(argv=None):
    params, args = parse_method_section(argv, __doc__, paths)
    check_stage(params.method, "student")
    vocab = load_torch(args.vocab)
    parent = load_torch(args.parent_model)
    try:
        params.check_parent_model(parent)
    except ValueError as error:
        raise SystemExit(f"{args.parent_model}: {error}") from None
    codes_hash = hashlib.sha256(vocab["codes"].numpy().tobytes()).hexdigest()
    inputs = {"codes": vocab["codes"], "num_words": len(vocab["words"]), "parent": parent}
    stamp = fingerprint(
        codes_hash, vocab["params"], parent["name"], hashlib.sha256(args.parent_model.read_bytes()).hexdigest()
    )
    record = {
        "name": args.model.parent.name,
        "parent": parent["name"],
        "generation": parent["generation"] + 1,
        "seed": args.seed,
    }
    run_training(TrainingRun.from_args(params, args, record, inputs=inputs, input_fingerprint=stamp))


if __name__ == "__main__":
    main()
