import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Pin the compute mode for every test and every pipeline the tests start (test_pipeline's
# ENV copies os.environ): eager fp32 at torch's thread count, so runs are comparable and
# no test spends seconds measuring. tests/test_compute.py changes it per test.
os.environ["BOWFLOW_COMPUTE"] = "default"
