"""The journal written ahead of each answer: segments released once logged, replayed only when their process is gone."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from retrainer.serving.prediction_log import (
    Journal,
    PredictionLog,
    RequestLog,
    features_digest,
    journal_line,
    new_request_key,
    replay_journal,
)


def _request(n: int) -> RequestLog:
    return RequestLog(
        key=new_request_key(),
        time="2026-01-01T00:00:00.000+00:00",
        latency_ms=2.0,
        versions={"champion": "1"},
        arms=["champion"] * n,
        probabilities=[0.25] * n,
        labels=[0] * n,
        records=[{"a": i, "b": f"x{i}"} for i in range(n)],
    )


def _segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def test_closed_segments_are_deleted_once_every_request_in_them_is_settled(tmp_path: Path):
    journal = Journal(tmp_path, segment_bytes=1)  # every line fills a segment: the next one opens a new segment
    for ticket in (1, 2, 3):
        journal.append(ticket, journal_line(_request(2)))
    assert len(_segments(tmp_path)) == 3
    journal.release(oldest_owed=2)  # ticket 1 is settled, 2 and 3 are not
    assert len(_segments(tmp_path)) == 2
    journal.release(oldest_owed=None)  # all settled: only the open segment stays
    assert len(_segments(tmp_path)) == 1
    journal.close(settled=True)
    assert _segments(tmp_path) == []


def test_a_pinned_journal_is_kept_for_the_next_start(tmp_path: Path):
    journal = Journal(tmp_path, segment_bytes=1)
    journal.append(1, journal_line(_request(1)))
    journal.append(2, journal_line(_request(1)))
    journal.pinned = True  # a request neither the log nor the dead-letter file could take
    journal.release(oldest_owed=None)
    journal.close(settled=True)
    assert len(_segments(tmp_path)) == 2


def test_replay_leaves_a_live_segment_alone_and_writes_a_dead_one_into_the_log(tmp_path: Path):
    folder, log = tmp_path / "journal", PredictionLog(tmp_path / "predictions.db", ["a"], ["b"])
    request = _request(3)
    journal = Journal(folder)
    journal.append(1, journal_line(request))
    live = replay_journal(log, folder, tmp_path / "failed.jsonl")
    assert (live.written, live.kept) == (0, 0) and len(_segments(folder)) == 1, "its process holds it"

    journal.close(settled=False)  # the process is gone (its lock with it) before the log had the request
    rebuilt = {"a": [0.0, 1.0, 2.0], "b": ["x0", "x1", "x2"]}
    done = replay_journal(log, folder, tmp_path / "failed.jsonl", features=lambda records: rebuilt)
    assert (done.written, done.predictions, done.kept) == (1, 3, 0)
    assert _segments(folder) == []
    logged = log.get(request.ids[2])
    assert (logged.probability, logged.features_digest) == (0.25, features_digest({"a": 2, "b": "x2"}))
    with sqlite3.connect(tmp_path / "predictions.db") as db:
        (stored,) = db.execute("SELECT features FROM requests WHERE key = ?", (request.key,)).fetchone()
    assert json.loads(stored) == rebuilt
    assert replay_journal(log, folder, tmp_path / "failed.jsonl").written == 0, "nothing left"
    log.close()
