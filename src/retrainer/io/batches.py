"""Incoming batches: content ids, the inbox, accepted copies, and a processed-batch record that survives restarts."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retrainer.io.batch_files import hash_file
from retrainer.io.tables import BATCH_SUFFIXES
from retrainer.outcomes import CycleStatus

CLAIMED = "running"
# a claim older than this belongs to a run that died; the batch may be taken again
STALE_CLAIM = timedelta(hours=6)


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
    if not dest.exists():
        shutil.copyfile(path, dest)
    return dest


class BatchRecord:
    """SQLite record of processed batches: claim before work, finish with the outcome; exactly once per batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY, source TEXT, status TEXT,"
                " result TEXT, claimed_at TEXT, finished_at TEXT)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")

    def claim(self, identifier: str, source: str, force: bool = False) -> bool:
        """Reserve a batch; False if it is being processed, or already processed (unless `force`)."""
        now = datetime.now(UTC).isoformat()
        with closing(self._connect()) as db, db:
            row = db.execute("SELECT status, claimed_at FROM batches WHERE batch_id = ?", (identifier,)).fetchone()
            if row is not None:
                status, claimed_at = row
                live_claim = status == CLAIMED and datetime.fromisoformat(claimed_at) > datetime.now(UTC) - STALE_CLAIM
                if live_claim or (status not in (CLAIMED, CycleStatus.FAILED) and not force):
                    return False
            db.execute(
                "INSERT OR REPLACE INTO batches (batch_id, source, status, claimed_at) VALUES (?, ?, ?, ?)",
                (identifier, source, CLAIMED, now),
            )
        return True

    def finish(self, identifier: str, status: str, result: dict) -> None:
        """Store a batch's outcome (status 'failed' lets a later run retry it)."""
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE batches SET status = ?, result = ?, finished_at = ? WHERE batch_id = ?",
                (status, json.dumps(result, default=str), datetime.now(UTC).isoformat(), identifier),
            )

    def get(self, identifier: str) -> dict | None:
        """A batch's record, or None."""
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT batch_id, source, status, result, claimed_at, finished_at FROM batches WHERE batch_id = ?",
                (identifier,),
            ).fetchone()
        return None if row is None else _as_dict(row)

    def recent(self, limit: int = 10) -> list[dict]:
        """The latest processed batches, newest first."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT batch_id, source, status, result, claimed_at, finished_at FROM batches"
                " ORDER BY claimed_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_as_dict(row) for row in rows]


def _as_dict(row: tuple) -> dict:
    keys = ("batch_id", "source", "status", "result", "claimed_at", "finished_at")
    record = dict(zip(keys, row, strict=True))
    record["result"] = json.loads(record["result"]) if record["result"] else None
    return record


def pending_batches(inbox: Path, record: BatchRecord) -> list[Path]:
    """Inbox files with no outcome recorded yet (or a failed one), oldest first: what the next drain processes."""
    waiting = []
    for path in inbox_files(inbox):
        existing = record.get(batch_id(path))
        if existing is None or existing["status"] == CycleStatus.FAILED:
            waiting.append(path)
    return waiting
