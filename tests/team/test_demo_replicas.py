"""The demo's story with training on a real Dask cluster (RETRAINER_DASK_SCHEDULER) and traffic served by two real
`retrainer serve` replicas behind a real HAProxy (`retrainer demo --replicas 2`): the shortest run that still
canaries (a first champion, then one retrain canaried through the proxy), the fits on the cluster's workers, both
replicas answering, and nothing of the serving stack left running afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import yaml
from team_kit import write_team_params

from retrainer.io.compute import DASK_SCHEDULER_ENV, connect_dask
from retrainer.io.processes import port_holders
from retrainer.io.project import HOME_DIR, LOG_FILE
from retrainer.team import TEAM_DIR

pytestmark = pytest.mark.team

DEMO_TIMEOUT_S = 3000  # bootstrap, two small retrains, two replicas starting and a canary on a loaded 2-core machine
SERVING = re.compile(r"^serving: through HAProxy at (http://\S+) to (\d+) replicas; .*?: (.*)$", re.MULTILINE)
REPLICA = re.compile(r"(http://127\.0\.0\.1:\d+) ([\d,]+) \(([^)]*)\)")


def answered_by_replica(stdout: str) -> tuple[str, dict[str, dict[str, int]]]:
    """The summary's proxy URL and, per replica URL, the prediction requests it answered by arm."""
    found = SERVING.search(stdout)
    assert found, stdout[-3000:]
    answered = {}
    for url, _, arms in REPLICA.findall(found.group(3)):
        answered[url] = {arm: int(n.replace(",", "")) for arm, n in (part.split() for part in arms.split(", "))}
    assert len(answered) == int(found.group(2)), found.group(0)
    return found.group(1), answered


def logged_requests_by_arm(log: Path) -> dict[str, int]:
    """Per arm, the requests in the shared SQLite prediction log that had a record scored by that arm (what each
    replica's `retrainer_requests_total` counts)."""
    query = (
        "SELECT arm, COUNT(*) FROM (SELECT DISTINCT r.seq, a.value AS arm FROM requests r JOIN json_each(r.arm) a) "
        "GROUP BY arm"
    )
    with contextlib.closing(sqlite3.connect(f"file:{log}?mode=ro", uri=True)) as connection:
        return dict(connection.execute(query).fetchall())


def leftovers(workdir: Path, urls: list[str]) -> list[str]:
    """Processes still listening on a replica's or the proxy's port, or naming the workspace in their command line."""
    left = [holder for url in urls for holder in port_holders(urlparse(url).port)]
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if str(workdir) in command and process.pid != os.getpid():
            left.append(f"pid {process.pid} ({command})")
    return left


def test_the_demo_trains_on_dask_serves_through_haproxy_to_two_replicas_and_leaves_nothing_running(
    haproxy, dask_cluster, project_root: Path, tmp_path: Path
):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "RETRAINER_"))}
    env.update(RETRAINER_PARAMS=str(write_team_params(project_root, tmp_path)), OMP_NUM_THREADS="1")
    env[DASK_SCHEDULER_ENV] = dask_cluster.address
    workdir = tmp_path / "demo"
    command = ["demo", "--workdir", str(workdir), "--months", "2-3", "--trigger", "monthly", "--replicas", "2"]
    with connect_dask(dask_cluster.address) as client:
        client.get_task_stream()  # registers the scheduler's task-stream plugin, which records from now on
        started = time.time()
        demo = subprocess.run(
            [str(Path(sys.executable).with_name("retrainer")), *command],
            cwd=project_root,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_S,
        )
        stream = client.get_task_stream(start=started)
        workers = set(client.scheduler_info()["workers"])
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    fitted_on = {task["worker"] for task in stream if "fit" in str(task["key"]).lower()}  # joblib batches of fits
    assert fitted_on == workers, "the demo's searches ran on both Dask workers"
    assert re.search(r"canary (PROMOTED|ROLLED_BACK): ", demo.stdout), demo.stdout[-3000:]
    assert "after promotion is unexpected" not in demo.stdout, "every replica adopts the promotion"

    proxy, answered = answered_by_replica(demo.stdout)
    assert len(answered) == 2
    for url, arms in answered.items():
        assert arms.get("champion", 0) > 0 and arms.get("challenger", 0) > 0, (url, arms)
    summed = {arm: sum(arms.get(arm, 0) for arms in answered.values()) for arm in ("champion", "challenger")}
    assert summed == logged_requests_by_arm(workdir / HOME_DIR / LOG_FILE), "each replica counts its own requests"
    canary = yaml.safe_load((workdir / "params.yaml").read_text())["canary"]
    assert canary["service_url"] == proxy and canary["replica_urls"] == list(answered)

    team = workdir / HOME_DIR / TEAM_DIR
    assert sorted(path.name for path in team.rglob("*.pid")) == []
    assert leftovers(workdir, [proxy, *answered]) == []
