"""One epoch of each named method at global batch 16, in one process or under torchrun:
the two-process half of the method contract (tests/test_method_contract.py runs both).

    python tests/ddp_worker.py --methods rotnet,byol --out DIR                    # one process
    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        tests/ddp_worker.py --methods rotnet,byol --out DIR                       # two (gloo)

Rank 0 writes DIR/<method>.pt: the method's state_dict and history after the epoch.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bowflow import distributed  # noqa: E402
from bowflow.frozen_teacher import Teacher  # noqa: E402
from bowflow.io import save_torch  # noqa: E402
from bowflow.train import train  # noqa: E402
from tests.test_method_contract import build, data  # noqa: E402


def as_float64(method):
    """`method` (and a distiller's frozen teacher, not a submodule) in float64. Inputs still
    arrive in float32 (the normaliser, `augment.to_float`): every layer with weights casts
    its input to its weights' dtype."""
    modules = [method]
    teacher = getattr(method, "teacher", None)
    if isinstance(teacher, Teacher):
        modules += [teacher.backbone, teacher.classifier]
    for module in modules:
        module.double()
        for layer in module.modules():
            if isinstance(getattr(layer, "weight", None), torch.Tensor):
                layer.register_forward_pre_hook(cast_inputs)


def cast_inputs(layer, inputs):
    return tuple(x.to(layer.weight.dtype) if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--float64",
        action="store_true",
        help="weights and views in float64: the same math as float32 "
        "with rounding ~1e-16, so sums in another order cannot flip a ReLU",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    world, _ = distributed.start(torch.device("cpu"))
    images, labels = data()
    for name in args.methods.split(","):
        method, params = build(name, images, labels, epochs=1)
        if args.float64:
            as_float64(method)
        checkpoint = args.out / f"{name}.ckpt"  # one file: rank 0 writes, all read
        history = train(
            method, images, params, seed=0, checkpoint_path=checkpoint, run_id="ddp", show_progress=False, run_name=name
        )
        if world.is_main:
            save_torch({"state": method.state_dict(), "history": history}, args.out / f"{name}.pt")
    distributed.stop()


if __name__ == "__main__":
    main()
