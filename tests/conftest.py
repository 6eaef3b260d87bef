import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Pin the compute mode for every test and every pipeline the tests start (test_pipeline's
# ENV copies os.environ): eager fp32 at torch's thread count, so both front-ends train
# alike and no test spends seconds measuring. BOWFLOW_TEST_COMPUTE runs the suite in
# another mode on purpose (e.g. fp32-channels-last-compile); tests/test_compute.py
# changes it per test.
os.environ["BOWFLOW_COMPUTE"] = os.environ.get("BOWFLOW_TEST_COMPUTE", "default")


@pytest.fixture(scope="session")
def one_of_each_project(tmp_path_factory):
    """The tiny pipeline with one run of each kind, run once per test session (the fast tier's
    pipeline run; test_pipeline.py and test_pipeline_small.py share it) -> (project, the
    stages that ran, every evaluation record untimed, before any test changed the project).
    `make test-all` runs the suite on two workers with `--dist loadfile`: each builds what
    the files it runs need."""
    from test_pipeline import eval_metrics, repro

    from bowflow.scaffold import make_project, tiny_params

    project = make_project(tmp_path_factory.mktemp("dvc-fast") / "project", tiny_params(every_method=False))
    ran = repro(project)
    return project, ran, eval_metrics(project)
