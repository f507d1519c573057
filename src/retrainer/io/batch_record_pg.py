"""The processed-batch record on the team's PostgreSQL (RETRAINER_DATABASE_URL): the same contract as the SQLite
`io/batches.py:BatchRecord`, shared by every host.

A claim names its owner's host as well as its pid and start time. A claim made on this host is stale as soon as its
owner is gone (as in SQLite); another host's processes cannot be seen from here, so its claim retires only by age
(STALE_CLAIM). A claim is taken under a transaction-level advisory lock on the batch id, so two hosts never both win.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from pathlib import Path

from retrainer.io.backend import advisory_key, connect_database, database_url
from retrainer.io.batches import _COLUMNS, CLAIMED, STALE_CLAIM, BatchRecord, _as_dict
from retrainer.io.processes import owner_alive, this_process
from retrainer.outcomes import CycleStatus

FAILED = str(CycleStatus.FAILED)


def _table():
    import sqlalchemy as sa

    text = sa.Text
    return sa.Table(
        "retrainer_batches",
        sa.MetaData(),
        sa.Column("batch_id", text, primary_key=True),
        *(sa.Column(name, text) for name in ("source", "status", "result", "claimed_at", "finished_at")),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("owner_started", sa.Float),
        sa.Column("first_claimed_at", text),
        sa.Column("owner_host", text),
    )


class PostgresBatchRecord:
    """The batch record as a table of the team database; methods as `BatchRecord`'s (claim, owner, finish, get,
    concurrent_with, recent)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.table = _table()
        with connect_database(url) as connection:
            self.table.metadata.create_all(connection, checkfirst=True)

    def _row(self, connection, identifier: str):
        import sqlalchemy as sa

        columns = [self.table.c[name] for name in (*_COLUMNS, "first_claimed_at", "owner_host")]
        return connection.execute(sa.select(*columns).where(self.table.c.batch_id == identifier)).first()

    def claim(self, identifier: str, source: str, force: bool = False) -> bool:
        """Reserve a batch for this process; False if a live run (on any host) is processing it, or it was already
        processed (unless `force`). A claim whose owner died (or, from another host, grew stale) is taken over."""
        import sqlalchemy as sa
        from sqlalchemy.dialects.postgresql import insert

        now = datetime.now(UTC).isoformat()
        with connect_database(self.url) as connection:
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": advisory_key(f"batch:{identifier}")})
            row = self._row(connection, identifier)
            if row is not None and (_claim_live(row) or (row.status not in (CLAIMED, FAILED) and not force)):
                return False
            values = _claim_values(identifier, source, now, (row and row.first_claimed_at) or now)
            upsert = insert(self.table).values(**values)
            connection.execute(upsert.on_conflict_do_update(index_elements=["batch_id"], set_=values))
        return True

    def owner(self, identifier: str) -> int | None:
        """The pid of the live run holding a batch's claim (on whichever host), or None."""
        record = self.get(identifier)
        return record["owner_pid"] if record and record["status"] == CLAIMED else None

    def finish(self, identifier: str, status: str, result: dict) -> None:
        """Store a batch's outcome (status 'failed' lets a later run retry it)."""
        table = self.table
        values = {
            "status": str(status),
            "result": json.dumps(result, default=str),
            "finished_at": datetime.now(UTC).isoformat(),
        }
        with connect_database(self.url) as connection:
            connection.execute(table.update().where(table.c.batch_id == identifier).values(**values))

    def get(self, identifier: str) -> dict | None:
        """A batch's record, or None; a claim whose owner is gone reads as `interrupted`, with a reason."""
        with connect_database(self.url) as connection:
            row = self._row(connection, identifier)
        return None if row is None else _record(row)

    def concurrent_with(self, identifier: str) -> list[str]:
        """Ids of the other batches whose outcome was not recorded yet when this batch was first claimed (see
        `BatchRecord.concurrent_with`)."""
        import sqlalchemy as sa

        table = self.table
        with connect_database(self.url) as connection:
            row = self._row(connection, identifier)
            if row is None:
                return []
            arrived = row.first_claimed_at or row.claimed_at
            later = sa.or_(table.c.finished_at.is_(None), table.c.finished_at > arrived)
            found = connection.execute(sa.select(table.c.batch_id).where(table.c.batch_id != identifier, later))
            return sorted(r[0] for r in found)

    def recent(self, limit: int = 10) -> list[dict]:
        """The latest processed batches, newest first."""
        import sqlalchemy as sa

        table = self.table
        columns = [table.c[name] for name in (*_COLUMNS, "first_claimed_at", "owner_host")]
        with connect_database(self.url) as connection:
            rows = connection.execute(sa.select(*columns).order_by(table.c.claimed_at.desc()).limit(limit)).all()
        return [_record(row) for row in rows]


def _claim_values(identifier: str, source: str, now: str, first: str) -> dict:
    """The columns of a new claim by this process (its first arrival kept across retries)."""
    pid, started = this_process()
    owner = {"owner_pid": pid, "owner_started": started, "owner_host": socket.gethostname()}
    claim = {"batch_id": identifier, "source": source, "status": CLAIMED, "claimed_at": now, "first_claimed_at": first}
    return {**claim, **owner, "result": None, "finished_at": None}


def _claim_live(row) -> bool:
    """Whether a row is a claim that still blocks others: younger than STALE_CLAIM and, when made on this host, its
    owner still runs (another host's processes cannot be checked from here: only age retires its claim)."""
    if row.status != CLAIMED or datetime.fromisoformat(row.claimed_at) <= datetime.now(UTC) - STALE_CLAIM:
        return False
    return row.owner_host != socket.gethostname() or owner_alive(row.owner_pid, row.owner_started)


def _record(row) -> dict:
    """The row as `BatchRecord.get` returns it, plus `owner_host`; a claim whose owner on this host is gone reads as
    `interrupted`."""
    values = tuple(row)[: len(_COLUMNS)]
    record = _as_dict(values if row.owner_host == socket.gethostname() else (*values[:-2], None, None))
    record.update(owner_pid=row.owner_pid, owner_started=row.owner_started, owner_host=row.owner_host)
    return record


def open_batch_record(path: Path) -> BatchRecord | PostgresBatchRecord:
    """The batch record the configuration names: the team database's table with RETRAINER_DATABASE_URL, else the
    SQLite file `path` (the workspace's `batch_record`)."""
    url = database_url()
    return BatchRecord(path) if url is None else PostgresBatchRecord(url)
