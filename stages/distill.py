"""Stage distill: train one supervised run on every labelled train image and score its
top-1 on the test split, as the distillation benchmark reports it (last epoch).

Two kinds of runs use it, one DVC stage each per entry of params.yaml:
- `teacher@NAME` (the `teachers:` map): a method trained from labels alone (`supervised`):
  the teachers, and the vanilla students that distilled ones are compared with;
- `distill@NAME` (the `distill:` map): a distillation method (kd, crd, ifacd, ...) whose
  frozen teacher is the model file given by `--teacher_model`.

    python -m stages.distill --prepared data/prepared --model data/models/kd/model.pt \
        --metrics data/metrics/distill/kd.json --history data/plots/train/kd.csv \
        --seed 0 --device auto --teacher_model data/models/resnet56/model.pt \
        --method kd --teacher resnet56 --arch resnet20 --epochs 240 ...

Metrics: top1 (%), the trained parameters (student + the method's extra modules, as the
IFACD paper counts them: Rios et al., https://github.com/arkel23/layerwiseclr; the teacher
excluded), wall time and peak memory of training.
"""

from __future__ import annotations

from pathlib import Path

from bowflow.data.prepared import load_labelled_split
from bowflow.frozen_teacher import load_teacher
from bowflow.models import classifier_top1, load_classifier, load_model
from bowflow.roles.base import get_method
from bowflow.runs import TrainingRun, add_training_arguments, check_stage, parse_method_section, run_training
from bowflow.runtime import resolve_device


def arguments(parser) -> None:
    add_training_arguments(parser)
    parser.add_argument(
        "--teacher_model", type=Path, default=None, help="the frozen teacher's model.pt (distillation methods only)"
    )


def test_top1(prepared: Path, device, batch_size: int = 256):
    """finish() for run_training: {'top1': test-split accuracy (%) of the written model}."""

    def finish(model_path: Path) -> dict:
        images, labels, _ = load_labelled_split(prepared, "test")
        backbone, normalizer, record = load_model(model_path, device)
        classifier = load_classifier(record, model_path)
        return {
            "top1": classifier_top1(backbone, normalizer, classifier, images, labels, batch_size, device),
            "test_images": len(images),
        }

    return finish


def main(argv=None):
    params, args = parse_method_section(argv, __doc__, arguments)
    cls = get_method(params.method)
    if cls.stage not in ("teacher", "distill"):
        check_stage(params.method, "distill")
    distills = cls.stage == "distill"
    if distills != (args.teacher_model is not None):
        raise SystemExit(
            f"--teacher_model: method '{params.method}' "
            + (
                "distils from a teacher: give its model.pt"
                if distills
                else "trains from labels alone: it takes no teacher"
            )
        )
    if distills and not args.teacher_model.is_file():
        raise SystemExit(
            f"--teacher_model: {args.teacher_model} does not exist (train teacher "
            f"'{params.teacher}' first: dvc repro teacher_seed{args.seed}@{params.teacher})"
        )
    device = resolve_device(args.device)
    inputs = {"teacher": load_teacher(args.teacher_model, device)} if distills else {}
    record = {
        "name": args.model.parent.name,
        "parent": params.teacher if distills else "",
        "generation": 0,
        "seed": args.seed,
    }
    run_training(TrainingRun.from_args(params, args, record, inputs=inputs, finish=test_top1(args.prepared, device)))


if __name__ == "__main__":
    main()
