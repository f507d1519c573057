"""Incoming batches: content ids, the inbox, accepted copies, and a processed-batch record that survives restarts."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retrainer.io.batch_files import hash_file
from retrainer.io.processes import owner_alive, this_process
from retrainer.io.tables import BATCH_SUFFIXES, copy_file
from retrainer.outcomes import RETRYABLE, CycleStatus

CLAIMED = "running"
# a claim whose owner still runs after this long is taken to belong to a hung run; a dead owner's claim is stale at once
STALE_CLAIM = timedelta(hours=6)
_COLUMNS = ("batch_id", "source", "status", "result", "claimed_at", "finished_at", "owner_pid", "owner_started")
# columns added after the first layout, with their SQL types: an older record gains them when opened
_ADDED = (("owner_pid", "INTEGER"), ("owner_started", "REAL"), ("first_claimed_at", "TEXT"))


def batch_id(path: Path) -> str:
    """A batch's id: a prefix of the SHA-256 of its bytes (the same id names its quarantine folder)."""
    return hash_file(path)


def inbox_files(inbox: Path) -> list[Path]:
    """Batch files waiting in the inbox, oldest modification first."""
    if not inbox.is_dir():
        return []
    files = [p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() in BATCH_SUFFIXES]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def accept(path: Path, batches_dir: Path, identifier: str) -> Path:
    """Copy a validated batch, byte for byte, into the accepted batches the pipeline reads."""
    batches_dir.mkdir(parents=True, exist_ok=True)
    dest = batches_dir / f"{identifier}{path.suffix.lower()}"
    if not dest.exists():  # so the copy must never exist cut off: it would be kept, and trained on
        copy_file(path, dest)
    return dest


def accepted_files(batches_dir: Path, identifier: str) -> list[Path]:
    """A batch's files among the accepted batches: its copy and its stored validation report."""
    return sorted(batches_dir.glob(f"{identifier}.*")) if batches_dir.is_dir() else []


def is_accepted(batches_dir: Path, identifier: str) -> bool:
    """Whether the pipeline trains on this batch (its copy is among the accepted batches)."""
    return any(p.suffix.lower() in BATCH_SUFFIXES for p in accepted_files(batches_dir, identifier))


def withdraw(batches_dir: Path, identifier: str) -> list[Path]:
    """Take a batch out of training: delete its accepted copy and stored report (the batch's source file, which the
    record names, is untouched). Returns the paths removed. A cycle that fails after accepting its batch calls this,
    so one bad batch can never block later ones."""
    removed = accepted_files(batches_dir, identifier)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def set_aside(batches_dir: Path, identifier: str, archive: Path) -> list[Path]:
    """Move a batch's accepted copy and report, byte for byte, into `archive/<identifier>/` (a superseded batch).
    Returns the new paths; `restore` moves them back."""
    target = archive / identifier
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.move(path, target / path.name)) for path in accepted_files(batches_dir, identifier)]


def restore(archive: Path, identifier: str, batches_dir: Path) -> list[Path]:
    """Move a set-aside batch back among the accepted batches (a replacement whose cycle failed)."""
    source = archive / identifier
    if not source.is_dir():
        return []
    batches_dir.mkdir(parents=True, exist_ok=True)
    moved = [Path(shutil.move(path, batches_dir / path.name)) for path in sorted(source.iterdir())]
    source.rmdir()
    return moved


class BatchRecord:
    """SQLite record of processed batches: claim before work, finish with the outcome; exactly once per batch.

    A claim names its owner (pid and process start time): when that process is gone, whether it finished or was
    killed, the claim is stale at once: `get` reports the batch `interrupted` and the next run takes it again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY, source TEXT, status TEXT,"
                " result TEXT, claimed_at TEXT, finished_at TEXT, owner_pid INTEGER, owner_started REAL,"
                " first_claimed_at TEXT)"
            )
            present = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
            for column, kind in _ADDED:
                if column not in present:  # a record written before claims had owners, or a first claim time
                    db.execute(f"ALTER TABLE batches ADD COLUMN {column} {kind}")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")

    def claim(self, identifier: str, source: str, force: bool = False) -> bool:
        """Reserve a batch for this process; False if a live run is processing it, or it was already processed
        (unless `force`). A claim whose owner died is taken over."""
        now = datetime.now(UTC).isoformat()
        with closing(self._connect()) as db, db:
            row = db.execute(
                "SELECT status, claimed_at, owner_pid, owner_started FROM batches WHERE batch_id = ?", (identifier,)
            ).fetchone()
            if row is not None:
                status, claimed_at, pid, started = row
                live_claim = (
                    status == CLAIMED
                    and owner_alive(pid, started)
                    and datetime.fromisoformat(claimed_at) > datetime.now(UTC) - STALE_CLAIM
                )
                if live_claim or (status not in (CLAIMED, CycleStatus.FAILED) and not force):
                    return False
            first = db.execute("SELECT first_claimed_at FROM batches WHERE batch_id = ?", (identifier,)).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO batches (batch_id, source, status, claimed_at, owner_pid, owner_started,"
                " first_claimed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (identifier, source, CLAIMED, now, *this_process(), (first and first[0]) or now),
            )
        return True

    def owner(self, identifier: str) -> int | None:
        """The pid of the live run holding a batch's claim, or None."""
        record = self.get(identifier)
        return record["owner_pid"] if record and record["status"] == CLAIMED else None

    def finish(self, identifier: str, status: str, result: dict) -> None:
        """Store a batch's outcome (status 'failed' lets a later run retry it)."""
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE batches SET status = ?, result = ?, finished_at = ? WHERE batch_id = ?",
                (status, json.dumps(result, default=str), datetime.now(UTC).isoformat(), identifier),
            )

    def get(self, identifier: str) -> dict | None:
        """A batch's record, or None; a claim whose owner died reads as `interrupted`, with a reason."""
        with closing(self._connect()) as db:
            row = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM batches WHERE batch_id = ?", (identifier,)).fetchone()
        return None if row is None else _as_dict(row)

    def concurrent_with(self, identifier: str) -> list[str]:
        """Ids of the other batches whose outcome was not yet recorded when this batch was first claimed (still
        running then, or claimed after it): batches that arrived together with it, or later. Empty for a batch
        never claimed. A retry keeps the first claim's time, so a batch that lost the workspace lock stays concurrent
        with the batch that won it."""
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT COALESCE(first_claimed_at, claimed_at) FROM batches WHERE batch_id = ?", (identifier,)
            ).fetchone()
            if row is None or row[0] is None:
                return []
            rows = db.execute(
                "SELECT batch_id FROM batches WHERE batch_id != ? AND (finished_at IS NULL OR finished_at > ?)",
                (identifier, row[0]),
            ).fetchall()
        return sorted(r[0] for r in rows)

    def recent(self, limit: int = 10) -> list[dict]:
        """The latest processed batches, newest first."""
        with closing(self._connect()) as db:
            rows = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM batches ORDER BY claimed_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_as_dict(row) for row in rows]


def _as_dict(row: tuple) -> dict:
    record = dict(zip(_COLUMNS, row, strict=True))
    record["result"] = json.loads(record["result"]) if record["result"] else None
    if record["status"] == CLAIMED and not owner_alive(record["owner_pid"], record["owner_started"]):
        reason = f"the run that claimed it (pid {record['owner_pid']}) ended without recording an outcome"
        record["status"] = str(CycleStatus.INTERRUPTED)
        record["result"] = {"status": str(CycleStatus.INTERRUPTED), "batch_id": record["batch_id"], "reasons": [reason]}
    return record


def pending_batches(inbox: Path, record: BatchRecord) -> list[Path]:
    """Inbox files with no outcome recorded yet (or a failed or interrupted one), oldest first: what the next drain
    processes."""
    waiting = []
    for path in inbox_files(inbox):
        existing = record.get(batch_id(path))
        if existing is None or existing["status"] in RETRYABLE:
            waiting.append(path)
    return waiting
