"""Retrains run by a worker of a process work pool: a Prefect server on the session's real PostgreSQL, one team
workspace (registry and state in PostgreSQL, MLflow artifacts and DVC remote in SeaweedFS), and our drain-inbox
deployment registered with `retrainer deploy --pool`. A `prefect deployment run` and then a cron schedule a minute
ahead each start a flow run that the worker picks up and completes: a real retrain on the batch in the inbox."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from team_kit import create_team_workspace, cut_batch, team_environment, write_team_params

from retrainer.io.backend import DATABASE_ENV
from retrainer.team import TEAM_DIR, WORK_POOL, start_worker, team_down

pytestmark = pytest.mark.team

RUN_TIMEOUT_S = 1500  # a trivial flow took ~70 s on the pool under load (STACK_NOTES), a small retrain 1-3 min
DEPLOYMENT = "drain-inbox/retrain-scheduled"
BUCKET = "work-pool"
CRON_LEAD_S = 40  # the cron fires on the first whole minute at least this far ahead: time to register the schedule


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass(frozen=True)
class Pool:
    """The shared stack of this module: the Prefect API, the team environment, and the workspace the worker serves."""

    api: str
    env: dict[str, str]
    workspace: Path
    worker_log: Path
    staging: Path


@pytest.fixture(scope="module")
def pool(prefect_api, postgres_server, s3_server, project_root, tmp_path_factory):
    """A team workspace and a worker of the process work pool started with the team settings (as `team up` does)."""
    from retrainer.io.servers import create_database

    tmp = tmp_path_factory.mktemp("work-pool")
    env = team_environment(create_database(postgres_server.url(), "work_pool"), s3_server, BUCKET)
    env.update({"PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp / "prefect")})
    workspace = create_team_workspace(project_root, tmp / "ws", write_team_params(project_root, tmp), env)
    home = tmp / "worker"
    (home / TEAM_DIR).mkdir(parents=True)
    start_worker(home / TEAM_DIR, env)
    try:
        yield Pool(prefect_api, env, workspace, home / TEAM_DIR / "worker.log", tmp / "provider")
    finally:
        assert team_down(home) == ["worker"]


def _run(command: list[str], pool: Pool) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, cwd=pool.workspace, env=pool.env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _deploy(pool: Pool, cron: str | None = None) -> None:
    """`retrainer deploy --pool`, with the retrain schedule set to `cron` in the workspace's params first."""
    if cron is not None:
        raw = yaml.safe_load((pool.workspace / "params.yaml").read_text())
        raw["retrain"]["schedule_cron"] = cron
        (pool.workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    deployed = _run([_bin("retrainer"), "deploy", "--pool", WORK_POOL], pool)
    assert f"registered on work pool '{WORK_POOL}': drain-inbox/" in deployed.stdout


def _deliver(pool: Pool, project_root: Path, month: int) -> str:
    """Drop a sample of a 2013 month into the workspace's inbox; returns its batch id."""
    from retrainer.config import load_params
    from retrainer.io.batches import batch_id

    batch = cut_batch(project_root, month, pool.staging, every=8)
    inbox = pool.workspace / load_params(pool.workspace / "params.yaml").retrain.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    landed = inbox / batch.name
    landed.write_bytes(batch.read_bytes())
    return batch_id(landed)


def _outcome(pool: Pool, identifier: str) -> tuple[dict, str | None]:
    """The batch record's entry for a batch and the registry's champion, both read from the team database."""
    from retrainer.io import registry
    from retrainer.io.batch_record_pg import open_batch_record
    from retrainer.io.project import Workspace
    from retrainer.io.tracking import connect

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATABASE_ENV, pool.env[DATABASE_ENV])
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        workspace = Workspace.at(pool.workspace)
        entry = open_batch_record(workspace.batch_record).get(identifier)
        connect(pool.workspace)
        return entry, registry.alias_version(workspace.load_params().tracking.registered_model, registry.CHAMPION)


def _check_team_artifacts(pool: Pool, run_id: str) -> None:
    """The run's model and reports are in the workspace, its MLflow artifacts in the bucket, its store PostgreSQL."""
    import mlflow

    from retrainer.io.servers import s3_client
    from retrainer.io.tables import read_json
    from retrainer.stages import MODEL, REGISTRATION

    ws = pool.workspace
    assert (ws / MODEL).is_file() and (ws / "models" / "gate_report.json").is_file()
    registration = read_json(ws / REGISTRATION)
    assert registration["run_id"] == run_id and registration["tracking_uri"] == pool.env[DATABASE_ENV]
    artifact_uri = mlflow.MlflowClient(pool.env[DATABASE_ENV]).get_run(run_id).info.artifact_uri
    assert artifact_uri.startswith(f"s3://{BUCKET}/mlflow/"), artifact_uri
    client = s3_client(
        pool.env["RETRAINER_S3_ENDPOINT_URL"], pool.env["AWS_ACCESS_KEY_ID"], pool.env["AWS_SECRET_ACCESS_KEY"]
    )
    prefix = artifact_uri.removeprefix(f"s3://{BUCKET}/")
    assert client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount", 0) > 0, "no model artifact in S3"
    assert f"s3://{BUCKET}/dvc" in (ws / ".dvc" / "config").read_text()
    pushed = client.list_objects_v2(Bucket=BUCKET, Prefix="dvc/").get("KeyCount", 0)
    assert pushed > 0, "the cycle pushed its data and model to the team's DVC remote, for another machine to pull"
    assert sorted(str(p.relative_to(ws)) for p in ws.rglob("*.db")) == [], "an embedded SQLite store was created"


def test_a_deployment_run_is_retrained_by_the_worker_on_the_team_stack(pool, project_root):
    identifier = _deliver(pool, project_root, month=2)
    _deploy(pool)
    run = _run([_bin("prefect"), "deployment", "run", DEPLOYMENT, "--watch"], pool)
    assert "Completed" in run.stdout, run.stdout[-2000:]
    assert "submitting flow run" in pool.worker_log.read_text()

    entry, champion = _outcome(pool, identifier)
    assert entry is not None and entry["status"] == "promoted", entry
    assert champion == entry["result"]["challenger_version"]
    _check_team_artifacts(pool, entry["result"]["registration"]["run_id"])


def _next_cron_minute(lead_s: float) -> datetime:
    """The first whole UTC minute at least `lead_s` seconds from now."""
    soon = datetime.now(UTC) + timedelta(seconds=lead_s)
    return soon.replace(second=0, microsecond=0) + timedelta(minutes=1)


def _scheduled_runs(api: str, name: str) -> list:
    """The flow runs of deployment `name` that the server's scheduler created (not `deployment run`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    return [run for run in runs if run.auto_scheduled]


def _wait_for_final(api: str, name: str, fire_at: datetime, timeout_s: float):
    """The scheduler's run of `name` due at `fire_at`, once it reached a final state; fails after `timeout_s`."""
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        seen = [run for run in _scheduled_runs(api, name) if run.expected_start_time == fire_at]
        if seen and seen[0].state is not None and seen[0].state.is_final():
            return seen[0]
        time.sleep(5)  # polling the API; the run itself takes minutes
    pytest.fail(f"no final scheduled run of {name} due {fire_at} within {timeout_s} s (seen: {seen})")


def test_a_cron_schedule_a_minute_ahead_starts_a_retrain_the_worker_completes(pool, project_root):
    before = _outcome(pool, "none")[1]
    identifier = _deliver(pool, project_root, month=3)
    fire_at = _next_cron_minute(CRON_LEAD_S)
    _deploy(pool, cron=f"{fire_at.minute} {fire_at.hour} {fire_at.day} {fire_at.month} *")

    run = _wait_for_final(pool.api, DEPLOYMENT, fire_at, RUN_TIMEOUT_S)
    assert run.state.is_completed(), run.state

    entry, champion = _outcome(pool, identifier)
    assert entry is not None and entry["status"] == "promoted", entry
    assert champion == entry["result"]["challenger_version"] != before
    _check_team_artifacts(pool, entry["result"]["registration"]["run_id"])
