"""The rollout state file and the prediction log adapters."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from retrainer.serving.prediction_log import LoggedPrediction, PredictionLog, features_digest, prediction_ids
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


def _row(pid: str, arm: str = "champion") -> LoggedPrediction:
    return LoggedPrediction(pid, "2026-01-01T00:00:00", arm, "1", features_digest({"a": 1}), 0.7, 1, 3.5)


def test_prediction_log_records_predictions_and_feedback(tmp_path: Path):
    log = PredictionLog(tmp_path / "predictions.db")
    assert log.record([_row("p1"), _row("p2", "challenger"), _row("p3", "challenger")]) == 3
    assert log.get("p2") == _row("p2", "challenger")
    assert log.count_by_arm() == {"champion": 1, "challenger": 2}
    assert log.record_feedback("p1", 0, "2026-01-02T00:00:00") is True
    assert log.record_feedback("p1", 1, "2026-01-03T00:00:00") is True
    assert log.feedback_label("p1") == 1
    assert log.record_feedback("missing", 1, "2026-01-02T00:00:00") is False
    assert log.feedback_label("missing") is None
    log.close()


def test_a_duplicate_prediction_id_writes_nothing_from_that_batch(tmp_path: Path):
    log = PredictionLog(tmp_path / "predictions.db")
    log.record([_row("p1")])
    with pytest.raises(Exception, match="UNIQUE"):
        log.record([_row("p9"), _row("p1")])
    assert log.get("p9") is None
    log.close()


def test_features_digest_ignores_key_order_and_sees_values():
    assert features_digest({"a": 1, "b": "x"}) == features_digest({"b": "x", "a": 1})
    assert features_digest({"a": 1}) != features_digest({"a": 2})
    assert len(features_digest({"a": 1})) == 64


def test_features_digest_is_the_sha256_of_the_records_canonical_json():
    record = {"time_hour": "2013-02-01T10:00:00Z", "distance": 529.0, "tailnum": None, "carrier": "US", "flight": 1}
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    assert features_digest(record) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_prediction_ids_are_distinct_time_ordered_uuids():
    ids = prediction_ids(5_000)
    parsed = [uuid.UUID(i) for i in ids]
    assert len(set(ids)) == 5_000
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i for u, i in zip(parsed, ids, strict=True))
    later = uuid.UUID(prediction_ids(1)[0])
    assert later.int >> 80 >= max(u.int >> 80 for u in parsed), "the leading 48 bits are the time in milliseconds"
    assert abs((later.int >> 80) / 1000 - time.time()) < 60
    assert prediction_ids(0) == []
