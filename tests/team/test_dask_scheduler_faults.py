"""The Dask scheduler SIGKILLed after the train stage connected to it but before its search submitted anything
(while the stage reads its rows or selects features), a breaker test. The client's first submit waits for the
scheduler to come back and ends in distributed's `OSError: Timed out trying to connect to tcp://127.0.0.1:N after
30 s`, which reached the user raw; it is now ComputeUnreachable naming the scheduler, as the loss mid-search is
(tests/team/test_dask_worker_loss.py).

The train stage composes exactly these two calls (stages.py: `with search_backend() as scheduler:` ...
`retry_lost_worker(lambda: fit_model(...), scheduler)`); the test makes the same calls with a real joblib call
inside, so that the kill lands before the first submit every time. Run as the whole stage with the kill timed
from the scheduler's log, it ended in the same OSError on one run of two (the other kill landed mid-search).
Real scheduler and worker processes, a real SIGKILL, no mock.
"""

from __future__ import annotations

import os
import signal

import pytest
from joblib import Parallel, delayed

from retrainer.io.compute import ComputeUnreachable, retry_lost_worker, search_backend
from retrainer.io.servers import start_dask

pytestmark = pytest.mark.team


def test_a_scheduler_sigkilled_before_the_search_is_compute_unreachable_naming_it(tmp_path):
    cluster = start_dask(tmp_path / "dask", workers=1)
    try:
        with search_backend(cluster.address) as scheduler:
            os.killpg(cluster.scheduler.pid, signal.SIGKILL)
            cluster.scheduler.wait()
            with pytest.raises(ComputeUnreachable, match=cluster.address):
                retry_lost_worker(lambda: Parallel(n_jobs=-1)(delayed(abs)(-i) for i in range(8)), scheduler)
    finally:
        cluster.stop()
