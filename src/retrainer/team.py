"""`retrainer team up|down`: a local team stack on loopback, from system and PyPI packages, with pid files.

PostgreSQL (MLflow store, shared state, the promotion lock, and the Prefect server's database), SeaweedFS (S3:
MLflow artifacts and the DVC remote), a Dask scheduler with two single-threaded workers (the train stage's search),
a Prefect server on PostgreSQL, and a worker of a process work pool. `up` writes
`team.env` (shell exports of the settings) into the stack's folder; `source` it, or set the same variables to point at
servers you already run.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from retrainer.io import compute, proxy, servers
from retrainer.io.processes import free_port, port_holders, port_in_use, stop_pid_file, wait_until_ready

TEAM_DIR = "team"
ENV_FILE = "team.env"
WORK_POOL = "retrainer"
BUCKET = "retrainer"
REPLICA_START_TIMEOUT_S = 600  # BentoML took over 90 s to answer at load 10+ on 2 cores
DASK_WORKERS = 2
DASK_START_TIMEOUT_S = 300
PREFECT_START_TIMEOUT_S = 900  # the first start migrates the database: ~76 s measured under load, more when busier


@dataclass(frozen=True)
class TeamStack:
    """Where a stack lives and what `up` started; `settings` are the environment variables that point at it."""

    folder: Path
    settings: dict[str, str]

    @property
    def env_file(self) -> Path:
        """The shell file of `export NAME=value` lines for the settings."""
        return self.folder / ENV_FILE


def _pid_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.pid"


def _spawn(folder: Path, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a detached process (a session of its own) logging to `name.log`, and write `name.pid`."""
    with (folder / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    _pid_file(folder, name).write_text(str(process.pid))
    return process


def prefect_database(server: servers.PostgresServer) -> str:
    """A `prefect` database with the pg_trgm extension Prefect's migrations need; its asyncpg URL."""
    import sqlalchemy as sa

    url = servers.create_database(server.url(), "prefect")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        connection.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


def start_prefect(folder: Path, database_url: str) -> str:
    """The Prefect server on `database_url` (loopback, a free port), waited for; returns its API URL."""
    port = servers.free_low_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
    }
    prefect = str(Path(sys.executable).with_name("prefect"))
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = _spawn(folder, "prefect-server", command, env)
    api = f"http://127.0.0.1:{port}/api"
    wait_until_ready(process, f"{api}/health", folder / "prefect-server.log", PREFECT_START_TIMEOUT_S, "prefect")
    return api


def start_worker(folder: Path, settings: dict[str, str]) -> None:
    """A worker of the process work pool (created if missing), running flows with the stack's settings.

    The caller's own MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI are not passed on (unless `settings` names them): they
    would win over the stack's database, and the worker's runs would register in another store than the team's."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env = {**inherited, **settings, "PREFECT_HOME": str(folder / "prefect")}
    prefect = str(Path(sys.executable).with_name("prefect"))
    _spawn(folder, "worker", [prefect, "worker", "start", "--pool", WORK_POOL, "--type", "process"], env)


def start_dask(folder: Path) -> str:
    """A Dask scheduler and DASK_WORKERS one-thread workers on loopback, with pid files, waited for; returns the
    scheduler address."""
    port = servers.free_low_port()
    commands = servers.dask_commands(port, DASK_WORKERS, folder / "dask")
    names = ["dask-scheduler", *(f"dask-worker-{index}" for index in range(1, DASK_WORKERS + 1))]
    env = {**os.environ, **servers.DASK_WORKER_ENV}
    processes = [_spawn(folder, name, command, env) for name, command in zip(names, commands, strict=True)]
    cluster = servers.DaskCluster(processes[0], tuple(processes[1:]), port)
    servers.wait_for_dask(cluster, folder, DASK_START_TIMEOUT_S)
    return cluster.address


def _ensure_bucket(client) -> None:
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)


def team_up(home: Path) -> TeamStack:
    """Start PostgreSQL, SeaweedFS (with a bucket), a Dask scheduler + workers, a Prefect server on PostgreSQL and a
    worker under `home/team`; write `team.env`. Raises ServerError when a stack is already running there or a
    server fails to start."""
    folder = home / TEAM_DIR
    if any(folder.glob("*.pid")) or (folder / "postgres.port").exists():  # replicas too: they would miss team.env
        raise servers.ServerError(f"a team stack runs in {folder} already: `retrainer team down` first")
    folder.mkdir(parents=True, exist_ok=True)
    postgres = servers.start_postgres(folder / "postgres")
    (folder / "postgres.port").write_text(str(postgres.port))
    keys = (secrets.token_hex(10), secrets.token_hex(20))  # a local stack's own keys, handed out only in team.env
    store = servers.start_seaweedfs(folder / "s3", *keys)
    _pid_file(folder, "seaweedfs").write_text(str(store.process.pid))
    _ensure_bucket(servers.s3_client(store.endpoint, *keys))
    settings = {
        "RETRAINER_DATABASE_URL": servers.create_database(postgres.url(), "retrainer"),
        "RETRAINER_ARTIFACT_ROOT": f"s3://{BUCKET}/mlflow",
        "RETRAINER_DVC_REMOTE": f"s3://{BUCKET}/dvc",
        "RETRAINER_S3_ENDPOINT_URL": store.endpoint,
        "MLFLOW_S3_ENDPOINT_URL": store.endpoint,  # for `mlflow ui` and other MLflow clients started by hand
        # The worker's canaries call the service's admin routes, and services started from team.env take the same.
        "RETRAINER_ADMIN_TOKEN": os.environ.get("RETRAINER_ADMIN_TOKEN") or secrets.token_urlsafe(24),
        "AWS_ACCESS_KEY_ID": keys[0],
        "AWS_SECRET_ACCESS_KEY": keys[1],
        "AWS_DEFAULT_REGION": "us-east-1",
        compute.DASK_SCHEDULER_ENV: start_dask(folder),
        "PREFECT_API_URL": start_prefect(folder, prefect_database(postgres)),
    }
    start_worker(folder, settings)
    stack = TeamStack(folder, settings)
    stack.env_file.write_text("".join(f"export {k}={v}\n" for k, v in settings.items()))
    stack.env_file.chmod(0o600)
    return stack


@dataclass(frozen=True)
class ServingStack:
    """Service replicas behind the proxy: where clients go (`url`) and each replica's own URL."""

    url: str
    replicas: list[str]


def replica_bentoml_home(own: Path, shared: Path) -> Path:
    """A BentoML home of one replica's own (`own`) whose model and bento stores are those of `shared` (symlinks).

    BentoML keeps its Prometheus multiprocess files in its home and empties that folder when a server starts: replicas
    sharing one home would wipe each other's counters, and each /metrics would report the same merged ones.
    """
    own.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):
        (shared / store).mkdir(parents=True, exist_ok=True)
        if not (own / store).is_symlink():
            (own / store).symlink_to(shared / store, target_is_directory=True)
    return own


def serve_replicas(home: Path, root: Path, port: int, count: int = 2) -> ServingStack:
    """Start `count` replicas of `retrainer serve` for the project at `root` on free loopback ports (pid files
    `replica-N.pid` under `home/team`), wait until each is ready (it needs a champion), then HAProxy on 127.0.0.1:
    `port` in front of them (`haproxy.pid`). The replicas share the home: rollout state, prediction log, journal.

    Raises ServerError when replicas run there already, the port is taken, or a replica or the proxy does not start.
    """
    from retrainer.serving.package import bentoml_home

    folder = home / TEAM_DIR
    if any(folder.glob("replica-*.pid")) or (folder / "haproxy.pid").exists():
        raise servers.ServerError(f"replicas run from {folder} already: `retrainer team down` first")
    if port_in_use(port):
        holders = ", ".join(port_holders(port)) or "another process"
        raise servers.ServerError(f"the proxy's port 127.0.0.1:{port} is in use by {holders}: choose --port")
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for index in range(1, count + 1):
        replica_port, name = free_port(), f"replica-{index}"
        command = [sys.executable, "-m", "retrainer.cli", "serve", "--port", str(replica_port)]
        env = {**os.environ, "RETRAINER_ROOT": str(root), "BENTOML_DO_NOT_TRACK": "true"}
        env["BENTOML_HOME"] = str(replica_bentoml_home(folder / f"{name}-bentoml", bentoml_home(root)))
        process = _spawn(folder, name, command, env)
        urls.append(f"http://127.0.0.1:{replica_port}")
        wait_until_ready(process, f"{urls[-1]}/readyz", folder / f"{name}.log", REPLICA_START_TIMEOUT_S, name)
    started = proxy.start_proxy(folder / "proxy", port, urls)
    return ServingStack(started.url, urls)


def stop_replicas(folder: Path) -> list[str]:
    """Stop the proxy and the replicas `serve_replicas` started from `folder`; returns the names of those that were
    running (a stale pid file is removed, and the process now holding its pid left alone)."""
    stopped = ["haproxy"] if stop_pid_file(folder / "proxy" / "haproxy.pid", timeout_s=10) else []
    for pid_file in sorted(folder.glob("replica-*.pid")):
        if stop_pid_file(pid_file, signal.SIGTERM, group=True):
            stopped.append(pid_file.stem)
    return stopped


def team_down(home: Path) -> list[str]:
    """Stop what `team_up` started under `home/team` (worker with SIGINT: it ignores SIGTERM once its server is
    gone); returns the names of those that were running. Data stays in the folder. Raises ServerError when
    PostgreSQL runs and refuses to stop."""
    folder = home / TEAM_DIR
    stopped = stop_replicas(folder)
    dask = [f"dask-worker-{index}" for index in range(1, DASK_WORKERS + 1)] + ["dask-scheduler"]
    order = [("worker", signal.SIGINT), *((name, signal.SIGTERM) for name in dask)]
    for name, sig in [*order, ("prefect-server", signal.SIGTERM), ("seaweedfs", signal.SIGTERM)]:
        if stop_pid_file(_pid_file(folder, name), sig, group=True):
            stopped.append(name)
    port_file = folder / "postgres.port"
    if port_file.is_file():
        if _stop_postgres(folder / "postgres" / "data", int(port_file.read_text())):
            stopped.append("postgresql")
        port_file.unlink()
    return stopped


def _stop_postgres(data_dir: Path, port: int) -> bool:
    """Stop the stack's PostgreSQL; False when it was not running (killed, or its folder gone): `pg_ctl stop` then
    fails with no server to signal, which must not keep `team down` (and so `team up`) failing for ever."""
    try:
        servers.PostgresServer(data_dir, port).stop()
    except servers.ServerError:
        if _postmaster_alive(data_dir):
            raise
        return False
    return True


def _postmaster_alive(data_dir: Path) -> bool:
    """Whether the process `postmaster.pid` names (its first line) is alive."""
    import psutil

    pid_file = data_dir / "postmaster.pid"
    try:
        return psutil.pid_exists(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return False
