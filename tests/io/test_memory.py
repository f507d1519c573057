"""A model stage's process gives freed large arrays back to the system (glibc's mmap threshold held fixed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# 16 MB freed (glibc's dynamic threshold rises to 16 MB), then 400 arrays of 1 MB, each followed by a small array
# that outlives it: with the dynamic threshold the 1 MB arrays come from the heap and their 400 MB stay resident
# after they are freed; with a fixed threshold each has its own mapping and goes back.
PROBE = """
import json, sys
import numpy as np
from retrainer.io.memory import fix_mmap_threshold

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

fixed = fix_mmap_threshold() if sys.argv[1] == "fixed" else False
big = np.ones(16 * 2**20 // 8)
del big
before = rss_mb()
held, kept = [], []
for _ in range(400):
    held.append(np.ones(2**20 // 8))
    kept.append(np.ones(200 * 1024 // 8))
del held
print(json.dumps({"fixed": fixed, "kept_mb": rss_mb() - before}))
"""


def _after_free(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_fixed_mmap_threshold_returns_freed_arrays_that_the_dynamic_one_keeps():
    dynamic, fixed = _after_free("dynamic"), _after_free("fixed")
    assert fixed["fixed"] is True
    assert dynamic["kept_mb"] > 300, dynamic  # the 400 MB of freed 1 MB arrays stayed resident
    assert fixed["kept_mb"] < 150, fixed  # only the 80 MB of small arrays still held
