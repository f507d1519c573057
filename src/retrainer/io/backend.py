"""Where shared state lives: embedded (SQLite files and file locks under `.retrainer/`) or a team's PostgreSQL.

One setting chooses: `RETRAINER_DATABASE_URL` (e.g. `postgresql://user@db-host:5432/retrainer`). Unset, nothing
changes from the embedded default. Set, the MLflow store (tracking + registry) lives in that database unless
MLFLOW_TRACKING_URI says otherwise, and the registry's compare-and-set runs under a PostgreSQL advisory lock, which
every host that reaches the database shares (a file lock only serialises processes of one host).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DATABASE_ENV = "RETRAINER_DATABASE_URL"
REGISTRY_LOCK_TIMEOUT_S = 120


class DatabaseUnreachable(RuntimeError):
    """The configured database did not answer; the message names its host, port and database, never a password."""


class BackendConfigError(ValueError):
    """The database setting names a backend this adapter does not support."""


def database_url() -> str | None:
    """$RETRAINER_DATABASE_URL (a `postgresql://` or `postgresql+driver://` URL), or None for the embedded default.

    Raises BackendConfigError for another scheme: the embedded default needs no setting.
    """
    url = os.environ.get(DATABASE_ENV) or None
    if url is not None and not url.startswith("postgresql"):
        raise BackendConfigError(f"{DATABASE_ENV} must be a postgresql:// URL (unset it for the embedded SQLite)")
    return url


def redact_uri(uri: str) -> str:
    """`uri` with any password replaced by `***` (`postgresql://alice:***@db-host/retrainer`), for what is printed or
    written to a file (a registration record that `dvc push` sends to the team's bucket); other URIs unchanged."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def describe_url(url: str) -> str:
    """`postgresql://db-host:5432/retrainer` from a database URL, without user or password."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    return f"{parsed.get_backend_name()}://{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


@functools.cache
def engine_for(url: str):
    """One SQLAlchemy engine per database URL for this process (pre-pinged, so a restarted server is reconnected).

    Raises DatabaseUnreachable when the driver is not installed (psycopg2: the `team` extra).
    """
    import sqlalchemy as sa

    try:
        return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
    except ModuleNotFoundError as exc:
        raise DatabaseUnreachable(
            f"{DATABASE_ENV} names {describe_url(url)} but its driver is missing ({exc.name}): "
            "install the team extra (pip install -e '.[team]')"
        ) from exc


@contextmanager
def connect_database(url: str) -> Iterator[object]:
    """A SQLAlchemy connection in a transaction on `url`, committed at the end of the block.

    Raises DatabaseUnreachable naming host, port and database when the server cannot be reached.
    """
    import sqlalchemy as sa

    try:
        connection = engine_for(url).connect()
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnreachable(f"database {describe_url(url)} ({DATABASE_ENV}) unreachable: {reason}") from exc
    with connection, connection.begin():
        yield connection


def check_database(url: str) -> None:
    """Open and close one connection to `url`; raises DatabaseUnreachable naming host, port and database."""
    with connect_database(url):
        pass


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name` (the same on every host and Python run)."""
    digest = hashlib.blake2b(f"retrainer:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def advisory_lock(url: str, name: str, timeout_s: float = REGISTRY_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold PostgreSQL's transaction-level advisory lock for `name` during the block.

    The server releases it when the transaction ends or the holder's connection dies (kill -9 included). Raises
    sqlalchemy's OperationalError (lock_timeout) when another holder keeps it longer than `timeout_s` seconds.
    """
    import sqlalchemy as sa

    with connect_database(url) as connection:
        connection.execute(sa.text(f"SET LOCAL lock_timeout = '{int(timeout_s * 1000)}ms'"))
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key(name)})
        yield


@contextmanager
def registry_lock(lock_path: Path, model_name: str, timeout_s: float = REGISTRY_LOCK_TIMEOUT_S) -> Iterator[None]:
    """The lock around a compare-and-set move of `model_name`'s aliases: the advisory lock of the configured
    database (shared by every host), else the workspace's file lock `lock_path` (one host)."""
    url = database_url()
    if url is not None:
        with advisory_lock(url, f"registry:{model_name}", timeout_s):
            yield
        return
    from filelock import FileLock

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path), timeout=timeout_s):
        yield


# The object store (S3 or an S3-compatible server). Keys come only from the standard AWS environment variables.
ARTIFACT_ROOT_ENV = "RETRAINER_ARTIFACT_ROOT"  # e.g. s3://team-bucket/mlflow: artifact root of new experiments
DVC_REMOTE_ENV = "RETRAINER_DVC_REMOTE"  # e.g. s3://team-bucket/dvc: default DVC remote of workspaces we create
S3_ENDPOINT_ENV = "RETRAINER_S3_ENDPOINT_URL"  # e.g. http://store-host:8333 for a non-AWS S3 server
DVC_REMOTE_NAME = "team"


def artifact_root() -> str | None:
    """$RETRAINER_ARTIFACT_ROOT, or None for the project-local artifact folder."""
    return os.environ.get(ARTIFACT_ROOT_ENV) or None


def s3_endpoint() -> str | None:
    """$RETRAINER_S3_ENDPOINT_URL, else MLflow's own MLFLOW_S3_ENDPOINT_URL, else None (AWS itself)."""
    return os.environ.get(S3_ENDPOINT_ENV) or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def export_s3_endpoint() -> None:
    """Give the object store's endpoint to MLflow (MLFLOW_S3_ENDPOINT_URL) unless it has one already."""
    endpoint = s3_endpoint()
    if endpoint:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)


def dvc_remote() -> str | None:
    """$RETRAINER_DVC_REMOTE, or None for the workspace-local DVC remote folder."""
    return os.environ.get(DVC_REMOTE_ENV) or None


def dvc_remote_commands(url: str) -> list[list[str]]:
    """The `dvc` argument lists that make `url` the default remote (with the S3 endpoint, if any). No keys: DVC
    reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment."""
    commands = [["remote", "add", "--force", "--default", DVC_REMOTE_NAME, url]]
    endpoint = s3_endpoint()
    if endpoint and url.startswith("s3://"):
        commands.append(["remote", "modify", DVC_REMOTE_NAME, "endpointurl", endpoint])
    return commands


def _documents_table():
    """The `retrainer_documents` table: small JSON state documents by name (rollout state, trigger state)."""
    import sqlalchemy as sa

    metadata = sa.MetaData()
    return sa.Table(
        "retrainer_documents",
        metadata,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )


@functools.cache
def documents(url: str):
    """The documents table on `url`, created there if missing (once per process)."""
    table = _documents_table()
    with connect_database(url) as connection:
        table.metadata.create_all(connection, checkfirst=True)
    return table


def read_document(url: str, name: str) -> dict | None:
    """The JSON document `name` in the database at `url`, or None when none was written yet."""
    import sqlalchemy as sa

    table = documents(url)
    with connect_database(url) as connection:
        row = connection.execute(sa.select(table.c.payload).where(table.c.name == name)).first()
    return None if row is None else row[0]


def write_document(url: str, name: str, payload: dict) -> None:
    """Insert or replace the JSON document `name` in one statement (atomic: readers see the old or the new one)."""
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import insert

    table = documents(url)
    upsert = insert(table).values(name=name, payload=payload)
    upsert = upsert.on_conflict_do_update(
        index_elements=[table.c.name], set_={"payload": upsert.excluded.payload, "updated_at": sa.func.now()}
    )
    with connect_database(url) as connection:
        connection.execute(upsert)


def read_state(path: Path) -> dict | None:
    """A small state document: with RETRAINER_DATABASE_URL the database's document named `path.name`, else the JSON
    file `path`; None when none was saved yet. Raises ValueError when the file is not a JSON object."""
    import json

    url = database_url()
    if url is not None:
        return read_document(url, path.name)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return payload


def write_state(path: Path, payload: dict) -> None:
    """Save a state document where `read_state` reads it: one upsert, or an atomic, fsynced file replace."""
    from retrainer.io.tables import write_json

    url = database_url()
    if url is not None:
        write_document(url, path.name, payload)
        return
    write_json(payload, path)


def read_document_stamp(url: str, name: str) -> object | None:
    """When the document `name` was last written (the row's `updated_at`), or None when none was written yet."""
    import sqlalchemy as sa

    table = documents(url)
    with connect_database(url) as connection:
        row = connection.execute(sa.select(table.c.updated_at).where(table.c.name == name)).first()
    return None if row is None else row[0]


def state_stamp(path: Path) -> object | None:
    """A cheap token that changes whenever the state document of `path` is written: the database row's `updated_at`
    (one indexed read), else the file's (inode, mtime in ns, size) from one stat(2), as `write_state` replaces the
    file by a rename. None when none was saved yet. Compare tokens for equality only."""
    url = database_url()
    if url is not None:
        return read_document_stamp(url, path.name)
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return (found.st_ino, found.st_mtime_ns, found.st_size)
