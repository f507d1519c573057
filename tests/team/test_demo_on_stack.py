"""The demo's month-by-month story on the team stack (the environment `team.env` gives): bootstrap, a first champion,
then a served month with its monitoring pass, with the registry, the batch record and the service's state in
PostgreSQL, MLflow artifacts in S3, flow runs on the team's Prefect server, and no embedded SQLite store left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from team_kit import team_environment, write_team_params

from retrainer.io.backend import DATABASE_ENV

pytestmark = pytest.mark.team

DEMO_TIMEOUT_S = 3000  # bootstrap, two small retrains, a service start and a canary on a loaded 2-core machine
SQLITE_MAGIC = b"SQLite format 3\x00"


def sqlite_files(folder: Path) -> set[str]:
    """Every SQLite database file under `folder` (by its header), relative to it; symlinked folders not followed."""
    found = set()
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            if path.is_symlink() or not path.is_file():
                continue
            with path.open("rb") as handle:
                if handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC:
                    found.add(str(path.relative_to(folder)))
    return found


def _flow_run_names(api: str, root: Path) -> set[str]:
    """The names of the flows with runs on workspace `root` on the Prefect server at `api`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        flows = {flow.id: flow.name for flow in client.read_flows()}
        return {flows[run.flow_id] for run in client.read_flow_runs() if run.parameters.get("root") == str(root)}


def _demo(project_root: Path, workdir: Path, env: dict) -> subprocess.CompletedProcess:
    """`retrainer demo` on months 2-3 of the seed, in `workdir`."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("retrainer")), "demo", "--workdir", str(workdir), "--months", "2-3"],
        cwd=project_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )


def test_a_short_demo_on_the_team_stack_keeps_its_state_on_the_servers_and_a_rerun_is_refused(
    prefect_api, postgres_server, s3_server, project_root, tmp_path
):
    import mlflow

    from retrainer.config import load_params
    from retrainer.io import registry
    from retrainer.io.servers import create_database
    from retrainer.io.tracking import connect

    env = team_environment(create_database(postgres_server.url(), "demo_on_stack"), s3_server, "demo-on-stack")
    params_file = write_team_params(project_root, tmp_path)
    env.update({"PREFECT_API_URL": prefect_api, "RETRAINER_PARAMS": str(params_file)})
    workdir = tmp_path / "demo"
    demo = _demo(project_root, workdir, env)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    assert "monitor: 1 passes" in demo.stdout, demo.stdout[-3000:]
    assert f'--backend-store-uri "${DATABASE_ENV}"' in demo.stdout

    assert sqlite_files(workdir) == set(), "every piece of state is in PostgreSQL: no SQLite file in the workspace"
    assert {"retrain", "monitor"} <= _flow_run_names(prefect_api, workdir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATABASE_ENV, env[DATABASE_ENV])
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        connect(tmp_path)
        model = load_params(params_file).tracking.registered_model
        champion = registry.alias_version(model, registry.CHAMPION)
        run_id = mlflow.MlflowClient().get_model_version(model, champion).run_id
        artifact_uri = mlflow.MlflowClient().get_run(run_id).info.artifact_uri
    assert artifact_uri.startswith("s3://demo-on-stack/mlflow/"), artifact_uri
    assert champion is not None and f"champion is v{champion}." in demo.stdout

    again = _demo(project_root, tmp_path / "again", env)
    assert again.returncode == 2 and "already records processed batches" in again.stderr, again.stderr[-2000:]
