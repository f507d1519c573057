"""A Prefect server on the session's real PostgreSQL, a worker of a process work pool, and our drain-inbox deployment
registered with `retrainer deploy --pool` and run with `prefect deployment run`: the worker picks it up and it
completes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrainer.team import WORK_POOL, prefect_database, start_prefect, start_worker, team_down

pytestmark = pytest.mark.team

RUN_TIMEOUT_S = 900  # a trivial flow took ~70 s end to end under load (STACK_NOTES)


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def test_a_deployment_run_on_the_process_work_pool_is_picked_up_by_the_worker_and_completes(
    postgres_server, fresh_database, project_root, tmp_path
):
    from retrainer.io.workspace import create_workspace

    home = tmp_path / "home"
    folder = home / "team"
    folder.mkdir(parents=True)
    try:
        api = start_prefect(folder, prefect_database(postgres_server))
        settings = {"PREFECT_API_URL": api, "RETRAINER_DATABASE_URL": fresh_database}
        start_worker(folder, settings)
        workspace = create_workspace(project_root, tmp_path / "ws")
        env = {**os.environ, **settings, "PREFECT_HOME": str(folder / "prefect")}
        for name in ("RETRAINER_PARAMS", "RETRAINER_HOME", "MLFLOW_TRACKING_URI"):
            env.pop(name, None)
        deployed = subprocess.run(
            [_bin("retrainer"), "deploy", "--pool", WORK_POOL],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert deployed.returncode == 0, deployed.stderr[-2000:]
        assert f"registered on work pool '{WORK_POOL}'" in deployed.stdout
        run = subprocess.run(
            [_bin("prefect"), "deployment", "run", "drain-inbox/retrain-scheduled", "--watch"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
        worker_log = (folder / "worker.log").read_text()
        assert "submitting flow run" in worker_log and "Finished in state Completed" in worker_log
    finally:
        assert set(team_down(home)) == {"worker", "prefect-server"}
    assert not list(folder.glob("*.pid"))
