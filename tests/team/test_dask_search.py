"""The train stage's search and CV fits on a standing Dask cluster (real scheduler and worker processes): the fits
run on the workers, and the model is the one the in-process default fits with the same seed."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from retrainer.io.compute import DASK_SCHEDULER_ENV, connect_dask
from retrainer.stages import TRAIN, load_model, run_stage
from retrainer.steps.ingest import integrate

pytestmark = pytest.mark.team


@pytest.fixture(scope="module")
def training_rows(seed_flights, references, params) -> pd.DataFrame:
    """Every 10th January-February flight, labelled and joined: about 5,000 real rows."""
    sample = seed_flights.loc[seed_flights["month"] <= 2].iloc[::10].reset_index(drop=True)
    return integrate(sample, references, params.data, b"key")[0]


def _workspace(root, rows: pd.DataFrame):
    (root / TRAIN).parent.mkdir(parents=True)
    rows.to_parquet(root / TRAIN)
    return root


def _fit_tasks(stream: list[dict]) -> list[dict]:
    """The task-stream entries of joblib batches that ran a search fit or a final fit."""
    return [task for task in stream if "fit" in str(task["key"]).lower()]


def test_train_stage_on_dask_fits_on_the_workers_and_matches_in_process(
    dask_cluster, training_rows, params, tmp_path, monkeypatch
):
    local = _workspace(tmp_path / "local", training_rows)
    remote = _workspace(tmp_path / "remote", training_rows)
    monkeypatch.delenv(DASK_SCHEDULER_ENV, raising=False)
    in_process = run_stage("train", params, local)

    with connect_dask(dask_cluster.address) as client:
        client.get_task_stream()  # registers the scheduler's task-stream plugin, which records from now on
        started = time.time()
        monkeypatch.setenv(DASK_SCHEDULER_ENV, dask_cluster.address)
        on_dask = run_stage("train", params, remote)
        stream = client.get_task_stream(start=started)
        workers = set(client.scheduler_info()["workers"])

    fits = _fit_tasks(stream)
    rounds = {row["iter"] for row in on_dask["cv_results"]}
    # one joblib call per halving round plus the final fits: at least that many batches, all on the two workers
    assert len(fits) >= len(rounds) + 1, [t["key"] for t in stream]
    assert {task["worker"] for task in fits} == workers
    # a ColumnTransformer's own joblib calls run inside the candidate's task, not as tasks queued behind other fits
    assert not [t["key"] for t in stream if "transform_one" in str(t["key"])], [t["key"] for t in stream]
    assert on_dask["best_params"] == in_process["best_params"]
    assert on_dask["cv_results"] == in_process["cv_results"]
    assert on_dask["threshold"] == in_process["threshold"]
    rows = training_rows[in_process["features"]].head(500)
    local_proba = load_model(local)["model"].predict_proba(rows)[:, 1]
    np.testing.assert_array_equal(load_model(remote)["model"].predict_proba(rows)[:, 1], local_proba)


def test_team_stack_dask_processes_start_with_pid_files_and_stop(tmp_path):
    import psutil

    from retrainer.team import DASK_WORKERS, TEAM_DIR, start_dask, team_down

    folder = tmp_path / TEAM_DIR
    folder.mkdir()
    address = start_dask(folder)
    pids = {path.stem: int(path.read_text()) for path in folder.glob("dask-*.pid")}
    assert set(pids) == {"dask-scheduler", *(f"dask-worker-{i}" for i in range(1, DASK_WORKERS + 1))}
    with connect_dask(address) as client:
        assert len(client.scheduler_info()["workers"]) == DASK_WORKERS
        # the nanny's MALLOC_TRIM_THRESHOLD_ is unset (it cost the search 26 %), one OpenMP thread kept
        environ = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
        assert set(environ.values()) == {(None, "1")}, environ
    assert set(team_down(tmp_path)) == set(pids)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids.values())
    assert not list(folder.glob("*.pid"))
