"""A Dask worker SIGKILLed mid-search (found by a breaker run): the train stage failed with `FutureCancelledError:
... cancelled for reason: already forgotten`, though a worker was left. joblib's Dask backend scatters the training
rows to one worker, and Dask cannot recompute scattered data; the stage now starts the search again on the workers
that are left, and its model is the one an undisturbed run gives."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from retrainer.io.compute import DASK_SCHEDULER_ENV, connect_dask
from retrainer.io.servers import start_dask
from retrainer.stages import TRAIN, run_stage
from retrainer.steps.ingest import integrate

pytestmark = pytest.mark.team


def test_train_stage_survives_a_worker_sigkilled_mid_search(
    seed_flights, references, params, tmp_path, monkeypatch, capsys
):
    rows = integrate(
        seed_flights.loc[seed_flights["month"] <= 2].iloc[::4].reset_index(drop=True), references, params.data, b"key"
    )[0]
    root = tmp_path / "ws"
    (root / TRAIN).parent.mkdir(parents=True)
    rows.to_parquet(root / TRAIN)
    cluster = start_dask(tmp_path / "dask", workers=2)
    try:
        monkeypatch.setenv(DASK_SCHEDULER_ENV, cluster.address)
        outcome: dict = {}

        def train() -> None:
            try:
                outcome["report"] = run_stage("train", params, root)
            except BaseException as exc:  # the test reports whatever the stage raised
                outcome["error"] = exc

        thread = threading.Thread(target=train)
        thread.start()
        with connect_dask(cluster.address) as client:
            deadline = time.monotonic() + 600
            while not all(client.processing().values()) or len(client.processing()) < 2:
                assert time.monotonic() < deadline and thread.is_alive(), "the search never ran on both workers"
                time.sleep(0.2)
        victim = psutil.Process(cluster.workers[0].pid)
        for process in [*victim.children(recursive=True), victim]:
            os.kill(process.pid, signal.SIGKILL)
        thread.join(timeout=900)
        assert "error" not in outcome, f"{type(outcome['error']).__name__}: {outcome['error']}"
        assert f"a Dask worker of {cluster.address} was lost mid-search" in capsys.readouterr().out
    finally:
        cluster.stop()
    monkeypatch.delenv(DASK_SCHEDULER_ENV)
    undisturbed = run_stage("train", params, root)  # in this process, the same rows and seed
    for key in ("best_params", "cv_best_score", "threshold"):
        assert outcome["report"][key] == undisturbed[key], key
