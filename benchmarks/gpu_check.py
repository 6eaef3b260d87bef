"""The GPU path end to end, as one command on a GPU machine: the tiny pipeline (one run of
each kind) under `dvc repro` on CUDA, once per compute mode, and, with two GPUs, once more
with the pretrain stage as two NCCL processes under torchrun.

    make install-gpu                      # faiss-gpu instead of faiss-cpu (optional)
    .venv/bin/python -m benchmarks.gpu_check --out gpu-check.json

For each case it checks what the metrics record: every training ran on `cuda` in the
compute mode asked for, with a GPU memory peak; the vocabulary stages used faiss on the GPU
when faiss has GPU support (`faiss_gpu`); the evaluation wrote every accuracy. It prints a
line per check and writes them, with the machine (GPU names, CUDA, torch, faiss), as JSON.
Exit status 1 if a check failed, 2 if torch sees no CUDA GPU (nothing to check here).
Nothing here is a test: no test needs a GPU. `--plan` and `--check` need none either
(tests/test_gpu_check.py runs them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("fp32-channels-last", "bf16-channels-last")


def cases(gpus: int) -> list[dict]:
    """What to run for a machine with `gpus` CUDA devices: (name, params changes)."""
    out = [{"name": f"cuda-{mode}", "compute": mode, "processes": 1} for mode in MODES]
    if gpus >= 2:
        out.append({"name": "cuda-nccl-2", "compute": MODES[0], "processes": 2})
    return out


def case_params(case: dict) -> dict:
    """The tiny params (one run of each kind) for one case."""
    from bowflow.scaffold import tiny_params

    params = tiny_params(every_method=False)
    params["device"] = "cuda"
    params["compute"] = case["compute"]
    if case["processes"] > 1:
        params["resources"]["pretrain"].update(processes=case["processes"], gpus=case["processes"])
    return params


def check_case(project: Path, case: dict, faiss_gpu: bool) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for the metrics of a finished case."""
    out = []
    metrics = project / "data" / "metrics" / "seed0"
    for path in sorted((metrics / "train").glob("*.json")):
        m = json.loads(path.read_text())
        out.append(
            (
                f"{case['name']}: {path.stem} trained on cuda",
                str(m.get("device", "")).startswith("cuda"),
                str(m.get("device")),
            )
        )
        out.append(
            (
                f"{case['name']}: {path.stem} in mode {case['compute']}",
                case["compute"] in str(m.get("compute", "")),
                str(m.get("compute")),
            )
        )
        out.append(
            (
                f"{case['name']}: {path.stem} has a GPU memory peak",
                m.get("peak_gpu_mb", 0) > 0,
                str(m.get("peak_gpu_mb")),
            )
        )
        if path.stem in ("g0",) and case["processes"] > 1:
            out.append(
                (
                    f"{case['name']}: g0 ran as {case['processes']} processes",
                    m.get("processes") == case["processes"],
                    str(m.get("processes")),
                )
            )
    for path in sorted((metrics / "vocab").glob("*.json")):
        m = json.loads(path.read_text())
        out.append(
            (
                f"{case['name']}: vocab {path.stem} faiss on GPU = {faiss_gpu}",
                bool(m.get("faiss_gpu")) == faiss_gpu,
                str(m.get("faiss_gpu")),
            )
        )
    for path in sorted((metrics / "eval").glob("*.json")):
        m = json.loads(path.read_text())
        out.append(
            (
                f"{case['name']}: evaluation of {path.stem} complete",
                all(k in m for k in ("linear_base", "knn_all", "few_shot")),
                "",
            )
        )
    return out


def machine() -> dict:
    import faiss
    import torch

    return {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "faiss_gpu": hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0,
    }


def plan(gpus: int) -> list[dict]:
    """The cases for `gpus` GPUs, each with its params checked (bowflow.config, statically)."""
    from bowflow.config import validate_params

    for case in cases(gpus):
        validate_params(case_params(case))
    return cases(gpus)


def print_checks(checks: list[tuple[str, bool, str]]) -> None:
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail and not ok else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--workdir", type=Path, help="where the tiny projects go (default: a temporary folder)")
    parser.add_argument(
        "--plan",
        type=int,
        metavar="GPUS",
        help="print the cases for GPUS GPUs (their params checked) as RESULT {json} and stop; needs no GPU",
    )
    parser.add_argument(
        "--check",
        type=Path,
        metavar="PROJECT",
        help="check an already-run case's project (with --case and --faiss-gpu as that run had) and stop; needs no GPU",
    )
    parser.add_argument("--case", help="with --check: the case's name (see --plan)")
    parser.add_argument("--faiss-gpu", action="store_true", help="with --check: faiss had GPU support")
    args = parser.parse_args(argv)
    if args.plan is not None:
        print("RESULT " + json.dumps({"cases": plan(args.plan)}))
        return 0
    if args.check:
        case = next(c for c in cases(2) if c["name"] == args.case)
        checks = check_case(args.check, case, args.faiss_gpu)
        print_checks(checks)
        print("RESULT " + json.dumps({"failed": [n for n, ok, _ in checks if not ok], "checks": len(checks)}))
        return 1 if any(not ok for _, ok, _ in checks) else 0
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is "
            "False): nothing to check here; run it on a GPU machine",
            file=sys.stderr,
        )
        return 2
    from bowflow.scaffold import make_project

    info = machine()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bowflow-gpu-check-"))
    results = []
    for case in cases(len(info["gpus"])):
        project = make_project(workdir / case["name"], case_params(case))
        start = time.time()
        run = subprocess.run(
            [str(project / ".venv/bin/dvc"), "repro"],
            cwd=project,
            text=True,
            capture_output=True,
            env={**os.environ, "BOWFLOW_CACHE": str(workdir / "cache")},
        )
        seconds = round(time.time() - start, 1)
        checks = [(f"{case['name']}: dvc repro exits 0", run.returncode == 0, run.stderr[-2000:])]
        if run.returncode == 0:
            checks += check_case(project, case, info["faiss_gpu"])
        print_checks(checks)
        results.append(
            {
                "case": case,
                "seconds": seconds,
                "checks": [{"check": n, "passed": ok, "detail": d} for n, ok, d in checks],
            }
        )
    from bowflow.io import write_json

    write_json(args.out, {"command": " ".join(sys.argv), "machine": info, "cases": results})
    failed = sum(not c["passed"] for r in results for c in r["checks"])
    print(f"{failed} checks failed; record: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
