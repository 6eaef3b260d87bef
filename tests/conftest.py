import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Pin the compute mode for every test and every pipeline the tests start (test_pipeline's
# ENV copies os.environ): eager fp32 at torch's thread count, so both front-ends train
# alike and no test spends seconds measuring. BOWFLOW_TEST_COMPUTE runs the suite in
# another mode on purpose (e.g. fp32-channels-last-compile); tests/test_compute.py
# changes it per test.
os.environ["BOWFLOW_COMPUTE"] = os.environ.get("BOWFLOW_TEST_COMPUTE", "default")
