"""Where the train stage's hyperparameter search and CV fits run: in this process (the default) or on a Dask cluster.

One setting chooses: `RETRAINER_DASK_SCHEDULER` (e.g. `tcp://scheduler-host:8786`). Unset, nothing changes from the
in-process default. Set, every joblib call the search makes (one per round of candidates x folds, and the two final
fits) goes to the cluster's workers through joblib's Dask backend, scikit-learn's documented way to scale a search
out (https://scikit-learn.org/stable/computing/parallelism.html, "joblib-based parallelism"; joblib's `dask` backend
counts every worker thread, whatever the estimator's n_jobs). The fitted model is the same either way: each fit is
seeded and single-threaded (the nanny that starts a `dask worker` sets OMP_NUM_THREADS=1, as `stages.one_thread`
does here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

DASK_SCHEDULER_ENV = "RETRAINER_DASK_SCHEDULER"
CONNECT_TIMEOUT_CONFIG = "distributed.comm.timeouts.connect"  # Dask's own setting (30 s by default)
WORKERS_TIMEOUT_S = 300  # a reachable scheduler with no worker yet: how long joblib waits for one
LOST_WORKER_ATTEMPTS = 3  # a search that a lost worker cut short is run again, at most this many times in all
SCHEDULER_LOST = "scheduler-connection-lost"  # distributed's reason for the futures a client loses with its scheduler
IDENTITY_GRACE_S = 5.0  # past the connect timeout, so a refused port ends in Dask's own connect timeout first
NO_WORKER_MESSAGE = "has no worker after"  # joblib's TimeoutError when no worker joined (joblib/_dask.py, 1.6)

T = TypeVar("T")


class ComputeUnreachable(RuntimeError):
    """The configured Dask scheduler could not be reached (or Dask is not installed); the message names its address."""


def dask_scheduler() -> str | None:
    """$RETRAINER_DASK_SCHEDULER (a scheduler address such as `tcp://host:8786`), or None for in-process fits."""
    return os.environ.get(DASK_SCHEDULER_ENV) or None


def connect_dask(address: str, timeout_s: float | None = None):
    """A `distributed.Client` of the scheduler at `address` (not made the process's default client).

    `timeout_s` defaults to Dask's connect timeout (config `distributed.comm.timeouts.connect`, 30 s unless set, e.g.
    by DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s): the client retries until then, as a scheduler may be starting.
    Raises ComputeUnreachable naming the address when distributed is missing (the `team` extra) or the scheduler
    does not answer in time.
    """
    try:
        import dask
        from dask.utils import parse_timedelta
        from distributed import Client
    except ModuleNotFoundError as exc:
        raise ComputeUnreachable(
            f"{DASK_SCHEDULER_ENV}={address} but Dask is not installed ({exc.name}): "
            "install the team extra (pip install -e '.[team]')"
        ) from exc
    from distributed.comm.core import parse_address
    from distributed.comm.registry import get_backend

    try:  # before a Client exists: a half-built one waits 10 s at exit to close
        get_backend(parse_address(address)[0])
    except ValueError as exc:  # Dask's own message names what is wrong, e.g. an unknown scheme
        raise ComputeUnreachable(f"{DASK_SCHEDULER_ENV}={address} is not a Dask scheduler address: {exc}") from exc
    if timeout_s is None:
        timeout_s = parse_timedelta(dask.config.get(CONNECT_TIMEOUT_CONFIG), default="s")
    try:
        scheduler_identity(address, timeout_s)
        return Client(address, timeout=timeout_s, set_as_default=False)
    except TypeError as exc:  # e.g. tls:// without Dask's TLS settings
        raise ComputeUnreachable(f"{DASK_SCHEDULER_ENV}={address} cannot be used: {exc}") from exc
    except TimeoutError as exc:  # a port that took the connection and never answered
        raise ComputeUnreachable(
            f"{address} ({DASK_SCHEDULER_ENV}) took the connection but did not answer as a Dask scheduler within "
            f"{timeout_s + IDENTITY_GRACE_S:g} s (Dask's {CONNECT_TIMEOUT_CONFIG} + {IDENTITY_GRACE_S:g} s; another "
            "server's port?)"
        ) from exc
    except MemoryError as exc:  # a server of another protocol: its first bytes read as a huge frame length
        raise ComputeUnreachable(
            f"{address} ({DASK_SCHEDULER_ENV}) answered, but not as a Dask scheduler (another server's port?)"
        ) from exc
    except OSError as exc:
        raise ComputeUnreachable(
            f"Dask scheduler {address} ({DASK_SCHEDULER_ENV}) unreachable after {timeout_s:g} s "
            f"(Dask's {CONNECT_TIMEOUT_CONFIG}): {exc}"
        ) from exc


def scheduler_identity(address: str, timeout_s: float) -> dict:
    """The scheduler's answer to Dask's `identity` call (its type, id, workers), asked within `timeout_s` seconds.

    Asked before a Client is made because `Client(timeout=)` bounds the connection, not the answer: a port that
    takes the connection and stays silent (an HTTP server's, a stuck process's) kept the train stage waiting without
    end. Raises OSError when the connection cannot be made within `timeout_s` (Dask's own timeout, which retries a
    refused port until then), TimeoutError when a connection was made but no answer came IDENTITY_GRACE_S later:
    the same bound for both read a refused port as a silent one in 2 of 6 tries (a new-user trial).
    """
    import asyncio

    from distributed.core import rpc

    async def ask() -> dict:
        async with rpc(address, timeout=timeout_s) as scheduler:
            return await scheduler.identity()

    return asyncio.run(asyncio.wait_for(ask(), timeout_s + IDENTITY_GRACE_S))


@contextmanager
def search_backend(address: str | None = None, timeout_s: float | None = None) -> Iterator[str | None]:
    """Run the block's joblib calls on the Dask scheduler at `address` (default: $RETRAINER_DASK_SCHEDULER), or in
    this process when there is none; yields the address used, or None.

    Raises ComputeUnreachable naming the address when the scheduler cannot be reached within `timeout_s` seconds
    (default: Dask's connect timeout, see `connect_dask`).
    """
    address = address or dask_scheduler()
    if address is None:
        yield None
        return
    import joblib

    joblib.register_parallel_backend(SEARCH_BACKEND, _dask_backend_with_sequential_nesting)
    with (
        connect_dask(address, timeout_s) as client,
        joblib.parallel_config(backend=SEARCH_BACKEND, client=client, wait_for_workers_timeout=WORKERS_TIMEOUT_S),
    ):
        yield address


def lost_a_worker(exc: BaseException) -> bool:
    """True for the errors a joblib call on Dask ends with when a worker dies under it: its tasks `KilledWorker`, or
    cancelled (`FutureCancelledError`, "already forgotten") because the rows joblib scattered to it were lost. Not
    for futures cancelled because the client lost the scheduler itself."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    if isinstance(exc, FutureCancelledError):
        return exc.reason != SCHEDULER_LOST
    return isinstance(exc, KilledWorker)


def retry_lost_worker(call: Callable[[], T], scheduler: str | None, attempts: int = LOST_WORKER_ATTEMPTS) -> T:
    """`call()`, run again from the start (at most `attempts` times in all) when it fails because a Dask worker died
    under it; in process (`scheduler` None) it runs once. The last error is raised as it was, except those that
    mean the cluster itself is gone, raised as ComputeUnreachable naming `scheduler`: the scheduler lost mid-call
    or before it (distributed's OSError naming the address once its reconnection times out), and no worker joining
    within WORKERS_TIMEOUT_S (every worker lost, none restarted).

    joblib's Dask backend scatters each call's rows to one worker (no broadcast), and Dask cannot recompute
    scattered data: when that worker dies, every task needing the rows is cancelled, though other workers live. A
    fresh start scatters them again to a live worker. Each fit is seeded, so the result is the one an undisturbed
    run gives. Retries by tenacity.
    """
    if scheduler is None:
        return call()
    from tenacity import Retrying, retry_if_exception, stop_after_attempt

    def say(state) -> None:
        lost = state.outcome.exception()
        print(f"a Dask worker of {scheduler} was lost mid-search ({lost!r}): starting the search again", flush=True)

    retrying = Retrying(
        retry=retry_if_exception(lost_a_worker), stop=stop_after_attempt(attempts), before_sleep=say, reraise=True
    )
    from distributed.client import FutureCancelledError

    try:
        return retrying(call)
    except FutureCancelledError as exc:
        if exc.reason != SCHEDULER_LOST:
            raise
        raise ComputeUnreachable(
            f"the Dask scheduler {scheduler} ({DASK_SCHEDULER_ENV}) went away mid-search: the train stage stopped"
        ) from exc
    except OSError as exc:  # TimeoutError is one
        gone = cluster_gone(exc, scheduler)
        if gone is None:
            raise
        raise gone from exc


def cluster_gone(exc: OSError, scheduler: str) -> ComputeUnreachable | None:
    """ComputeUnreachable naming `scheduler` for the OSErrors of a joblib call on Dask that mean the cluster is gone,
    else None: joblib's TimeoutError when no worker joined within WORKERS_TIMEOUT_S (by its message, as its type is
    the builtin one), and distributed's "Timed out trying to connect to <address> ..." when the scheduler went away
    before the call's first task (by the address it names)."""
    if NO_WORKER_MESSAGE in str(exc):
        return ComputeUnreachable(
            f"no Dask worker joined the scheduler {scheduler} ({DASK_SCHEDULER_ENV}) within {WORKERS_TIMEOUT_S} s: "
            "every worker was lost or none was started"
        )
    if scheduler in str(exc):
        return ComputeUnreachable(f"the Dask scheduler {scheduler} ({DASK_SCHEDULER_ENV}) went away: {exc}")
    return None


SEARCH_BACKEND = "retrainer-dask"


def _dask_backend_with_sequential_nesting(**kwargs):
    """joblib's Dask backend (same arguments), except that a joblib call made inside a task runs in that task.

    Written here because joblib's Dask backend runs every task under `parallel_config(backend="dask")` (joblib 1.6,
    `joblib._dask.Batch`), with no setting to change it: each candidate's fit runs a ColumnTransformer, whose
    per-column fit/transform joblib calls became tasks of their own; the waiting fit seceded from its worker's one
    thread, that worker took another candidate, and one worker ended up running three fits at once while the other
    idled (the full year's search on 2 workers: 1.08x in-process before this, bench/results/search.json after).
    """
    from joblib import parallel_config
    from joblib._dask import DaskDistributedBackend  # the class joblib registers as its "dask" backend

    class InTask:
        # Defined here, not at module level, so that cloudpickle ships it by value with each task.
        def __init__(self, func):
            self.func, self.__name__ = func, getattr(func, "__name__", "call")

        def __call__(self, *args, **kwargs):
            with parallel_config(backend="sequential"):
                return self.func(*args, **kwargs)

    class DaskBackendSequentialNesting(DaskDistributedBackend):
        def submit(self, func, callback=None):
            func.items = [(InTask(f), args, kw) for f, args, kw in func.items]
            return super().submit(func, callback)

    return DaskBackendSequentialNesting(**kwargs)
