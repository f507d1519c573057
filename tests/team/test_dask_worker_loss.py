"""A Dask worker SIGKILLed mid-search (found by a breaker run): the train stage failed with `FutureCancelledError:
... cancelled for reason: already forgotten`, though a worker was left. joblib's Dask backend scatters the training
rows to one worker, and Dask cannot recompute scattered data; the stage now starts the search again on the workers
that are left, and its model is the one an undisturbed run gives.

The cluster itself gone (a second breaker run): a SIGKILLed scheduler was reported as a lost worker, retried, and
ended in a raw OSError; with every worker gone, joblib's 300 s wait ended in its own TimeoutError traceback. Both are
now ComputeUnreachable naming the scheduler."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from retrainer.io import compute
from retrainer.io.compute import DASK_SCHEDULER_ENV, ComputeUnreachable, connect_dask
from retrainer.io.servers import DaskCluster, start_dask
from retrainer.stages import TRAIN, run_stage
from retrainer.steps.ingest import integrate

pytestmark = pytest.mark.team


@pytest.fixture
def root(seed_flights, references, params, tmp_path) -> Path:
    """A workspace whose training rows are a quarter of January-February's flights."""
    rows = integrate(
        seed_flights.loc[seed_flights["month"] <= 2].iloc[::4].reset_index(drop=True), references, params.data, b"key"
    )[0]
    workspace = tmp_path / "ws"
    (workspace / TRAIN).parent.mkdir(parents=True)
    rows.to_parquet(workspace / TRAIN)
    return workspace


def train_in_thread(params, root: Path) -> tuple[threading.Thread, dict]:
    """The train stage started in a thread; its report or error lands in the returned dict."""
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["report"] = run_stage("train", params, root)
        except BaseException as exc:  # the test reports whatever the stage raised
            outcome["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    return thread, outcome


def wait_until_both_workers_fit(cluster: DaskCluster, thread: threading.Thread) -> None:
    with connect_dask(cluster.address) as client:
        deadline = time.monotonic() + 600
        while not all(client.processing().values()) or len(client.processing()) < 2:
            assert time.monotonic() < deadline and thread.is_alive(), "the search never ran on both workers"
            time.sleep(0.2)


def sigkill_with_children(pid: int) -> None:
    victim = psutil.Process(pid)
    for process in [*victim.children(recursive=True), victim]:
        os.kill(process.pid, signal.SIGKILL)


def train_and_sigkill_mid_search(params, root: Path, cluster: DaskCluster, victim: str, timeout_s: float) -> dict:
    """The train stage on `cluster` ($RETRAINER_DASK_SCHEDULER set while it runs); once both workers fit, `victim`
    ("worker" or "scheduler") is SIGKILLed with its children. The stage's report or error, once it ended."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DASK_SCHEDULER_ENV, cluster.address)
        thread, outcome = train_in_thread(params, root)
        wait_until_both_workers_fit(cluster, thread)
        sigkill_with_children(cluster.workers[0].pid if victim == "worker" else cluster.scheduler.pid)
        thread.join(timeout=timeout_s)
    assert not thread.is_alive(), f"the stage still runs {timeout_s:g} s after the {victim} was killed"
    return outcome


def test_train_stage_survives_a_worker_sigkilled_mid_search(params, root, tmp_path, capsys):
    cluster = start_dask(tmp_path / "dask", workers=2)
    try:
        outcome = train_and_sigkill_mid_search(params, root, cluster, "worker", timeout_s=900)
        assert "error" not in outcome, f"{type(outcome['error']).__name__}: {outcome['error']}"
        assert f"a Dask worker of {cluster.address} was lost mid-search" in capsys.readouterr().out
    finally:
        cluster.stop()
    undisturbed = run_stage("train", params, root)  # in this process, the same rows and seed
    for key in ("best_params", "cv_best_score", "threshold"):
        assert outcome["report"][key] == undisturbed[key], key


def test_a_scheduler_sigkilled_mid_search_stops_the_stage_naming_it(params, root, tmp_path, capsys):
    cluster = start_dask(tmp_path / "dask", workers=2)
    try:
        outcome = train_and_sigkill_mid_search(params, root, cluster, "scheduler", timeout_s=300)
    finally:
        cluster.stop()
    error = outcome.get("error")
    assert isinstance(error, ComputeUnreachable), repr(error)
    assert f"the Dask scheduler {cluster.address}" in str(error) and "went away" in str(error)
    assert "was lost mid-search" not in capsys.readouterr().out, "a lost scheduler is not a lost worker"


def test_a_scheduler_no_worker_joins_stops_the_stage_naming_it(params, root, tmp_path, monkeypatch):
    cluster = start_dask(tmp_path / "dask", workers=0)  # the state a cluster is in once every worker died for good
    try:
        monkeypatch.setenv(DASK_SCHEDULER_ENV, cluster.address)
        monkeypatch.setattr(compute, "WORKERS_TIMEOUT_S", 2)  # joblib's wait for a worker, 300 s in the stage
        with pytest.raises(ComputeUnreachable, match=f"no Dask worker joined the scheduler {cluster.address}"):
            run_stage("train", params, root)
    finally:
        cluster.stop()
