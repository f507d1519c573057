"""The batch record on a real PostgreSQL: the SQLite record's contract (tests/io/test_batch_record.py), claims that
hold across processes and hosts, and the setting that chooses it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from retrainer.io.backend import DATABASE_ENV
from retrainer.io.batch_record_pg import PostgresBatchRecord, open_batch_record
from retrainer.io.batches import CLAIMED, STALE_CLAIM, BatchRecord
from retrainer.outcomes import CycleStatus

pytestmark = pytest.mark.team

CLAIM = """
import sys, time
from retrainer.io.batch_record_pg import PostgresBatchRecord
record = PostgresBatchRecord(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
print(record.claim("b1", sys.argv[2]), flush=True)
time.sleep(float(sys.argv[3]))
"""


@pytest.fixture
def record(fresh_database) -> PostgresBatchRecord:
    return PostgresBatchRecord(fresh_database)


def _update(record: PostgresBatchRecord, identifier: str, **values) -> None:
    from retrainer.io.backend import connect_database

    table = record.table
    with connect_database(record.url) as connection:
        assert connection.execute(table.update().where(table.c.batch_id == identifier).values(**values)).rowcount == 1


def test_claims_finishes_retries_and_force_follow_the_sqlite_contract(record):
    assert record.claim("b1", "a.csv") is True
    assert record.claim("b1", "a.csv") is False, "a live claim blocks"
    assert record.claim("b1", "a.csv", force=True) is False, "force does not steal a live claim"
    assert record.owner("b1") == os.getpid()
    record.finish("b1", CycleStatus.PROMOTED, {"challenger_version": "3"})
    stored = record.get("b1")
    assert stored["status"] == "promoted" and stored["result"] == {"challenger_version": "3"}
    assert record.owner("b1") is None
    assert record.claim("b1", "a.csv") is False, "a processed batch is not taken again"
    assert record.claim("b1", "b.csv", force=True) is True
    assert record.get("b1")["source"] == "b.csv" and record.get("b1")["result"] is None
    record.finish("b1", CycleStatus.FAILED, {"reasons": ["boom"]})
    assert record.claim("b1", "c.csv") is True, "a failed batch is retried"
    assert record.get("missing") is None


def test_batches_that_arrive_together_are_concurrent_and_a_retry_keeps_its_first_arrival(record):
    assert record.claim("oct", "oct.csv") and record.claim("nov", "nov.csv")
    assert record.concurrent_with("nov") == ["oct"] and record.concurrent_with("oct") == ["nov"]
    record.finish("oct", CycleStatus.FAILED, {"reasons": ["workspace busy"]})
    record.finish("nov", CycleStatus.PROMOTED, {})
    assert record.claim("dec", "dec.csv")
    assert record.concurrent_with("dec") == []
    assert record.claim("oct", "oct.csv")
    assert record.concurrent_with("oct") == ["dec", "nov"]
    assert record.concurrent_with("never-claimed") == []
    assert [r["batch_id"] for r in record.recent(limit=2)] == ["oct", "dec"]


def test_processes_racing_for_one_batch_claim_it_exactly_once(record):
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM, record.url, f"racer-{i}.csv", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    won = [racer.stdout.readline().strip() for racer in racers]
    for racer in racers:
        racer.wait(timeout=120)
    assert sorted(won) == ["False", "False", "False", "True"], won
    winner = won.index("True")
    assert record.get("b1")["source"] == f"racer-{winner}.csv"


def test_a_claim_whose_owner_on_this_host_was_killed_is_interrupted_and_taken_over(record):
    child = subprocess.Popen(
        [sys.executable, "-c", CLAIM, record.url, "a.csv", "600"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "True"
        assert record.claim("b1", "b.csv") is False and record.owner("b1") == child.pid
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    stored = record.get("b1")
    assert stored["status"] == CycleStatus.INTERRUPTED and f"pid {child.pid}" in stored["result"]["reasons"][0]
    assert record.claim("b1", "b.csv") is True


def test_another_hosts_claim_blocks_until_it_is_stale(record):
    """A pid of another host means nothing here: its claim is live until STALE_CLAIM, then taken over."""
    assert record.claim("b1", "a.csv")
    _update(record, "b1", owner_host="another-host", owner_pid=999_999_999)
    assert record.claim("b1", "b.csv") is False
    stored = record.get("b1")
    assert stored["status"] == CLAIMED and stored["owner_host"] == "another-host"
    old = (datetime.now(UTC) - STALE_CLAIM - timedelta(minutes=5)).isoformat()
    _update(record, "b1", claimed_at=old)
    assert record.claim("b1", "b.csv") is True
    assert record.get("b1")["owner_pid"] == os.getpid()


def test_the_setting_chooses_the_database_record_and_no_sqlite_file_is_made(fresh_database, tmp_path, monkeypatch):
    assert isinstance(open_batch_record(tmp_path / "batches.db"), BatchRecord)
    monkeypatch.setenv(DATABASE_ENV, fresh_database)
    chosen = open_batch_record(tmp_path / "home" / "batches.db")
    assert isinstance(chosen, PostgresBatchRecord) and chosen.claim("b9", "x.csv")
    assert not (tmp_path / "home").exists()
