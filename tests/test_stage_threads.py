"""A stage runs on one OpenMP and one BLAS thread even when scikit-learn is first imported inside it."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json
from retrainer.stages import one_thread
from threadpoolctl import threadpool_info
with one_thread():
    print(json.dumps([(i["internal_api"], i["num_threads"]) for i in threadpool_info()]))
"""


def test_a_fresh_process_stage_context_limits_openmp_and_blas():
    # a fresh interpreter: nothing loaded scikit-learn's runtimes before, as in a `retrainer stage` of `dvc repro`
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    pools = json.loads(done.stdout.strip().splitlines()[-1])
    assert "openmp" in {api for api, _ in pools}, pools
    assert all(threads == 1 for _, threads in pools), pools
