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


NO_MODEL_PROBE = """
import json, sys
import numpy  # loads BLAS, as the data stages' pandas does
from retrainer.stages import one_thread
from threadpoolctl import threadpool_info
with one_thread(loads_model=False):
    pools = [(i["internal_api"], i["num_threads"]) for i in threadpool_info()]
print(json.dumps({"pools": pools, "sklearn": "sklearn" in sys.modules, "joblib": "joblib" in sys.modules}))
"""


def test_a_stage_without_a_model_limits_blas_and_skips_the_scikit_learn_import():
    done = subprocess.run(
        [sys.executable, "-c", NO_MODEL_PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["pools"] and all(threads == 1 for _, threads in seen["pools"]), seen
    assert not seen["sklearn"] and not seen["joblib"], seen
