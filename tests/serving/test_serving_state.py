"""The rollout state file and the prediction log adapters."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from retrainer.io.project import DEAD_LETTER_FILE, LOG_FILE
from retrainer.serving.prediction_log import (
    FeedbackOutcome,
    LoggedPrediction,
    LogLayoutError,
    PredictionLog,
    RequestLog,
    append_dead_letter,
    features_digest,
    kept_requests,
    new_request_key,
    prediction_ids,
)
from retrainer.serving.routing import RolloutState
from retrainer.serving.state import load_state, save_state, state_path


def test_state_survives_a_save_and_load(tmp_path: Path):
    path = state_path(tmp_path)
    assert load_state(path) is None
    state = RolloutState("1", "2", 0.4, "2026-01-01T00:00:00+00:00")
    save_state(state, path)
    assert load_state(path) == state
    save_state(state.with_weight(0.1), path)
    assert load_state(path).challenger_weight == 0.1
    assert [p.name for p in tmp_path.iterdir()] == ["rollout.json"], "no temporary file is left behind"


def test_a_failed_write_keeps_the_previous_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = state_path(tmp_path)
    save_state(RolloutState("1", "2", 0.4), path)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    # a full disk cannot be caused here: the fault is injected where the new bytes are flushed to disk
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_state(RolloutState("1", "2", 0.9), path)
    monkeypatch.undo()
    assert load_state(path).challenger_weight == 0.4
    assert [p.name for p in tmp_path.iterdir()] == ["rollout.json"]


def test_a_corrupt_state_file_is_an_error_naming_the_file(tmp_path: Path):
    path = state_path(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"rollout\.json"):
        load_state(path)


def _request(arms: list[str], key: str | None = None) -> RequestLog:
    n = len(arms)
    return RequestLog(
        key=key or new_request_key(),
        time="2026-01-01T00:00:00.000+00:00",
        latency_ms=3.5,
        versions={"champion": "1", "challenger": "2"},
        arms=arms,
        probabilities=[0.1 * (i + 1) for i in range(n)],
        labels=[i % 2 for i in range(n)],
        records=[{"a": i} for i in range(n)],
    )


def test_prediction_log_records_predictions_and_feedback(tmp_path: Path):
    log = PredictionLog(tmp_path / "predictions.db")
    request = _request(["champion", "challenger", "challenger"])
    assert log.record(request) == 3
    p1, p2, p3 = request.ids
    assert log.get(p2) == LoggedPrediction(p2, request.time, "challenger", "2", features_digest({"a": 1}), 0.2, 1, 3.5)
    assert log.get(p3).probability == pytest.approx(0.3) and log.get(p1).model_version == "1"
    assert log.record_feedback(p1, 0, "2026-01-02T00:00:00") is FeedbackOutcome.RECORDED
    assert log.record_feedback(p1, 0, "2026-01-02T00:00:05") is FeedbackOutcome.REPEATED  # a client's retry
    assert log.record_feedback(p1, 1, "2026-01-03T00:00:00") is FeedbackOutcome.CONFLICT
    assert log.feedback_label(p1) == 0, "the first label stands"
    beyond = request.key + "000003"  # the request's key, but a position it does not have
    for unknown in ("missing", beyond, new_request_key() + "000000"):
        assert log.record_feedback(unknown, 1, "2026-01-02T00:00:00") is FeedbackOutcome.UNKNOWN
        assert log.feedback_label(unknown) is None and log.get(unknown) is None
    log.close()


def test_the_predictions_view_lists_one_row_per_prediction_with_its_feedback(tmp_path: Path):
    log = PredictionLog(tmp_path / "predictions.db")
    request = _request(["champion", "challenger"])
    log.record(request)
    log.record_feedback(request.ids[1], 1, "2026-01-02T00:00:00")
    log.close()
    with sqlite3.connect(tmp_path / "predictions.db") as db:
        rows = db.execute(
            "SELECT id, arm, model_version, probability, label, feedback_label FROM predictions"
        ).fetchall()
    assert rows == [(request.ids[0], "champion", "1", 0.1, 0, None), (request.ids[1], "challenger", "2", 0.2, 1, 1)]


def test_a_duplicate_request_key_writes_nothing(tmp_path: Path):
    log = PredictionLog(tmp_path / "predictions.db")
    first = _request(["champion"])
    log.record(first)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        log.record(_request(["challenger", "champion"], key=first.key))
    assert log.get(first.key + "000001") is None and log.get(first.ids[0]).arm == "champion"
    log.close()


def test_features_that_do_not_match_the_predictions_are_refused_before_writing(tmp_path: Path):
    log = PredictionLog(tmp_path / "predictions.db", numeric=("temp",))
    request = _request(["champion", "champion"])
    with pytest.raises(ValueError, match=r"features \['temp'\] do not have one value per prediction \(2\)"):
        log.record(RequestLog(**{**request.__dict__, "features": {"temp": [1.0]}}))
    assert log.get(request.ids[0]) is None
    log.close()


def test_a_log_in_the_earlier_layout_is_an_error_naming_the_file(tmp_path: Path):
    path = tmp_path / "predictions.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE predictions (id TEXT PRIMARY KEY)")
    with pytest.raises(LogLayoutError, match=r"predictions\.db holds a prediction log in the earlier"):
        PredictionLog(path)


def test_features_digest_ignores_key_order_and_sees_values():
    assert features_digest({"a": 1, "b": "x"}) == features_digest({"b": "x", "a": 1})
    assert features_digest({"a": 1}) != features_digest({"a": 2})
    assert len(features_digest({"a": 1})) == 64


def test_features_digest_is_the_sha256_of_the_records_canonical_json():
    record = {"time_hour": "2013-02-01T10:00:00Z", "distance": 529.0, "tailnum": None, "carrier": "US", "flight": 1}
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    assert features_digest(record) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_prediction_ids_are_distinct_time_ordered_uuids():
    keys = [new_request_key() for _ in range(2_000)]
    ids = [i for key in keys for i in prediction_ids(key, 3)]
    parsed = [uuid.UUID(i) for i in ids]
    assert len(set(keys)) == 2_000 and len(set(ids)) == 6_000
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i for u, i in zip(parsed, ids, strict=True))
    assert [i[-6:] for i in prediction_ids(keys[0], 3)] == ["000000", "000001", "000002"]
    later = uuid.UUID(prediction_ids(new_request_key(), 1)[0])
    assert later.int >> 80 >= max(u.int >> 80 for u in parsed), "the leading 48 bits are the time in milliseconds"
    assert abs((later.int >> 80) / 1000 - time.time()) < 60
    assert prediction_ids(keys[0], 0) == []


def test_recover_log_writes_readable_lines_and_keeps_unreadable_ones_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from typer.testing import CliRunner

    from retrainer.cli import app

    monkeypatch.setenv("RETRAINER_HOME", str(tmp_path))
    request = _request(["champion", "challenger"])
    dead_letter = tmp_path / DEAD_LETTER_FILE
    append_dead_letter(dead_letter, request.entry([], set()), RuntimeError("disk full"))
    garbage = b'{"error": "cut short", "request": {"key": \n'
    with dead_letter.open("ab") as out:
        out.write(garbage)

    assert kept_requests(dead_letter) == 2
    outcome = CliRunner().invoke(app, ["recover-log"])
    assert outcome.exit_code == 1, outcome.output
    assert "1 requests (2 predictions) written" in outcome.output and "line 2: JSONDecodeError" in outcome.output
    assert dead_letter.read_bytes() == garbage and kept_requests(dead_letter) == 1
    log = PredictionLog(tmp_path / LOG_FILE)
    assert [log.get(i).arm for i in request.ids] == ["champion", "challenger"]
    log.close()


def test_status_points_to_recover_log_only_while_requests_wait_in_the_dead_letter_file():
    from retrainer.app.status import format_status

    report = {"model": "m", "champion": None, "challenger": None, "last_runs": [], "unlogged_requests": 0}
    assert "recover-log" not in format_status(report)
    waiting = format_status({**report, "unlogged_requests": 3})
    assert "prediction log: 3 answered requests are waiting" in waiting and "retrainer recover-log" in waiting
