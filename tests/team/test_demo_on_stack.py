"""The demo's month-by-month story on the whole team stack (the environment `team.env` gives), in one run:
bootstrap, a first champion, then one retrain canaried through HAProxy to two `retrainer serve` replicas
(`retrainer demo --months 2-3 --trigger monthly --replicas 2`: the shortest run that still canaries), with the
searches on a real Dask cluster (RETRAINER_DASK_SCHEDULER), the registry, batch record, rollout state and prediction
log in PostgreSQL, MLflow artifacts in S3 and the flow runs on the team's Prefect server. Afterwards: no SQLite store
anywhere, nothing of the serving stack left running, and a second demo on the same database is refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import yaml
from team_kit import team_environment, write_team_params

from retrainer.io.backend import DATABASE_ENV, connect_database
from retrainer.io.compute import DASK_SCHEDULER_ENV, connect_dask
from retrainer.io.processes import port_holders
from retrainer.io.project import HOME_DIR
from retrainer.serving.prediction_log_pg import REQUESTS_TABLE
from retrainer.team import TEAM_DIR

pytestmark = pytest.mark.team

DEMO_TIMEOUT_S = 3000  # bootstrap, two small retrains, two replicas starting and a canary on a loaded 2-core machine
SQLITE_MAGIC = b"SQLite format 3\x00"
SERVING = re.compile(r"^serving: through HAProxy at (http://\S+) to (\d+) replicas; .*?: (.*)$", re.MULTILINE)
REPLICA = re.compile(r"(http://127\.0\.0\.1:\d+) ([\d,]+) \(([^)]*)\)")


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


def answered_by_replica(stdout: str) -> tuple[str, dict[str, dict[str, int]]]:
    """The summary's proxy URL and, per replica URL, the prediction requests it answered by arm."""
    found = SERVING.search(stdout)
    assert found, stdout[-3000:]
    answered = {}
    for url, _, arms in REPLICA.findall(found.group(3)):
        answered[url] = {arm: int(n.replace(",", "")) for arm, n in (part.split() for part in arms.split(", "))}
    assert len(answered) == int(found.group(2)), found.group(0)
    return found.group(1), answered


def logged_requests_by_arm(database: str) -> dict[str, int]:
    """Per arm, the requests in the shared PostgreSQL prediction log that had a record scored by that arm (what each
    replica's `retrainer_requests_total` counts)."""
    import sqlalchemy as sa

    query = sa.text(
        f"SELECT a.arm, COUNT(DISTINCT r.key) FROM {REQUESTS_TABLE} r "
        "CROSS JOIN LATERAL jsonb_array_elements_text(r.arm::jsonb) AS a(arm) GROUP BY a.arm"
    )
    with connect_database(database) as connection:
        return {arm: count for arm, count in connection.execute(query)}


def leftovers(workdir: Path, urls: list[str]) -> list[str]:
    """Processes still listening on a replica's or the proxy's port, or naming the workspace in their command line."""
    left = [holder for url in urls for holder in port_holders(urlparse(url).port)]
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if str(workdir) in command and process.pid != os.getpid():
            left.append(f"pid {process.pid} ({command})")
    return left


def _demo(project_root: Path, workdir: Path, env: dict, *options: str) -> subprocess.CompletedProcess:
    """`retrainer demo` on months 2-3 of the seed, in `workdir`."""
    command = ["demo", "--workdir", str(workdir), "--months", "2-3", *options]
    return subprocess.run(
        [str(Path(sys.executable).with_name("retrainer")), *command],
        cwd=project_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )


def test_the_demo_on_the_team_stack_trains_on_dask_serves_two_replicas_and_keeps_its_state_on_the_servers(
    prefect_api, postgres_server, s3_server, dask_cluster, haproxy, project_root, tmp_path
):
    import mlflow

    from retrainer.config import load_params
    from retrainer.io import registry
    from retrainer.io.servers import create_database
    from retrainer.io.tracking import connect

    env = team_environment(create_database(postgres_server.url(), "demo_on_stack"), s3_server, "demo-on-stack")
    params_file = write_team_params(project_root, tmp_path)
    env.update(
        {"PREFECT_API_URL": prefect_api, "RETRAINER_PARAMS": str(params_file), DASK_SCHEDULER_ENV: dask_cluster.address}
    )
    workdir = tmp_path / "demo"
    with connect_dask(dask_cluster.address) as client:
        client.get_task_stream()  # registers the scheduler's task-stream plugin, which records from now on
        started = time.time()
        demo = _demo(project_root, workdir, env, "--trigger", "monthly", "--replicas", "2")
        stream = client.get_task_stream(start=started)
        workers = set(client.scheduler_info()["workers"])
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    assert f'--backend-store-uri "${DATABASE_ENV}"' in demo.stdout

    # the searches ran on both Dask workers (joblib batches of fits)
    assert {task["worker"] for task in stream if "fit" in str(task["key"]).lower()} == workers

    # the canary decided through the proxy, every replica adopted the outcome, each counted its own requests
    assert re.search(r"canary (PROMOTED|ROLLED_BACK): ", demo.stdout), demo.stdout[-3000:]
    assert "after promotion is unexpected" not in demo.stdout, "every replica adopts the promotion"
    proxy, answered = answered_by_replica(demo.stdout)
    assert len(answered) == 2
    for url, arms in answered.items():
        assert arms.get("champion", 0) > 0 and arms.get("challenger", 0) > 0, (url, arms)
    summed = {arm: sum(arms.get(arm, 0) for arms in answered.values()) for arm in ("champion", "challenger")}
    assert summed == logged_requests_by_arm(env[DATABASE_ENV]), "each replica counts its own requests"
    canary = yaml.safe_load((workdir / "params.yaml").read_text())["canary"]
    assert canary["service_url"] == proxy and canary["replica_urls"] == list(answered)

    # every piece of state is on the servers; nothing of the serving stack is left running
    assert sqlite_files(workdir) == set(), "every piece of state is in PostgreSQL: no SQLite file in the workspace"
    assert "retrain" in _flow_run_names(prefect_api, workdir)  # the monitor pass on PostgreSQL: test_prediction_log_pg
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
    assert f"serve --port {urlparse(proxy).port}` (its params.yaml's canary.service_url)" in demo.stdout
    assert sorted(path.name for path in (workdir / HOME_DIR / TEAM_DIR).rglob("*.pid")) == []
    assert leftovers(workdir, [proxy, *answered]) == []

    again = _demo(project_root, tmp_path / "again", env)
    assert again.returncode == 2 and "already records processed batches" in again.stderr, again.stderr[-2000:]
