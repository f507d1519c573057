"""The processed-batch record (real SQLite in tmp_path), content ids and the inbox listing."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retrainer.io.batches import (
    CLAIMED,
    STALE_CLAIM,
    BatchRecord,
    accept,
    batch_id,
    inbox_files,
    pending_batches,
)
from retrainer.outcomes import CycleStatus


@pytest.fixture
def record(tmp_path: Path) -> BatchRecord:
    return BatchRecord(tmp_path / "state" / "batches.db")


def _set_claimed_at(record: BatchRecord, identifier: str, when: datetime) -> None:
    with sqlite3.connect(record.path) as db:
        sql = "UPDATE batches SET claimed_at = ? WHERE batch_id = ?"
        updated = db.execute(sql, (when.isoformat(), identifier))
        assert updated.rowcount == 1


def test_a_batch_can_be_claimed_once(record):
    assert record.claim("b1", "/in/b1.csv") is True
    assert record.claim("b1", "/in/b1.csv") is False
    row = record.get("b1")
    assert row["status"] == CLAIMED
    assert row["source"] == "/in/b1.csv"
    assert row["result"] is None and row["finished_at"] is None


def test_claims_are_per_batch(record):
    assert record.claim("b1", "a.csv")
    assert record.claim("b2", "b.csv")
    assert record.get("b3") is None


def test_finish_stores_status_and_result(record):
    record.claim("b1", "a.csv")
    record.finish("b1", "promoted", {"status": "promoted", "challenger_version": "3", "reasons": ["ok"]})
    row = record.get("b1")
    assert row["status"] == "promoted"
    assert row["result"] == {"status": "promoted", "challenger_version": "3", "reasons": ["ok"]}
    assert datetime.fromisoformat(row["finished_at"]) >= datetime.fromisoformat(row["claimed_at"])


def test_a_finished_batch_is_not_claimed_again_without_force(record):
    record.claim("b1", "a.csv")
    record.finish("b1", "rejected", {"status": "rejected"})
    assert record.claim("b1", "a.csv") is False
    assert record.get("b1")["status"] == "rejected"


def test_a_failed_batch_can_be_claimed_again(record):
    record.claim("b1", "a.csv")
    record.finish("b1", "failed", {"status": "failed", "reasons": ["boom"]})
    assert record.claim("b1", "a.csv") is True
    row = record.get("b1")
    assert row["status"] == CLAIMED
    assert row["finished_at"] is None


def test_force_reclaims_a_finished_batch(record):
    record.claim("b1", "a.csv")
    record.finish("b1", "promoted", {"status": "promoted"})
    assert record.claim("b1", "a.csv", force=True) is True
    assert record.get("b1")["status"] == CLAIMED
    assert record.claim("b1", "a.csv") is False, "the forced claim is itself a live claim"


def test_force_does_not_steal_a_live_claim(record):
    record.claim("b1", "a.csv")
    assert record.claim("b1", "a.csv", force=True) is False


def test_a_stale_running_claim_can_be_taken_over(record):
    record.claim("b1", "a.csv")
    _set_claimed_at(record, "b1", datetime.now(UTC) - STALE_CLAIM - timedelta(minutes=5))
    assert record.claim("b1", "b.csv") is True
    row = record.get("b1")
    assert row["source"] == "b.csv"
    assert datetime.now(UTC) - datetime.fromisoformat(row["claimed_at"]) < timedelta(minutes=1)


def test_a_running_claim_younger_than_the_stale_limit_still_blocks(record):
    record.claim("b1", "a.csv")
    _set_claimed_at(record, "b1", datetime.now(UTC) - STALE_CLAIM + timedelta(minutes=5))
    assert record.claim("b1", "b.csv") is False
    assert record.get("b1")["source"] == "a.csv"


CLAIM_AND_WAIT = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from retrainer.io.batches import BatchRecord\n"
    "assert BatchRecord(Path(sys.argv[1])).claim('b1', 'a.csv')\n"
    "print('claimed', flush=True)\n"
    "time.sleep(600)\n"
)


def _claim_in_another_process(path: Path) -> subprocess.Popen:
    """A real second process that claims batch b1 and then works (sleeps) until it is killed."""
    child = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "claimed"
    return child


def test_a_claim_held_by_a_live_process_blocks_and_names_it(record):
    child = _claim_in_another_process(record.path)
    try:
        assert record.claim("b1", "b.csv") is False
        assert record.claim("b1", "b.csv", force=True) is False
        assert record.get("b1")["status"] == CLAIMED and record.owner("b1") == child.pid
    finally:
        child.kill()
        child.wait(timeout=30)


def test_a_claim_whose_owner_was_killed_is_stale_at_once(record):
    """kill -9 of the run that claimed a batch: no 6-hour wait, no KeyError, the next run takes it."""
    child = _claim_in_another_process(record.path)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)

    row = record.get("b1")
    assert row["status"] == CycleStatus.INTERRUPTED
    assert f"pid {child.pid}" in row["result"]["reasons"][0] and row["result"]["status"] == CycleStatus.INTERRUPTED
    assert record.claim("b1", "b.csv") is True, "a dead owner's claim is taken over without waiting"
    assert record.owner("b1") == os.getpid()


def test_an_interrupted_batch_is_waiting_in_the_inbox_again(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    source = inbox / "b.csv"
    source.write_bytes(b"a,b\n1,2\n")
    record = BatchRecord(tmp_path / "batches.db")
    child = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_WAIT.replace("'b1'", repr(batch_id(source))), str(record.path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "claimed"
    assert pending_batches(inbox, record) == []
    child.kill()
    child.wait(timeout=30)
    assert pending_batches(inbox, record) == [source]


def test_a_record_written_before_claims_had_owners_is_upgraded(tmp_path):
    path = tmp_path / "batches.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE batches (batch_id TEXT PRIMARY KEY, source TEXT, status TEXT, result TEXT,"
            " claimed_at TEXT, finished_at TEXT)"
        )
        now = datetime.now(UTC).isoformat()
        db.execute("INSERT INTO batches VALUES ('old', 'a.csv', 'running', NULL, ?, NULL)", (now,))
    record = BatchRecord(path)
    assert record.get("old")["status"] == CLAIMED, "an owner-less claim is judged by its age, as before"
    assert record.claim("old", "a.csv") is False


def test_the_record_survives_reopening(tmp_path):
    path = tmp_path / "batches.db"
    first = BatchRecord(path)
    first.claim("b1", "a.csv")
    first.finish("b1", "promoted", {"status": "promoted", "challenger_version": "2"})
    first.claim("b2", "b.csv")
    del first

    reopened = BatchRecord(path)
    assert reopened.get("b1")["result"] == {"status": "promoted", "challenger_version": "2"}
    assert reopened.get("b2")["status"] == CLAIMED
    assert reopened.claim("b1", "a.csv") is False
    assert reopened.claim("b2", "b.csv") is False


def test_recent_lists_newest_claims_first(record):
    for index, name in enumerate(("old", "mid", "new")):
        record.claim(name, f"{name}.csv")
        _set_claimed_at(record, name, datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=index))
    assert [r["batch_id"] for r in record.recent()] == ["new", "mid", "old"]
    assert [r["batch_id"] for r in record.recent(limit=2)] == ["new", "mid"]


def test_batch_id_depends_on_content_not_name(tmp_path):
    payload = b"year,month,day\n2013,2,1\n2013,2,2\n"
    a, b, c = tmp_path / "a.csv", tmp_path / "other-name.csv", tmp_path / "c.csv"
    a.write_bytes(payload)
    b.write_bytes(payload)
    c.write_bytes(payload.replace(b"2013,2,2", b"2013,2,3"))
    assert batch_id(a) == batch_id(b)
    assert batch_id(a) != batch_id(c)
    full = hashlib.sha256(payload).hexdigest()
    assert len(batch_id(a)) >= 12 and full.startswith(batch_id(a))


def test_batch_id_reads_large_files_in_blocks(tmp_path):
    """A file bigger than one read block still hashes all its bytes: a change past the first MiB counts."""
    big = bytearray(b"x" * (3 << 20))
    first, second = tmp_path / "big1.csv", tmp_path / "big2.csv"
    first.write_bytes(bytes(big))
    big[-1:] = b"y"
    second.write_bytes(bytes(big))
    assert batch_id(first) != batch_id(second)


def test_inbox_files_lists_only_batch_files_oldest_first(tmp_path):
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    names = ["newest.csv", "oldest.parquet", "middle.CSV", "notes.txt", ".gitkeep", "half.csv.part", "readme"]
    for name in names:
        (inbox / name).write_text("x")
    (inbox / "folder.csv").mkdir()
    for offset, name in enumerate(["oldest.parquet", "middle.CSV", "newest.csv"]):
        stamp = 1_700_000_000 + offset * 60
        os.utime(inbox / name, (stamp, stamp))
    assert [p.name for p in inbox_files(inbox)] == ["oldest.parquet", "middle.CSV", "newest.csv"]


def test_inbox_files_of_a_missing_inbox_is_empty(tmp_path):
    assert inbox_files(tmp_path / "nowhere") == []


def test_accept_copies_byte_for_byte_under_the_batch_id(tmp_path):
    source = tmp_path / "Flights.CSV"
    source.write_bytes(b"a,b\n1,2\n")
    dest = accept(source, tmp_path / "batches", batch_id(source))
    assert dest == tmp_path / "batches" / f"{batch_id(source)}.csv"
    assert dest.read_bytes() == source.read_bytes()


def test_batches_that_arrive_together_are_concurrent_and_a_retry_keeps_its_first_arrival(record):
    """October and November arrive together; November is done first. For October's freshness November is concurrent
    (it was not done when October arrived), also when October's first try failed (busy) and it is retried later.
    A batch that arrives after November is done is not concurrent with it."""
    assert record.claim("oct", "oct.csv") and record.claim("nov", "nov.csv")
    assert record.concurrent_with("nov") == ["oct"] and record.concurrent_with("oct") == ["nov"]
    record.finish("oct", CycleStatus.FAILED, {"reasons": ["workspace busy"]})
    record.finish("nov", CycleStatus.PROMOTED, {})
    assert record.claim("dec", "dec.csv")
    assert record.concurrent_with("dec") == [], "October's and November's outcomes were recorded before it arrived"
    assert record.claim("oct", "oct.csv"), "a failed batch is taken again"
    assert record.concurrent_with("oct") == ["dec", "nov"]
    assert record.concurrent_with("never-claimed") == []
